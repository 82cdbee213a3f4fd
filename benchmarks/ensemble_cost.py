#!/usr/bin/env python
"""Ensemble of K seeds fused into one model (``train --ensemble K``): validation AUC, training time and serving
cost against a single model.

Trains, through the CLI on the train and valid files only (the test split is neither read nor printed), one
model (``--seed S``) and one fused ensemble (``--ensemble K --seed S``: members S..S+K-1, member 0 equal to the
single model), reports each member's valid AUC, their mean +- std and the fused model's valid AUC, the wall and
CPU seconds of both runs, and the MLP's multiply-adds per candidate after the first layer's split. The fused
model computes its layers after the first as K blocks (``ModelConfig.groups``); its dense block-diagonal form
(``model.ensemble.ungroup``: how fused folders were computed before, K^2 x one member's multiply-adds there) is
written beside it as "fused dense", the same logits. Then one SQLite store is published from the data (with the
item-CF data when the samples were prepared with it) and ``Engine.recommend(user, k=10, candidates=N)`` (the
service's ranking call, no HTTP, warm user cache, one torch thread) is timed for the three engines in the same
run, requests interleaved so that a loaded machine slows them alike: p50 / p90 / p99 ms.

Usage:
    PYTHONPATH=src .venv/bin/python benchmarks/ensemble_cost.py --data ../shared/data/ml-latest-small \\
        --samples SAMPLES_DIR [--k 3] [--spec SPEC] [--candidates 800] [--repeats 400] [--work DIR] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pair_cost import interleaved_latency, latency_line  # the same interleaved timing loop (benchmarks/ on sys.path)


def train(samples: Path, out: Path, seed: int, k: int, reuse: bool, epochs: int | None,
          spec: Path | None) -> dict[str, float]:
    """Train through the CLI (train + valid only); wall and CPU seconds of the run (0 when reused)."""
    if reuse and (out / "metrics.json").exists():
        return {"wall_s": 0.0, "cpu_s": 0.0}
    args = [sys.executable, "-m", "deepcrossing.cli", "train", "--train", str(samples / "train.parquet"),
            "--valid", str(samples / "valid.parquet"), "--out", str(out), "--seed", str(seed), "--device", "cpu",
            "--overwrite"]
    args += ["--ensemble", str(k)] if k > 1 else []
    args += ["--epochs", str(epochs)] if epochs else []
    # without --spec: the default one, + userItemCFScore when the samples have it (training/default_spec.py)
    args += ["--spec", str(spec)] if spec else []
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_s": time.perf_counter() - t0,
            "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)}


def mlp_macs(model_dir: Path) -> int:
    """Multiply-adds per candidate after the split first layer: every later (grouped) Linear of the MLP and the
    scoring (a grouped layer's K blocks of ``o x i``: its weight's size)."""
    import torch

    from deepcrossing.model.layers import GroupedLinear
    from deepcrossing.training.artifact import load

    model = load(model_dir).model
    linears = [m for m in model.mlp.modules() if isinstance(m, (torch.nn.Linear, GroupedLinear))][1:]
    return sum(m.weight.numel() for m in [*linears, model.scoring.linear])


def write_dense(fused_dir: Path, out: Path) -> None:
    """The fused folder's model in its dense block-diagonal form (``ungroup``), as a model folder."""
    from deepcrossing.config import TrainConfig
    from deepcrossing.model.ensemble import ungroup
    from deepcrossing.training.artifact import load, save

    loaded = load(fused_dir)
    save(out, ungroup(loaded.model), loaded.encoder, TrainConfig.from_dict(loaded.manifest["train_config"]),
         {"metrics": loaded.manifest["metrics"]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="the raw dataset folder (for the store)")
    ap.add_argument("--samples", type=Path, required=True, help="samples folder (train/valid read)")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None, help="override the spec's epochs")
    ap.add_argument("--spec", type=Path, default=None, help="spec file for both runs (default: the default spec)")
    ap.add_argument("--candidates", type=int, default=800)
    ap.add_argument("--repeats", type=int, default=400)
    ap.add_argument("--work", type=Path, default=None, help="keep the models here (default: a temporary folder)")
    ap.add_argument("--reuse", action="store_true", help="reuse models already in --work")
    args = ap.parse_args()

    import torch

    from deepcrossing.data import load_dataset
    from deepcrossing.features import FeatureConfig
    from deepcrossing.serving.engine import Engine
    from deepcrossing.serving.publish import publish_dataset

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        folders = {"single": work / "single", f"fused K={args.k}": work / f"ensemble{args.k}"}
        costs = {name: train(args.samples, out, args.seed, 1 if name == "single" else args.k, args.reuse,
                             args.epochs, args.spec) for name, out in folders.items()}
        write_dense(folders[f"fused K={args.k}"], work / f"ensemble{args.k}-dense")
        folders = {"single": folders["single"], "fused dense": work / f"ensemble{args.k}-dense",
                   f"fused K={args.k}": folders[f"fused K={args.k}"]}
        single = json.loads((folders["single"] / "metrics.json").read_text())
        fused = json.loads((folders[f"fused K={args.k}"] / "metrics.json").read_text())
        members = fused["ensemble"]["member_valid_auc"]
        print(f"{args.samples}: valid AUC single (seed {args.seed}) {single['valid']['auc']:.4f}; members "
              f"{', '.join(f'{a:.4f}' for a in members)} (mean {np.mean(members):.4f} +- {np.std(members):.4f}); "
              f"fused K={args.k} {fused['valid']['auc']:.4f} (logloss single {single['valid']['logloss']:.4f}, "
              f"fused {fused['valid']['logloss']:.4f}); max |fused - mean logit| "
              f"{fused['ensemble']['max_abs_logit_diff']:.1e}")
        for name, cost in costs.items():
            metrics = single if name == "single" else fused
            print(f"{name:>11}: train loop {metrics['train_seconds']:.1f} s; run {cost['wall_s']:.1f} s wall, "
                  f"{cost['cpu_s']:.1f} s CPU; MLP after the split {mlp_macs(folders[name]):,} MACs/candidate")
        print(f"{'fused dense':>11}: the same model, block-diagonal layers computed densely: "
              f"{mlp_macs(folders['fused dense']):,} MACs/candidate")

        torch.set_num_threads(1)
        dataset = load_dataset(args.data, workdir=work / "data")
        itemcf = bool(json.loads((args.samples / "manifest.json").read_text()).get("config", {}).get("itemcf"))
        url = f"sqlite:///{work / 'features.db'}"
        if not (args.reuse and (work / "features.db").exists()):
            publish_dataset(dataset, url, feature_config=FeatureConfig(itemcf=True) if itemcf else None)
        opened = {name: Engine.open(folder, url) for name, folder in folders.items()}
        users = [int(u) for u in next(iter(opened.values())).store.meta().get("example_users", [1])]
        for name, ms in interleaved_latency(opened, users, args.repeats, args.candidates).items():
            print(f"{name:>11}: {latency_line(ms)} of {args.candidates} candidates (top-10, warm, 1 thread)")
        for engine in opened.values():
            engine.store.close()


if __name__ == "__main__":
    main()
