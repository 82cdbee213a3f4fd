"""Benchmark of the Feature layer: raw logs -> point-in-time samples, wall time and peak RSS, vs pandas.

Every measured job runs in a fresh child process (``--job``) that reports its own wall seconds and peak RSS
(``ru_maxrss``), so jobs do not inherit each other's memory. Jobs:
  ml-small   : ml-latest-small (load_dataset + build_samples)
  synth N    : N synthetic ratings from deepcrossing.data.synth.generate (load, then build_samples)
  pandas     : a straightforward pandas implementation of the same features on the same normalized input
               (groupby + cumulative sums with same-second groups held back, shifted lists, a per-user genre
               count matrix), writing Parquet; the ratio is pandas wall / DuckDB wall.

Usage:
    .venv/bin/python benchmarks/prepare.py                     # ml-latest-small + 20M synthetic
    .venv/bin/python benchmarks/prepare.py --ratings 2000000   # smaller synthetic run
    .venv/bin/python benchmarks/prepare.py --ratings 0 --no-pandas --itemcf  # ml-latest-small, item-CF on/off
Timings on a shared machine are noisy; run twice when comparing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ML_SMALL = Path(os.environ.get("DEEPCROSSING_SHARED_DATA", ROOT.parent / "shared" / "data")) / "ml-latest-small"


# ---------------------------------------------------------------- pandas implementation (the comparison)

def pandas_samples(ratings_path: Path, items_path: Path, out_path: Path, threshold: float = 3.5,
                   recent_n: int = 10) -> int:
    """The documented sample columns with pandas; same semantics as the SQL (strictly earlier ratings)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    r = pd.read_parquet(ratings_path)
    items = pd.read_parquet(items_path)
    df = r.merge(items[["item_id", "year", "genres"]], on="item_id", how="left")
    df["label"] = np.where(df["label"].notna(), df["label"], (df["rating"] >= threshold).astype("int8"))
    df["year"] = df["year"].astype("float64")
    df["rating2"] = df["rating"] ** 2
    df["year2"] = df["year"] ** 2
    df["has_year"] = df["year"].notna().astype("int64")
    df["one"] = 1

    def before(key: str, cols: list[str]) -> pd.DataFrame:
        # aggregate each (key, second), cumulative sum over seconds, minus the own second = strictly earlier
        g = df.groupby([key, "timestamp"], sort=True)[cols].sum()
        cum = g.groupby(level=0).cumsum() - g
        return cum

    ucols = ["one", "rating", "rating2", "has_year", "year", "year2", "label"]
    u = before("user_id", ucols).add_prefix("u_")
    m = before("item_id", ["one", "rating", "rating2", "label"]).add_prefix("m_")
    df = df.join(u, on=["user_id", "timestamp"]).join(m, on=["item_id", "timestamp"])
    first = df.groupby("user_id")["timestamp"].transform("min")
    del first

    def std(n, s, ss):
        var = (n * ss - s * s) / (n * (n - 1))
        return np.where(n >= 2, np.sqrt(np.maximum(var, 0)), np.nan)

    out = pd.DataFrame({"userId": df["user_id"], "movieId": df["item_id"], "rating": df["rating"],
                        "timestamp": df["timestamp"], "label": df["label"].astype("int8"),
                        "releaseYear": df["year"]})
    out["movieRatingCount"] = df["m_one"]
    out["movieAvgRating"] = np.where(df["m_one"] > 0, df["m_rating"] / df["m_one"].replace(0, 1), np.nan)
    out["movieRatingStddev"] = std(df["m_one"], df["m_rating"], df["m_rating2"])
    out["userRatingCount"] = df["u_one"]
    out["userAvgRating"] = np.where(df["u_one"] > 0, df["u_rating"] / df["u_one"].replace(0, 1), np.nan)
    out["userRatingStddev"] = std(df["u_one"], df["u_rating"], df["u_rating2"])
    out["userAvgReleaseYear"] = np.where(df["u_has_year"] > 0, df["u_year"] / df["u_has_year"].replace(0, 1),
                                         np.nan)
    out["userReleaseYearStddev"] = std(df["u_has_year"], df["u_year"], df["u_year2"])
    out["movieGenres"] = df["genres"]
    for i in range(3):
        out[f"movieGenre{i + 1}"] = df["genres"].str[i]

    # positive stream: number positives per user in time order (same second: larger movieId first)
    pos = df.loc[df["label"] == 1, ["user_id", "item_id", "timestamp", "genres"]]
    pos = pos.sort_values(["user_id", "timestamp", "item_id"], ascending=[True, True, False])
    pos["pos_rank"] = pos.groupby("user_id").cumcount() + 1
    lag = pd.DataFrame({"user_id": pos["user_id"], "pos_rank": pos["pos_rank"]})
    grouped = pos.groupby("user_id")["item_id"]
    for j in range(recent_n):
        lag[f"rp{j}"] = grouped.shift(j)
    # cumulative genre counts per user over the positive stream
    ex = pos[["user_id", "pos_rank", "genres"]].explode("genres").dropna(subset=["genres"])
    dummies = pd.crosstab([ex["user_id"], ex["pos_rank"]], ex["genres"])
    dummies = dummies.reindex(pd.MultiIndex.from_frame(lag[["user_id", "pos_rank"]]), fill_value=0)
    counts = dummies.groupby(level=0).cumsum()
    genre_names = np.array(counts.columns)
    mat = counts.to_numpy()
    order = np.argsort(-mat, axis=1, kind="stable")[:, :5]  # count desc, name asc (columns are sorted)
    top = np.where(np.take_along_axis(mat, order, axis=1) > 0, genre_names[order], None)
    state = lag.reset_index(drop=True)
    for i in range(5):
        state[f"userGenre{i + 1}"] = top[:, i]
    state["userGenreCounts"] = [list(zip(genre_names[row > 0].tolist(), row[row > 0].tolist())) for row in mat]
    rp = state[[f"rp{j}" for j in range(recent_n)]].to_numpy()
    k = np.minimum(state["pos_rank"].to_numpy(), recent_n)
    state["userRecentPositives"] = [row[:n].astype("int64").tolist() for row, n in zip(rp, k)]
    df["u_label"] = df["u_label"].astype("int64")
    joined = df[["user_id", "u_label"]].merge(state, left_on=["user_id", "u_label"],
                                              right_on=["user_id", "pos_rank"], how="left")
    out["userRecentPositives"] = [x if isinstance(x, list) else [] for x in joined["userRecentPositives"]]
    for i in range(5):
        out[f"userRatedMovie{i + 1}"] = out["userRecentPositives"].str[i]
    for i in range(5):
        out[f"userGenre{i + 1}"] = joined[f"userGenre{i + 1}"].to_numpy()
    genre_counts = pa.array([x if isinstance(x, list) else [] for x in joined["userGenreCounts"]],
                            pa.map_(pa.string(), pa.int64()))
    table = pa.Table.from_pandas(out, preserve_index=False).append_column("userGenreCounts", genre_counts)
    pq.write_table(table, out_path)
    return len(out)


