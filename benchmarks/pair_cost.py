#!/usr/bin/env python
"""Serving cost of the user x movie (pair) features: in-process ranking ms per request, with and without them.

Two models are trained on the same samples (1 epoch each: the cost does not depend on the weights), the
default spec without ``userGenreCosine`` / ``userGenreAvgRating`` and with them; one SQLite store is
published from the data; then ``Engine.recommend(user, k=10, candidates=N)`` (the service's ranking call, no
HTTP, warm user cache, one torch thread) is timed for both engines in the same run, requests interleaved so
that a loaded machine slows both alike.

With ``--itemcf`` the two models are the default spec and the default spec plus ``userItemCFScore``
(standardize), trained on samples this script prepares with ``FeatureConfig(itemcf=True)`` (``--samples``
is then not read), and the store is published with the item-CF data. Two timings per request: ``warm``
(every user's partial and item-CF sums already cached, the service's steady state) and ``cold`` (the user
caches cleared before each request: the item-CF sums of the user's history are rebuilt, as on a user's first
request after a publish).

Usage:
    PYTHONPATH=src .venv/bin/python benchmarks/pair_cost.py --data ../shared/data/ml-latest-small \\
        --samples SAMPLES_DIR [--candidates 800] [--repeats 400] [--itemcf]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "src" / "deepcrossing" / "specs" / "movielens.toml"
PAIR = ("userGenreCosine", "userGenreAvgRating")


def spec_without_pair() -> str:
    text = SPEC.read_text()
    for name in PAIR:
        text = re.sub(r'\[\[features\]\]\nname = "' + name + r'"\n(?:[^\n\[]+\n)*\n?', "", text)
    return text


def spec_with(text: str, names: tuple[str, ...]) -> str:
    """``text`` (a spec) with a standardized numeric context feature per name added."""
    head, sep, tail = text.partition("\n[model]")
    blocks = "".join(f'\n[[features]]\nname = "{n}"\nkind = "numeric"\nside = "context"\ntransform = "standardize"\n'
                     for n in names)
    return head.rstrip() + "\n" + blocks + sep + tail


def spec_with_pair() -> str:
    return spec_with(spec_without_pair(), PAIR)


def interleaved_latency(opened: dict, users: list[int], repeats: int, candidates: int, cold: bool = False
                        ) -> dict[str, np.ndarray]:
    """Milliseconds per top-10 ``recommend`` of each engine, the engines called in turn for each request (so
    machine noise hits them alike), users in turn; each user's first (cache-filling) call is dropped. ``cold``
    clears the per-user cache before every call."""
    times: dict[str, list[float]] = {name: [] for name in opened}
    for i in range(repeats + len(users)):
        for name, engine in opened.items():
            if cold and engine.state is not None:
                engine.state.user_parts.clear()
            t0 = time.perf_counter()
            engine.recommend(users[i % len(users)], k=10, candidates=candidates)
            times[name].append(time.perf_counter() - t0)
    return {name: np.array(ts[len(users):]) * 1000 for name, ts in times.items()}


def latency_line(ms: np.ndarray) -> str:
    """``median .. ms, p90 .. ms, p99 .. ms, mean .. ms over N requests`` of :func:`interleaved_latency`'s ms."""
    return (f"median {np.median(ms):.3f} ms, p90 {np.percentile(ms, 90):.3f} ms, p99 {np.percentile(ms, 99):.3f} "
            f"ms, mean {ms.mean():.3f} ms over {len(ms)} requests")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--samples", type=Path, help="samples folder (not read with --itemcf)")
    ap.add_argument("--candidates", type=int, default=800)
    ap.add_argument("--repeats", type=int, default=400)
    ap.add_argument("--itemcf", action="store_true", help="default spec vs default + userItemCFScore")
    args = ap.parse_args()
    if args.samples is None and not args.itemcf:
        ap.error("--samples is required (unless --itemcf)")

    import torch

    from deepcrossing.data import load_dataset
    from deepcrossing.features import FeatureConfig, build_samples
    from deepcrossing.serving.engine import Engine
    from deepcrossing.serving.publish import publish_dataset

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dataset = load_dataset(args.data, workdir=work / "data")
        config, samples = None, args.samples
        variants = (("without pair", spec_without_pair()), ("with pair", spec_with_pair()))
        if args.itemcf:
            config, samples = FeatureConfig(itemcf=True), work / "samples"
            build_samples(dataset, config, samples)
            default = SPEC.read_text()
            variants = (("default", default), ("with itemcf", spec_with(default, ("userItemCFScore",))))
        engines = {}
        for name, text in variants:
            spec = work / f"{name.replace(' ', '_')}.toml"
            spec.write_text(text)
            out = work / name.replace(" ", "_")
            subprocess.run([sys.executable, "-m", "deepcrossing.cli", "train", "--samples", str(samples),
                            "--spec", str(spec), "--out", str(out), "--epochs", "1", "--seed", "0",
                            "--device", "cpu"], check=True, capture_output=True)
            engines[name] = out
        url = f"sqlite:///{work / 'features.db'}"
        publish_dataset(dataset, url, feature_config=config)
        opened = {name: Engine.open(model, url) for name, model in engines.items()}
        first, second = (opened[name].state for name, _ in variants)
        assert first is not None and second is not None and second.scorer.pair_idx is not None
        assert (first.scorer.pair_idx is None) if not args.itemcf else \
            (second.scorer.reads_itemcf and not first.scorer.reads_itemcf)
        meta = opened[variants[1][0]].store.meta()
        users = [int(u) for u in meta.get("example_users", [1])]
        for cold in ((False, True) if args.itemcf else (False,)):
            for name, ms in interleaved_latency(opened, users, args.repeats, args.candidates, cold).items():
                print(f"{name:>13}{' cold' if cold else ''}: {latency_line(ms)} of {args.candidates} candidates")
        for engine in opened.values():
            engine.store.close()


if __name__ == "__main__":
    main()
