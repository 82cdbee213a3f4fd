"""Numeric embeddings vs the built-in spec: validation AUC over seeds and training time (issue 11, item 1).

For each spec (the built-in ``movielens`` and the experimental ones in ``benchmarks/specs/``) and each seed,
runs ``deepcrossing train --train T --valid V --spec SPEC --seed S`` on one samples folder (the test split is
never given to these runs: choices are made on validation only) and reads the validation AUC of the saved
model from its manifest. Prints one line per spec: mean +- std (sample std) of validation AUC, and of the
wall time of the training command.

Usage::

    deepcrossing prepare --data ../shared/data/ml-latest-small --out /tmp/samples
    .venv/bin/python benchmarks/numeric_embeddings.py --samples /tmp/samples --out /tmp/runs [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPECS = ["movielens", *sorted(str(p) for p in (ROOT / "benchmarks" / "specs").glob("movielens_*.toml"))]


def train(samples: Path, spec: str, seed: int, out: Path) -> tuple[float, float]:
    """(validation AUC, wall seconds) of one ``deepcrossing train`` run."""
    cmd = [sys.executable, "-m", "deepcrossing.cli", "train", "--train", str(samples / "train.parquet"),
           "--valid", str(samples / "valid.parquet"), "--spec", spec, "--seed", str(seed), "--out", str(out),
           "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    manifest = json.loads((out / "manifest.json").read_text())
    return float(manifest["metrics"]["valid"]["auc"]), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--specs", nargs="+", default=SPECS)
    args = parser.parse_args()
    for spec in args.specs:
        aucs, walls = [], []
        for seed in args.seeds:
            auc, wall = train(args.samples, spec, seed, args.out / f"{Path(spec).stem}-{seed}")
            aucs.append(auc)
            walls.append(wall)
            print(f"  {Path(spec).stem} seed {seed}: valid AUC {auc:.4f}, {wall:.1f} s", flush=True)
        sd = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
        wsd = statistics.stdev(walls) if len(walls) > 1 else 0.0
        print(f"{Path(spec).stem:22s} valid AUC {statistics.mean(aucs):.4f} +- {sd:.4f}   "
              f"train {statistics.mean(walls):.1f} +- {wsd:.1f} s   (n = {len(aucs)})", flush=True)


if __name__ == "__main__":
    main()
