#!/usr/bin/env python
"""Ablation: each addition to the default Deep Crossing model, valid and test AUC over seeds.

Every variant is the default spec (``src/deepcrossing/specs/movielens.toml``) without the features listed
below (``default``: the spec before issue 11), plus the additions of its row, trained through the CLI
(``deepcrossing train --seed k``) in a subprocess, then scored with ``deepcrossing.load`` on valid and on
test (test is read once per reported run, after training; nothing is chosen on it).
The row to keep is chosen on the valid mean only.

Variants:

* ``default``           the spec before issue 11 (the shipped one minus the features below)
* ``+recent counts``    movieLast7dRatingCount, movieLast30dRatingCount (item side, log1p + standardize)
* ``+user x movie``     userGenreCosine, userGenreAvgRating (context side; served per candidate by the
                        scorer's pair part: the default since issue 11's serving step)
* ``+bayes avg``        movieBayesAvgRating (item side): the movie mean shrunk toward the global mean
* ``+recent ratings``   userLastRating, userRecent5AvgRating, userRecent20AvgRating (user side): the mean of
                        the user's ratings at their last 1 / 5 / 20 rating times (the default since s10)
* ``+itemCF``           userItemCFScore (context side, not served yet; samples built with itemcf on)
* ``+EMA 0.98/0.99``    weights averaged every step (training.ema), on the best served row above
* ``+SWA 3``            the average of the last 3 epochs' weights, kept when its valid AUC is better

Usage:
    .venv/bin/python benchmarks/ablation.py --samples DIR [--seeds 3] [--variants a,b] [--out FILE.md]

Writes a Markdown table (and a .json beside it) with mean +- std over seeds.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPEC = ROOT / "src" / "deepcrossing" / "specs" / "movielens.toml"

RECENT = [("movieLast7dRatingCount", "item"), ("movieLast30dRatingCount", "item")]
PAIR = [("userGenreCosine", "context"), ("userGenreAvgRating", "context")]
BAYES = [("movieBayesAvgRating", "item")]  # needs samples prepared with FeatureConfig(movie_bayes=True)
ITEMCF = [("userItemCFScore", "context")]   # needs samples prepared with FeatureConfig(itemcf=True)
RATINGS = [("userLastRating", "user"), ("userRecent5AvgRating", "user"), ("userRecent20AvgRating", "user")]


def _features(names: list[tuple[str, str]], transform: dict[str, str]) -> str:
    return "".join(f'\n[[features]]\nname = "{n}"\nkind = "numeric"\nside = "{side}"\n'
                   f'transform = "{transform.get(n, "standardize")}"\n' for n, side in names)


VARIANTS: dict[str, dict[str, Any]] = {
    "default": {"add": [], "ema": 0.0, "served": True},
    "+recent counts": {"add": RECENT, "ema": 0.0, "served": True},
    "+user x movie": {"add": RECENT + PAIR, "ema": 0.0, "served": True},
    "+recent counts +bayes avg": {"add": RECENT + BAYES, "ema": 0.0, "served": True},
    "+user x movie +recent ratings": {"add": RECENT + PAIR + RATINGS, "ema": 0.0, "served": True},
    "+user x movie +itemCF": {"add": RECENT + PAIR + ITEMCF, "ema": 0.0, "served": False},
    "+recent counts +EMA 0.98": {"add": RECENT, "ema": 0.98, "served": True},
    "+recent counts +EMA 0.99": {"add": RECENT, "ema": 0.99, "served": True},
    "+recent counts +SWA 3": {"add": RECENT, "ema": 0.0, "swa": 3, "served": True},
}
LOG1P = {"movieLast7dRatingCount": "log1p_standardize", "movieLast30dRatingCount": "log1p_standardize"}


def base_spec() -> str:
    """The default spec without the features the variants add (so ``default`` is the spec before them)."""
    text = DEFAULT_SPEC.read_text()
    for name, _ in RECENT + PAIR + RATINGS:
        text = re.sub(r'\[\[features\]\]\nname = "' + name + r'"\n(?:[^\n\[]+\n)*\n?', "", text)
        if f'"{name}"' in text:
            raise SystemExit(f"could not take {name} out of {DEFAULT_SPEC}; update benchmarks/ablation.py")
    return text


def spec_text(variant: dict[str, Any]) -> str:
    """The base spec with the variant's features appended and its EMA / SWA set in ``[train]``."""
    text = base_spec()
    head, sep, tail = text.partition("\n[model]")
    text = head.rstrip() + "\n" + _features(variant["add"], LOG1P) + sep + tail
    for key in ("ema", "swa"):
        if variant.get(key):
            if f"{key} =" in text:
                raise SystemExit(f"the default spec sets {key} already; update benchmarks/ablation.py")
            text = text.replace("\n[train]\n", f"\n[train]\n{key} = {variant[key]}\n")
    tomllib.loads(text)  # a broken spec fails here, not in a child process
    return text


