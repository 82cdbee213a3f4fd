#!/usr/bin/env python
"""Serving cost of the user x movie (pair) features: in-process ranking ms per request, with and without them.

Two models are trained on the same samples (1 epoch each: the cost does not depend on the weights), the
default spec without ``userGenreCosine`` / ``userGenreAvgRating`` and with them; one SQLite store is
published from the data; then ``Engine.recommend(user, k=10, candidates=N)`` (the service's ranking call, no
HTTP, warm user cache, one torch thread) is timed for both engines in the same run, requests interleaved so
that a loaded machine slows both alike.

Usage:
    PYTHONPATH=src .venv/bin/python benchmarks/pair_cost.py --data ../shared/data/ml-latest-small \\
        --samples SAMPLES_DIR [--candidates 800] [--repeats 400]
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


def spec_with_pair() -> str:
    text = spec_without_pair()
    head, sep, tail = text.partition("\n[model]")
    blocks = "".join(f'\n[[features]]\nname = "{n}"\nkind = "numeric"\nside = "context"\ntransform = "standardize"\n'
                     for n in PAIR)
    return head.rstrip() + "\n" + blocks + sep + tail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--samples", type=Path, required=True)
    ap.add_argument("--candidates", type=int, default=800)
    ap.add_argument("--repeats", type=int, default=400)
    args = ap.parse_args()

    import torch

    from deepcrossing.data import load_dataset
    from deepcrossing.serving.engine import Engine
    from deepcrossing.serving.publish import publish_dataset

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        engines = {}
        for name, text in (("without pair", spec_without_pair()), ("with pair", spec_with_pair())):
            spec = work / f"{name.replace(' ', '_')}.toml"
            spec.write_text(text)
            out = work / name.replace(" ", "_")
            subprocess.run([sys.executable, "-m", "deepcrossing.cli", "train", "--samples", str(args.samples),
                            "--spec", str(spec), "--out", str(out), "--epochs", "1", "--seed", "0",
                            "--device", "cpu"], check=True, capture_output=True)
            engines[name] = out
        url = f"sqlite:///{work / 'features.db'}"
        publish_dataset(load_dataset(args.data, workdir=work / "data"), url)
        opened = {name: Engine.open(model, url) for name, model in engines.items()}
        assert opened["with pair"].state is not None and opened["with pair"].state.scorer.pair_idx is not None
        assert opened["without pair"].state is not None and opened["without pair"].state.scorer.pair_idx is None
        meta = opened["with pair"].store.meta()
        users = [int(u) for u in meta.get("example_users", [1])]
        times: dict[str, list[float]] = {name: [] for name in opened}
        for i in range(args.repeats + len(users)):
            for name, engine in opened.items():
                t0 = time.perf_counter()
                engine.recommend(users[i % len(users)], k=10, candidates=args.candidates)
                times[name].append(time.perf_counter() - t0)
        for name, ts in times.items():
            ms = np.array(ts[len(users):]) * 1000  # after each user's first (cache-filling) call
            print(f"{name:>13}: median {np.median(ms):.3f} ms, p90 {np.percentile(ms, 90):.3f} ms, "
                  f"p99 {np.percentile(ms, 99):.3f} ms over {len(ms)} requests of {args.candidates} candidates")
        for engine in opened.values():
            engine.store.close()


if __name__ == "__main__":
    main()
