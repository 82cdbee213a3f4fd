"""Publish with the vector index at scale (issue 9: "publish with the index on 20M synthetic ratings: time and
memory"): ``deepcrossing publish`` of N synthetic ratings into a fresh SQLite store, with the model's ``emb``
vectors (and, with ``--recall``, a recall folder's ``two_tower`` and ``item2vec``) indexed into the version.

Steps: synthetic ratings (``deepcrossing.data.synth``, ``--rows``; the catalogue is the generator's default
for that size unless ``--movies``), a small model trained on a 50k-rating draw of the same catalogue (publish
cost does not depend on how well the model ranks), then ``deepcrossing publish`` as a child process, timed,
with its own peak RSS (``os.wait4``'s rusage of that child). The index kind follows ``serving.ann.EXACT_BELOW``
(100,000 movies): exact search below it, an HNSW graph from it (``--movies 150000`` to build one).

Usage::

    .venv/bin/python benchmarks/publish_index.py --rows 2000000             # measured here (shared machine)
    .venv/bin/python benchmarks/publish_index.py --rows 20000000            # the issue's size
    .venv/bin/python benchmarks/publish_index.py --rows 2000000 --movies 150000 --recall
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def cli(*args: str) -> tuple[float, float]:
    """Run ``deepcrossing ARGS`` as a child process; return its wall seconds and its own peak RSS (MiB)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "deepcrossing.cli", *args], env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)                 # this child's rusage alone
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"deepcrossing {' '.join(args[:1])} failed (exit {child.returncode})")
    return time.perf_counter() - started, usage.ru_maxrss / 1024                 # KiB -> MiB


def main() -> None:
    from deepcrossing.data.synth import generate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="synthetic ratings to publish")
    parser.add_argument("--movies", type=int, help="catalogue size (default: the generator's for --rows)")
    parser.add_argument("--recall", action="store_true", help="also index a recall folder (two_tower, item2vec)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/deepcrossing-publish-index"))
    parser.add_argument("--out", type=Path, help="JSON report (default WORK/publish_index.json)")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    tag = "default" if args.movies is None else str(args.movies)
    big, small = work / f"raw-{args.rows}-{tag}", work / f"train-{args.rows}-{tag}"
    started = time.perf_counter()
    if not (big / "ratings.csv").exists():
        generate(args.rows, big, seed=0, n_movies=args.movies, overwrite=True)
    movies = sum(1 for _ in (big / "movies.csv").open()) - 1
    print(f"{args.rows:,} synthetic ratings, {movies:,} movies ({time.perf_counter() - started:.1f} s)", flush=True)
    if not (small / "model" / "manifest.json").exists():
        generate(50_000, small / "raw", seed=1, n_movies=movies, overwrite=True)
        cli("prepare", "--data", str(small / "raw"), "--out", str(small / "samples"), "--overwrite")
        cli("train", "--samples", str(small / "samples"), "--out", str(small / "model"), "--epochs", "1",
            "--device", "cpu", "--overwrite")
    recall = []
    if args.recall:
        if not (small / "recall" / "manifest.json").exists():
            cli("train-recall", "--samples", str(small / "samples"), "--out", str(small / "recall"), "--epochs", "1")
        recall = ["--recall", str(small / "recall")]
    store = work / f"store-{args.rows}.db"
    store.unlink(missing_ok=True)
    seconds, peak = cli("publish", "--model", str(small / "model"), "--data", str(big), "--store", f"sqlite:///{store}",
                  "--keep-previous", "0", *recall)

    from deepcrossing.serving.store import open_store

    opened = open_store(f"sqlite:///{store}")
    meta = opened.meta()
    opened.close()
    channels = {name: {k: info[k] for k in ("index", "n", "dim")} for name, info in meta["vector_channels"].items()}
    report = {"rows": args.rows, "movies": movies, "publish_seconds": round(seconds, 1),
              "peak_rss_mib": round(peak), "store_mib": round(store.stat().st_size / 2**20, 1),
              "channels": channels, "trending": "trending_days" in meta, "cpus": os.cpu_count()}
    out = args.out or work / "publish_index.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"the issue's size: {sys.executable} {Path(__file__).relative_to(ROOT)} --rows 20000000")


if __name__ == "__main__":
    main()
