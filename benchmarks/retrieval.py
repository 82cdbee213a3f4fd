"""Offline retrieval benchmark (issue 9, item 5): Recall@K and coverage@K of each recall channel on the time
split of ml-latest-small and ml-100k, side by side with popularity and the peers, the end-to-end top 10 of
retrieval -> Deep Crossing vs popularity-800 -> Deep Crossing, and a PNG of the Recall@K curves per dataset.

Protocol: :mod:`deepcrossing.training.retrieval_data` (relevant = a test user's positives in the test
period not rated before it; channels see only train + valid; rated movies left out). Channels: popularity,
trending (the recall folder's window before the test start, its ratings decayed with the folder's half-life:
``train-recall`` chooses both by backtesting on the validation period and the periods of its length before
it), the user's top genres, ``emb`` (the Deep
Crossing model's unit item vectors, as the service's ``model=emb``), the recall folder's ``two_tower`` and
``item2vec`` (``deepcrossing train-recall``: item2vec is also the issue's named peer), ``two_tower_trending``
(the two-tower score with the trending prior, :mod:`deepcrossing.training.retrieval_prior`), their ``merged`` list
(quotas chosen on the validation split by ``train-recall``, the first 100 by its head weights when it has
them; or, when ``train-recall`` found it better on validation, the score fusion of the channels:
``deepcrossing.training.retrieval_fusion``), and ALS from the ``implicit`` library as a peer
(in the ``bench`` extra: ``pip install -c constraints.txt -e '.[bench]'``; ``--implicit-path`` adds a folder
holding it to ``sys.path`` instead): fitted on the positives before the test start, its factor count chosen
by Recall@100 on the validation split (fit on train only).

End to end: for each test user with a relevant movie, the first 800 of a channel are scored by the Deep
Crossing model (user features as of the test start, each movie's latest features before it), the top 10 kept;
NDCG@10 / Recall@10 / HitRate@10 with ``deepcrossing.metrics`` over ALL the user's relevant movies (those
not recalled count as misses).

Usage::

    .venv/bin/python benchmarks/retrieval.py --work /tmp/retrieval        # both datasets: prepare, train, evaluate
    .venv/bin/python benchmarks/retrieval.py --dataset ml-latest-small --samples S --model M --recall R
    .venv/bin/python benchmarks/retrieval.py --samples S --compare-models M1 M2   # two rankers, same candidates
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
DATA = Path(os.environ.get("DEEPCROSSING_SHARED_DATA", ROOT.parent / "shared" / "data"))
DATASETS = ("ml-latest-small", "ml-100k")
KS = (50, 100, 200, 800)
E2E_CANDIDATES, E2E_K = 800, 10


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


def static_oracle(data: Any, k: int = 100) -> float:
    """A bound, not a channel: Recall@``k`` of the one list of ``k`` movies (the same for every user) that the
    TEST answers favour most (each relevant movie counts 1 / |relevant| of its user). Cold users (most test
    users here) can only get a list like this, so the merged recall can beat it only through warm users."""
    weight: dict[int, float] = {}
    for rel in data.relevant:
        for m in rel.tolist():
            weight[m] = weight.get(m, 0.0) + 1.0 / rel.size
    top = set(sorted(weight, key=lambda m: (-weight[m], m))[:k])
    return float(np.mean([len(top & set(r.tolist())) / r.size for r in data.relevant if r.size]))


def per_user_recall(data: Any, channel: Any, k: int = 100) -> np.ndarray:
    """(U,) Recall@``k`` of each user with a relevant movie (``recall_at_ks``'s mean is their mean)."""
    from deepcrossing.training.retrieval import recall_at_ks

    return np.array([recall_at_ks([channel(user, k)], [rel], (k,)).recall[k]
                     for user, rel in zip(data.users, data.relevant, strict=True) if rel.size])


def paired_bootstrap(a: np.ndarray, b: np.ndarray, rounds: int = 10_000, seed: int = 0) -> dict[str, float]:
    """Users resampled with replacement (the same draw for both channels): 95% intervals of mean(a) / mean(b)
    and mean(a) - mean(b), and the share of draws where a is not above b. With 72 test users the figures of
    one run move a lot; this says how much.

    Example:
        >>> out = paired_bootstrap(np.array([0.2, 0.4, 0.6]), np.array([0.1, 0.2, 0.3]), rounds=200)
        >>> out["ratio"], out["ratio_low"] == out["ratio_high"] == 2.0
        (2.0, True)
    """
    draws = np.random.default_rng(seed).integers(0, a.size, size=(rounds, a.size))
    ma, mb = a[draws].mean(axis=1), b[draws].mean(axis=1)
    ratio = ma / np.where(mb > 0, mb, np.nan)
    diff = ma - mb
    return {"ratio": float(a.mean() / b.mean()) if b.mean() > 0 else float("nan"),
            "ratio_low": float(np.nanquantile(ratio, 0.025)), "ratio_high": float(np.nanquantile(ratio, 0.975)),
            "diff": float(a.mean() - b.mean()), "diff_low": float(np.quantile(diff, 0.025)),
            "diff_high": float(np.quantile(diff, 0.975)), "p_not_above": float(np.mean(diff <= 0))}


def end_to_end(data: Any, loaded: Any, channels: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Top-10 NDCG / Recall / HitRate of ``channel -> Deep Crossing`` over the users with a relevant movie."""
    from deepcrossing.metrics import hit_rate_at_k, ndcg_at_k, recall_at_k
    from deepcrossing.training.retrieval_data import ranker

    rank = ranker(data, loaded)                       # as train-recall --model ranks the validation merge
    known = set(data.movie_rows.column("movieId").to_numpy().tolist())
    out = {}
    for name, channel in channels.items():
        groups, labels, scores = [], [], []
        for i, user in enumerate(data.users):
            rel = data.relevant[i]
            if rel.size == 0:
                continue
            cands = [int(m) for m in channel(user, E2E_CANDIDATES) if int(m) in known]
            probs = rank(i, np.array(cands, dtype=np.int64))
            missed = np.setdiff1d(rel, np.array(cands, dtype=np.int64))       # relevant, never recalled
            groups.append(np.full(len(cands) + missed.size, i))
            labels.append(np.concatenate([np.isin(np.array(cands, dtype=np.int64), rel), np.ones(missed.size, bool)]))
            scores.append(np.concatenate([probs.astype(np.float64), np.full(missed.size, -1.0)]))
        g, y, s = np.concatenate(groups), np.concatenate(labels), np.concatenate(scores)
        out[name] = {"ndcg@10": ndcg_at_k(g, y, s, E2E_K).value, "recall@10": recall_at_k(g, y, s, E2E_K).value,
                     "hitrate@10": hit_rate_at_k(g, y, s, E2E_K).value}
    return out


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
    ax.set_title(f"{report['dataset']}, time split: {report['n_users']} test users")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_dataset(name: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Prepare, train (Deep Crossing, recall models), evaluate one dataset; print its tables."""
    work.mkdir(parents=True, exist_ok=True)
    samples = args.samples or work / "samples"
    if args.samples is None and not (samples / "manifest.json").exists():
        print(f"prepare {DATA / name} -> {samples}", flush=True)
        cli("prepare", "--data", str(DATA / name), "--out", str(samples))
    model = args.model or work / "model"
    if args.model is None and not (model / "manifest.json").exists():
        print(f"train {args.epochs} epoch(s) -> {model}", flush=True)
        cli("train", "--samples", str(samples), "--out", str(model), "--epochs", str(args.epochs), "--device", "cpu",
            "--seed", "0")
    recall_dir = args.recall or work / "recall"
    if args.recall is None and not (recall_dir / "manifest.json").exists():
        print(f"train-recall -> {recall_dir}", flush=True)
        started = time.perf_counter()
        cli("train-recall", "--samples", str(samples), "--out", str(recall_dir), "--seed", "0", "--model", str(model))
        print(f"  train-recall took {time.perf_counter() - started:.1f} s", flush=True)

    from deepcrossing.training.artifact import load
    from deepcrossing.training.recall_model import load_recall, read_manifest
    from deepcrossing.training.retrieval_data import build_channels, evaluate_retrieval, load_retrieval_data
    from deepcrossing.training.retrieval_fusion import fusion_of

    started = time.perf_counter()
    manifest = read_manifest(recall_dir)
    data = load_retrieval_data(samples, trending_days=manifest["merge"]["trending_days"],
                               trending_half_life_days=manifest["merge"].get("trending_half_life_days"))
    loaded = load(model)
    fusion = fusion_of(manifest["merge"])                     # the rule train-recall chose on validation
    channels = build_channels(data, loaded, load_recall(recall_dir), manifest["merge"]["weights"],
                              manifest["merge"].get("head_weights"), manifest["merge"]["k"], fusion)
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
    report["end_to_end"] = end_to_end(data, loaded, {"popularity-800": channels["popularity"],
                                                     "merged-800": channels["merged"]})
    report["bounds"] = {"static_oracle@100": static_oracle(data)}
    pairs = [("merged", "popularity"), ("merged", "trending")]
    per_user = {ch: per_user_recall(data, channels[ch]) for ch in {c for pair in pairs for c in pair}}
    report["bootstrap@100"] = {f"{a} vs {b}": paired_bootstrap(per_user[a], per_user[b]) for a, b in pairs}
    report.update(dataset=name, model_dir=str(model), recall_dir=str(recall_dir), peers=extra,
                  merge=manifest["merge"], recall_training=manifest["metrics"],
                  seconds=round(time.perf_counter() - started, 2))
    pop = report["channels"]["popularity"]["recall"]

    print(f"\n{name} ({samples}): {report['n_users']} test users with a relevant movie ({report['n_skipped']} "
          f"skipped), catalogue {report['catalogue_size']:,}")
    print("channel            " + "".join(f"  R@{k:<4} (x pop)" for k in KS) + "".join(f"  cov@{k:<4}" for k in KS))
    for ch, row in report["channels"].items():
        rec = "".join(f"  {row['recall'][str(k)]:.4f} ({row['recall'][str(k)] / pop[str(k)]:.2f}x)" for k in KS)
        cov = "".join(f"  {row['coverage'][str(k)]:8.4f}" for k in KS)
        print(f"{ch:<19}{rec}{cov}")
    warm = report["channels"]["popularity"]["recall_warm"]
    print(f"warm users only ({report['n_warm_users']} with a positive before the test start):")
    for ch, row in report["channels"].items():
        values = [(row["recall_warm"][str(k)], row["recall_warm"][str(k)] / warm[str(k)]) for k in KS]
        print(f"{ch:<19}" + "".join(f"  {v:.4f} ({x:.2f}x)" for v, x in values))
    print("end to end (800 candidates -> Deep Crossing -> top 10):")
    for ch, row in report["end_to_end"].items():
        print(f"  {ch:<16}" + "  ".join(f"{m} {v:.4f}" for m, v in row.items()))
    for pair, b in report["bootstrap@100"].items():
        print(f"{pair}, Recall@100 (paired bootstrap over the {report['n_users']} users, 95%): ratio {b['ratio']:.3f}x "
              f"[{b['ratio_low']:.3f}, {b['ratio_high']:.3f}], difference {b['diff']:+.4f} [{b['diff_low']:+.4f}, "
              f"{b['diff_high']:+.4f}]")
    print(f"bound (reads the test answers, not a channel): the best single list of 100 for every user "
          f"{report['bounds']['static_oracle@100']:.4f}")
    weights = ", ".join(f"{k} {v:g}" for k, v in manifest["merge"]["weights"].items())
    if manifest["merge"].get("head_weights"):
        weights += "; the first {} by {}".format(manifest["merge"]["k"], ", ".join(
            f"{k} {v:g}" for k, v in manifest["merge"]["head_weights"].items()))
    ndcg = manifest["merge"].get("valid_ndcg@10")
    chosen = (f"the best valid Recall@100 with end-to-end NDCG@10 >= popularity-800's: {ndcg:.4f} vs "
              f"{manifest['merge']['valid_ndcg@10_popularity']:.4f}; " if ndcg is not None else "")
    print(f"merge weights ({chosen}valid Recall@100 {manifest['merge']['valid_recall']:.4f}): {weights}")
    if "rule" in manifest["merge"]:
        m, f = manifest["merge"], manifest["merge"]["fusion"]
        print(f"score fusion (valid Recall@100 {m['fusion_valid_recall']:.4f}"
              + (f", NDCG@10 {m['fusion_valid_ndcg@10']:.4f}" if "fusion_valid_ndcg@10" in m else "") + "): warm "
              + ", ".join(f"{c} {w:g}" for c, w in f["weights"].items() if w > 0) + "; cold "
              + ", ".join(f"{c} {w:g}" for c, w in f["cold_weights"].items() if w > 0) + f"; k {f['k']:g}"
              + (f"; the first {f['head']} fused, the rest by the quotas" if f["head"] else ""))
        print(f"merged = {m['rule']} (the better on valid Recall@100: quota {m['quota_valid_recall']:.4f}, "
              f"fusion {m['fusion_valid_recall']:.4f})")
    half = manifest["merge"].get("trending_half_life_days")
    print(f"trending: the last {manifest['merge']['trending_days']} days, " + (f"half-life {half:g} days" if half else
          "counted") + f" (chosen by backtesting on {len(manifest['metrics'].get('trending_periods', [1]))} "
          "period(s) before the test start)")
    prior = manifest["metrics"].get("two_tower_trending")
    if prior:
        print("two_tower_trending: weights fitted on valid: " + ", ".join(f"{k} {v:.4f}" for k, v in prior.items()))
    if isinstance(extra.get("als"), str):
        print(extra["als"])
    elif "als" in extra:
        print(f"als: {extra['als']['factors']} factors (valid Recall@100 by factors: "
              f"{extra['als']['valid_recall@100_by_factors']})")
    plot(report, work / "recall_at_k.png")
    return report


def compare_rankers(samples: Path, models: list[Path]) -> None:
    """``--compare-models``: popularity-800 -> each model, NDCG@10 / Recall@10 / HitRate@10 on the validation and
    the test period of one samples folder (the same candidates for every model: only the ranking differs)."""
    from deepcrossing import load
    from deepcrossing.training.retrieval import popularity_channel
    from deepcrossing.training.retrieval_data import load_retrieval_data

    for split in ("valid", "test"):
        data = load_retrieval_data(samples, split=split)
        for model in models:
            row = end_to_end(data, load(model), {"popularity-800": popularity_channel(data.prior)})["popularity-800"]
            print(f"{split:5s} {model}: " + "  ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/deepcrossing-retrieval"),
                        help="folder for what is made here (one subfolder per dataset)")
    parser.add_argument("--dataset", choices=(*DATASETS, "both"), default="both")
    parser.add_argument("--samples", type=Path, help="(one dataset) an existing samples folder")
    parser.add_argument("--model", type=Path, help="(one dataset) an existing Deep Crossing model folder")
    parser.add_argument("--recall", type=Path, help="(one dataset) an existing recall folder")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, help="JSON report (default WORK/retrieval.json)")
    parser.add_argument("--implicit-path", type=Path, help="a folder holding the implicit package (ALS peer)")
    parser.add_argument("--compare-models", type=Path, nargs="+", metavar="MODEL",
                        help="with --samples: only popularity-800 -> each model, top-10 metrics on valid and test")
    args = parser.parse_args()
    if args.compare_models:
        if args.samples is None:
            parser.error("--compare-models needs --samples")
        compare_rankers(args.samples, args.compare_models)
        return
    names = DATASETS if args.dataset == "both" else (args.dataset,)
    if len(names) > 1 and (args.samples or args.model or args.recall):
        parser.error("--samples/--model/--recall need one --dataset")
    if args.implicit_path is not None:
        sys.path.insert(0, str(args.implicit_path))
    started = time.perf_counter()
    reports = {name: run_dataset(name, args.work / name, args) for name in names}
    out = args.out or args.work / "retrieval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(reports, indent=2) + "\n")
    print(f"\nwrote {out} and {', '.join(str(args.work / n / 'recall_at_k.png') for n in names)} "
          f"({time.perf_counter() - started:.1f} s in all)")


if __name__ == "__main__":
    main()