# ---------------------------------------------------------------- child jobs

def job(kind: str, args: dict) -> dict:
    from deepcrossing.data import load_dataset
    from deepcrossing.features import FeatureConfig, build_samples

    started = time.perf_counter()
    result: dict = {}
    if kind == "generate":
        from deepcrossing.data.synth import generate

        generate(int(args["ratings"]), args["out"], seed=0)
    elif kind == "load":
        load_dataset(args["data"], workdir=args["work"])
    elif kind == "samples":
        from deepcrossing.data.schema import Dataset

        ds = Dataset(name="bench", ratings=Path(args["work"]) / "ratings.parquet",
                     items=Path(args["work"]) / "items.parquet")
        config = FeatureConfig(threads=2, memory_limit=args.get("memory_limit", "4GB"),
                               itemcf=args.get("itemcf") == "True")
        m = build_samples(ds, config, args["out"])
        result["rows"] = sum(s["rows"] for s in m["splits"].values())
    elif kind == "load+samples":
        ds = load_dataset(args["data"], workdir=args["work"])
        m = build_samples(ds, FeatureConfig(threads=2), args["out"])
        result["rows"] = sum(s["rows"] for s in m["splits"].values())
    elif kind == "pandas":
        result["rows"] = pandas_samples(Path(args["work"]) / "ratings.parquet", Path(args["work"]) / "items.parquet",
                                        Path(args["out"]))
    result["seconds"] = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["peak_rss_gib"] = usage.ru_maxrss / 2**20  # KiB -> GiB (Linux)
    # CPU seconds (user + sys, all threads): on a shared machine wall time is noisy, CPU time much less so
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    return result


