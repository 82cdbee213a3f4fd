"""Offline retrieval benchmark (issue 9, item 5): Recall@K and coverage@K of each recall channel on the time
split of ml-latest-small, side by side with popularity, and a PNG of the Recall@K curves.

Protocol: :mod:`deepcrossing.training.retrieval_data` (relevant = a test user's positives in the test
period not rated before it; channels see only train + valid; rated movies left out). Channels: popularity,
the user's top genres, ``emb`` (the Deep Crossing model's unit item vectors, as the service's ``model=emb``),
their round-robin merge, and ALS from the ``implicit`` library as a peer (in the ``bench`` extra: ``pip install
-c constraints.txt -e '.[bench]'``; ``--implicit-path`` adds a folder holding it to ``sys.path`` instead):
fitted on the positives before the test start, its factor count chosen by Recall@100 on the validation split
(fit on train only).

Usage::

    .venv/bin/python benchmarks/retrieval.py --work /tmp/retrieval        # prepare + train 2 epochs + evaluate
    .venv/bin/python benchmarks/retrieval.py --samples S --model M --out report.json --plot recall.png
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
ML_SMALL = Path(os.environ.get("DEEPCROSSING_SHARED_DATA", ROOT.parent / "shared" / "data")) / "ml-latest-small"
KS = (50, 100, 200, 800)


def cli(*args: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    subprocess.run([sys.executable, "-m", "deepcrossing.cli", *args], check=True, env=env, stdout=subprocess.DEVNULL)


def als_channel(data: Any, samples: Path, factors: int, split: str) -> Any:
    """An ALS channel (``implicit``) fitted on the positives known at ``data.test_start``."""
    import implicit
    import scipy.sparse as sp

    from deepcrossing.duck import connection, sql_str
    from deepcrossing.training.retrieval import UserState

    known = ["train", "valid"] if split == "test" else ["train"]
    files = ", ".join(sql_str(samples / f"{n}.parquet") for n in known)
    with connection() as con:
        pairs = con.sql(f"SELECT userId, movieId FROM read_parquet([{files}], union_by_name = true) "
                        f"WHERE label = 1 AND timestamp < {data.test_start}").fetchnumpy()
    movies = data.prior.popular                                   # catalogue, popularity order
    col_of = {int(m): i for i, m in enumerate(movies)}
    users, rows = np.unique(pairs["userId"], return_inverse=True)
    cols = np.array([col_of[int(m)] for m in pairs["movieId"]])
    matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(users), len(movies)))
    model = implicit.als.AlternatingLeastSquares(factors=factors, regularization=0.05, iterations=15,
                                                 random_state=0)
    model.fit(matrix, show_progress=False)
    item_f = np.asarray(model.item_factors)
    user_f = np.asarray(model.user_factors)
    row_of = {int(u): i for i, u in enumerate(users)}

    def recall(user: UserState, n: int) -> np.ndarray:
        if user.user_id not in row_of:
            order = movies
        else:
            scores = item_f @ user_f[row_of[user.user_id]]
            order = movies[np.lexsort((movies, -scores))]
        return order[~np.isin(order, user.rated)][:n]

    return recall


def tune_als(samples: Path) -> tuple[int, dict[int, float]]:
    """Factor count with the best validation Recall@100 (standing at valid_start, fit on train)."""
    from deepcrossing.training.retrieval_data import evaluate_retrieval, load_retrieval_data

    valid = load_retrieval_data(samples, split="valid")
    scores = {}
    for factors in (16, 32, 64, 128):
        report = evaluate_retrieval(valid, {"als": als_channel(valid, samples, factors, "valid")}, (100,))
        scores[factors] = report["channels"]["als"]["recall"]["100"]
    return max(scores, key=lambda f: scores[f]), scores


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = report["ks"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, row in report["channels"].items():
        ax.plot(ks, [row["recall"][str(k)] for k in ks], marker="o", label=name)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("K (candidates)")
    ax.set_ylabel("Recall@K")
    ax.set_title(f"retrieval on the time split: {report['n_users']} test users")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/deepcrossing-retrieval"),
                        help="folder for the samples and model made here when --samples/--model are not given")
    parser.add_argument("--samples", type=Path)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, help="JSON report (default WORK/retrieval.json)")
    parser.add_argument("--plot", type=Path, help="PNG of the Recall@K curves (default WORK/recall_at_k.png)")
    parser.add_argument("--implicit-path", type=Path, help="a folder holding the implicit package (ALS peer)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    samples = args.samples or args.work / "samples"
    if args.samples is None and not (samples / "manifest.json").exists():
        print(f"prepare {ML_SMALL} -> {samples}", flush=True)
        cli("prepare", "--data", str(ML_SMALL), "--out", str(samples))
    model = args.model or args.work / "model"
    if args.model is None and not (model / "manifest.json").exists():
        print(f"train {args.epochs} epoch(s) -> {model}", flush=True)
        cli("train", "--samples", str(samples), "--out", str(model), "--epochs", str(args.epochs), "--device", "cpu",
            "--seed", "0")
    if args.implicit_path is not None:
        sys.path.insert(0, str(args.implicit_path))

    from deepcrossing.training.artifact import load
    from deepcrossing.training.retrieval_data import build_channels, evaluate_retrieval, load_retrieval_data

    started = time.perf_counter()
    data = load_retrieval_data(samples)
    channels = build_channels(data, load(model))
    extra: dict[str, Any] = {}
    try:
        import implicit  # noqa: F401
    except ImportError:
        extra["als"] = "not run: the implicit library is not importable (see --implicit-path)"
    else:
        factors, by_factors = tune_als(samples)
        channels["als"] = als_channel(data, samples, factors, "test")
        extra["als"] = {"factors": factors, "valid_recall@100_by_factors": by_factors,
                        "regularization": 0.05, "iterations": 15, "fit_on": "positives before test_start"}
    report = evaluate_retrieval(data, channels, KS)
    report.update(model_dir=str(model), peers=extra, seconds=round(time.perf_counter() - started, 2))
    pop = report["channels"]["popularity"]["recall"]

    head = "channel     " + "".join(f"  R@{k:<4} (x pop)" for k in KS) + "".join(f"  cov@{k:<4}" for k in KS)
    print(f"{samples}: {report['n_users']} test users with a relevant movie ({report['n_skipped']} skipped), "
          f"catalogue {report['catalogue_size']:,}")
    print(head)
    for name, row in report["channels"].items():
        rec = "".join(f"  {row['recall'][str(k)]:.4f} ({row['recall'][str(k)] / pop[str(k)]:.2f}x)" for k in KS)
        cov = "".join(f"  {row['coverage'][str(k)]:8.4f}" for k in KS)
        print(f"{name:<12}{rec}{cov}")
    warm = report["channels"]["popularity"]["recall_warm"]
    print(f"warm users only ({report['n_warm_users']} with a positive before the test start):")
    for name, row in report["channels"].items():
        values = [(row["recall_warm"][str(k)], row["recall_warm"][str(k)] / warm[str(k)]) for k in KS]
        print(f"{name:<12}" + "".join(f"  {v:.4f} ({x:.2f}x)" for v, x in values))
    if isinstance(extra.get("als"), str):
        print(extra["als"])
    elif "als" in extra:
        tuned = extra["als"]
        by = tuned["valid_recall@100_by_factors"]
        print(f"als: {tuned['factors']} factors (valid Recall@100 by factors: {by})")
    out = args.out or args.work / "retrieval.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    png = args.plot or args.work / "recall_at_k.png"
    plot(report, png)
    print(f"wrote {out} and {png} ({report['seconds']} s)")


if __name__ == "__main__":
    main()
