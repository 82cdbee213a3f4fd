"""`deepcrossing train-recall`: samples -> recall folder (two-tower and item2vec vectors, the merge: quotas or
score fusion, whichever is better on validation)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from deepcrossing.cli.common import app, console, existing_folder, not_a_file, seed_everything, set_threads

RECALL_CHANNELS = ("two_tower", "item2vec")   # training.recall_model.CHANNELS (not imported: keeps --help fast)


def recall_channels(value: str) -> str:
    """A typer callback for ``--channels``: a comma-separated, non-empty subset of the recall channels."""
    names = [c.strip() for c in value.split(",")]
    bad = [c for c in names if c not in RECALL_CHANNELS]
    if bad or not names:
        raise typer.BadParameter(f"must be a comma-separated list of {', '.join(RECALL_CHANNELS)}, not "
                                 f"{value[:40]!r}")
    if len(set(names)) != len(names):
        raise typer.BadParameter(f"names a channel twice: {value[:40]!r}")
    return value


@app.command("train-recall")
def train_recall(
    samples: Annotated[Path, typer.Option(
        "--samples", callback=existing_folder,
        help="Parquet samples folder from `deepcrossing prepare` with the time split.")],
    out_dir: Annotated[Path, typer.Option(
        "--out", callback=not_a_file,
        help="Recall folder to write: new, empty or a previous recall folder (replaced when complete).")]
        = Path("recall"),
    channels: Annotated[str, typer.Option(
        "--channels", callback=recall_channels, help="Recall models to train: two_tower, item2vec.")]
        = "two_tower,item2vec",
    model_dir: Annotated[Path | None, typer.Option(
        "--model", callback=existing_folder,
        help="Deep Crossing model folder the service ranks with: the merge is the best on validation "
             "Recall@100 among those whose end-to-end NDCG@10 (800 ranked by it) is not below popularity-800's.")]
        = None,
    epochs: Annotated[int, typer.Option(min=1, max=1000, help="Two-tower: at most so many epochs.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of both models (initialization, shuffling, word2vec).")] = 0,
    threads: Annotated[int, typer.Option(min=0, max=256, help="Intra-op threads (0 = one per core).")] = 1,
    overwrite: Annotated[bool, typer.Option(
        help="Write into a folder of other files; they are kept (a file of the same name is never replaced).")]
        = False,
) -> None:
    """Train the recall models (two-tower: early stopping on validation Recall@100; item2vec: gensim
    skip-gram over each user's positives), choose their merge on validation, write the recall folder."""
    import json
    import time

    from deepcrossing.hashing import file_sha256
    from deepcrossing.outputs import reserve
    from deepcrossing.training.item2vec import Item2VecConfig
    from deepcrossing.training.recall_model import RECALL_OUTPUT, load_recall, save_recall
    from deepcrossing.training.recall_model import train_recall as fit
    from deepcrossing.training.two_tower import TwoTowerTrainConfig

    assert samples is not None  # required option
    from deepcrossing.training.artifact import load

    ranking = load(model_dir) if model_dir is not None else None
    names = tuple(c.strip() for c in channels.split(","))
    inputs = [samples / f"{s}.parquet" for s in ("train", "valid", "test", "items")] + [samples / "manifest.json"]
    with reserve(out_dir, RECALL_OUTPUT, inputs=inputs, overwrite=overwrite) as reservation:
        seed_everything(seed)
        set_threads(threads)
        started = time.perf_counter()

        def on_epoch(row: dict[str, Any]) -> None:
            console.print(f"two_tower epoch {row['epoch']}: loss {row['loss']:.4f}, valid Recall@100 "
                          f"{row['valid_recall']:.4f} ({row['seconds']:.1f} s)", highlight=False)

        models, merge, metrics = fit(samples, names, two_tower=TwoTowerTrainConfig(epochs=epochs, seed=seed),
                                     item2vec=Item2VecConfig(seed=seed), on_epoch=on_epoch,
                                     model=ranking)
        metrics["seconds"] = round(time.perf_counter() - started, 2)
        with reservation.write() as tmp:
            save_recall(tmp, models, merge=merge, metrics=metrics,
                        samples={"path": str(samples), "manifest_sha256": file_sha256(samples / "manifest.json")})
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
            load_recall(tmp)                           # verified before it is swapped in
    for name, value in metrics["valid_recall"].items():
        console.print(f"{name}: valid Recall@{merge['k']} {value:.4f}", highlight=False)
    weights = ", ".join(f"{k} {v:g}" for k, v in merge["weights"].items())
    if merge.get("head_weights"):
        weights += f"; the first {merge['k']} by " + ", ".join(f"{k} {v:g}" for k, v in merge["head_weights"].items())
    half = merge.get("trending_half_life_days")
    weights += f"; trending: the last {merge['trending_days']} days" + (f", half-life {half:g} days" if half else "")
    chosen = " with end-to-end NDCG@10 >= popularity-800's" if "valid_ndcg@10" in merge else ""
    console.print(f"merge (chosen on valid Recall@{merge['k']}{chosen}: {merge['valid_recall']:.4f}): {weights}",
                  highlight=False)
    if "valid_ndcg@10" in merge:
        console.print(f"end to end (valid NDCG@10 through {model_dir}): merged {merge['valid_ndcg@10']:.4f}, "
                      f"popularity-800 {merge['valid_ndcg@10_popularity']:.4f}", highlight=False)
    fusion = merge["fusion"]
    fused = ", ".join(f"{k} {v:g}" for k, v in fusion["weights"].items() if v > 0)
    cold = ", ".join(f"{k} {v:g}" for k, v in fusion["cold_weights"].items() if v > 0)
    console.print(f"score fusion (valid Recall@{merge['k']} {merge['fusion_valid_recall']:.4f}"
                  + (f", NDCG@10 {merge['fusion_valid_ndcg@10']:.4f}" if "fusion_valid_ndcg@10" in merge else "")
                  + f"): warm {fused}; cold {cold}; k {fusion['k']:g}"
                  + (f"; the first {fusion['head']} fused, the rest by the quotas" if fusion["head"] else ""),
                  highlight=False)
    console.print(f"merge rule (better on valid Recall@{merge['k']}): {merge['rule']} (quota "
                  f"{merge['quota_valid_recall']:.4f}, fusion {merge['fusion_valid_recall']:.4f})", highlight=False)
    console.print(f"wrote {out_dir} in {metrics['seconds']:.1f} s", highlight=False)