def run(samples: Path, name: str, seed: int) -> dict[str, float]:
    import deepcrossing
    from deepcrossing.features import read_samples
    from deepcrossing.metrics import auc
    from deepcrossing.training.evaluate import find_split_file

    with tempfile.TemporaryDirectory(prefix="dc-ablation-") as tmp:
        spec = Path(tmp) / "spec.toml"
        spec.write_text(spec_text(VARIANTS[name]))
        out = Path(tmp) / "model"
        cmd = [sys.executable, "-m", "deepcrossing.cli", "train", "--samples", str(samples), "--out", str(out),
               "--seed", str(seed), "--device", "cpu", "--spec", str(spec)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"train failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
        model = deepcrossing.load(out)
        result = {"train_wall_s": wall}
        for split in ("valid", "test"):
            table = read_samples(find_split_file(samples, split))
            labels = np.asarray(table.column("label").to_numpy(zero_copy_only=False), dtype=np.float64)
            result[f"{split}_auc"] = float(auc(labels, np.asarray(model.predict(table), dtype=np.float64)))
    return result


def table(results: dict[str, list[dict[str, float]]], title: str) -> str:
    lines = [f"### {title}", "", "| variant | served | valid AUC | test AUC | train wall s |",
             "| --- | --- | --- | --- | --- |"]

    def ms(runs: list[dict[str, float]], key: str, digits: int = 4) -> str:
        v = np.array([r[key] for r in runs])
        return f"{v.mean():.{digits}f} +- {v.std():.{digits}f}"

    for name, runs in results.items():
        served = "yes" if VARIANTS[name]["served"] else "no"
        lines.append(f"| {name} | {served} "
                     f"| {ms(runs, 'valid_auc')} | {ms(runs, 'test_auc')} "
                     f"| {ms(runs, 'train_wall_s', 0)} |")
    n = max(len(r) for r in results.values())
    lines += ["", f"mean +- std over {n} seeds (population std); choose on valid AUC only."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=Path, required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--title", default="")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ablation.md")
    args = ap.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done_path = args.out.with_suffix(".runs.jsonl")   # every finished run; a rerun skips those (survives a kill)
    done = {}
    if done_path.is_file():
        for line in done_path.read_text().splitlines():
            rec = json.loads(line)
            done[(rec["variant"], rec["seed"])] = rec["result"]
    results: dict[str, list[dict[str, float]]] = {}
    for name in names:
        for seed in range(args.seeds):
            r = done.get((name, seed))
            if r is None:
                r = run(args.samples, name, seed)
                with open(done_path, "a") as fh:
                    fh.write(json.dumps({"variant": name, "seed": seed, "result": r}) + "\n")
            results.setdefault(name, []).append(r)
            print(f"{name} seed {seed}: {r}", flush=True)
    text = table(results, args.title or str(args.samples))
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(text)


if __name__ == "__main__":
    main()