def run_child(kind: str, timeout: float, **args) -> dict:
    cmd = [sys.executable, __file__, "--job", kind, "--job-args", json.dumps({k: str(v) for k, v in args.items()})]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:120]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratings", type=int, default=20_000_000, help="synthetic ratings (0 to skip)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp folder)")
    parser.add_argument("--no-pandas", action="store_true", help="skip the pandas comparison")
    parser.add_argument("--pandas-timeout", type=float, default=1800, help="seconds before pandas is given up")
    parser.add_argument("--pandas-max-ratings", type=int, default=5_000_000,
                        help="skip pandas above this size: it holds everything in memory (~3 GiB per 1M ratings "
                             "measured at 2M), so 20M would need ~60 GiB")
    parser.add_argument("--itemcf", action="store_true",
                        help="also time the samples with userItemCFScore on (FeatureConfig.itemcf, opt-in)")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--job-args", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.job:
        print(json.dumps(job(a.job, json.loads(a.job_args))))
        return
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []

    def add(label: str, res: dict, target: str = "") -> None:
        rows.append((label, res, target))
        print(f"  done: {label}: {res}", file=sys.stderr, flush=True)

    if ML_SMALL.exists():
        add("ml-latest-small: load + samples", run_child("load+samples", 600, data=ML_SMALL, work=work / "mls",
                                                           out=work / "mls-out"), "< 5 s")
        add("ml-latest-small: samples only", run_child("samples", 600, work=work / "mls", out=work / "mls-out2"))
        if a.itemcf:
            add("ml-latest-small: samples + itemcf", run_child("samples", 600, work=work / "mls",
                                                               out=work / "mls-out3", itemcf=True), "< 2 s")
        if not a.no_pandas:
            add("ml-latest-small: pandas", run_child("pandas", a.pandas_timeout, work=work / "mls",
                                                     out=work / "mls-pandas.parquet"))
    if a.ratings:
        n = a.ratings
        synth = work / f"synth-{n}"
        if not (synth / "ratings.csv").exists():
            gen = run_child("generate", 3600, ratings=n, out=synth)
            print(f"  generated {n:,} ratings in {gen.get('seconds', 0):.0f} s", file=sys.stderr)
        add(f"{n:,} synthetic: load_dataset", run_child("load", 3600, data=synth, work=work / "synth-norm"))
        add(f"{n:,} synthetic: samples", run_child("samples", 3600, work=work / "synth-norm",
                                                   out=work / "synth-out"), "< 150 s, < 5 GiB (20M)")
        if a.itemcf:
            add(f"{n:,} synthetic: samples + itemcf", run_child("samples", 3600, work=work / "synth-norm",
                                                                out=work / "synth-out-icf", itemcf=True))
        if not a.no_pandas and n > a.pandas_max_ratings:
            add(f"{n:,} synthetic: pandas", {"error": f"skipped: > --pandas-max-ratings {a.pandas_max_ratings:,} "
                                                      "(would not fit in memory)"})
        elif not a.no_pandas:
            add(f"{n:,} synthetic: pandas", run_child("pandas", a.pandas_timeout, work=work / "synth-norm",
                                                      out=work / "synth-pandas.parquet"))
    print(f"\nFeature layer benchmark ({os.cpu_count()} CPUs visible, DuckDB threads=2; shared machine, noisy)")
    print(f"{'job':<40} {'rows':>12} {'wall s':>9} {'CPU s':>8} {'peak RSS GiB':>13} {'vs DuckDB':>10}  target")
    duck = {}
    for label, res, target in rows:
        if "error" in res:
            print(f"{label:<40} {'':>12} {res['error']}")
            continue
        base = label.split(":")[0]
        ratio = ""
        if label.endswith(("samples only", ": samples")):
            duck[base] = res["seconds"]
        if label.endswith("pandas") and base in duck:
            ratio = f"{res['seconds'] / duck[base]:.1f}x"
        print(f"{label:<40} {res.get('rows', ''):>12} {res['seconds']:>9.1f} {res.get('cpu_seconds', 0):>8.1f} "
              f"{res['peak_rss_gib']:>13.2f} "
              f"{ratio:>10}  {target}")


if __name__ == "__main__":
    main()
