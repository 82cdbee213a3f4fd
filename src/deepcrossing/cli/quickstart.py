"""`deepcrossing quickstart`: every stage end to end on the default data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deepcrossing.cli.common import TRAIN_CONFIG, app, checked_by, out
from deepcrossing.cli.prepare import prepare_cmd
from deepcrossing.cli.serve import publish_cmd, recommend_cmd
from deepcrossing.cli.train import evaluate, train


def _quickstart_users(samples_dir: Path) -> list[int]:
    """Three users worth looking at: the busiest of the test period, a light user, and one never seen (cold start)."""
    import duckdb

    con = duckdb.connect()
    test = str(samples_dir / "test.parquet")
    rows = con.execute(
        f"SELECT userId, count(*) AS n FROM read_parquet('{test}') GROUP BY userId ORDER BY n DESC, userId"
    ).fetchall()
    row = con.execute(
        f"SELECT max(userId) + 1 FROM read_parquet('{samples_dir}/*.parquet', union_by_name = true) "
        "WHERE userId IS NOT NULL").fetchone()
    unknown = 1 if row is None or row[0] is None else row[0]
    con.close()
    if not rows:
        return [int(unknown)]
    return [int(rows[0][0]), int(rows[len(rows) // 2][0]), int(unknown)]


@app.command()
def quickstart(
    data: Annotated[Path | None, typer.Option(
        "--data", help="Rating logs to use (MovieLens folder of any release, or your own log with prepare's "
                       "options). Default: a downloaded MovieLens from the cache, else synthetic data.")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Where everything goes.")] = Path("runs/quickstart"),
    ratings: Annotated[int, typer.Option(min=1000, help="Size of the synthetic default data.")] = 300_000,
    epochs: Annotated[int | None, typer.Option(
        callback=checked_by(TRAIN_CONFIG, "epochs"), help="Override the spec's epochs (default: the spec's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic data and of training.")] = 0,
    overwrite: Annotated[bool, typer.Option(
        help="Write OUT/data, OUT/samples and OUT/model into folders of other files; those files are kept.")]
        = False,
) -> None:
    """Run the whole pipeline offline: data -> prepare -> train -> evaluate -> publish -> top 10 for three users."""
    import time

    from deepcrossing.data.download import find_cached_movielens
    from deepcrossing.data.synth import SYNTH_OUTPUT, generate
    from deepcrossing.features.samples import SAMPLES_OUTPUT
    from deepcrossing.outputs import check_output_dir
    from deepcrossing.training.artifact import MODEL_OUTPUT

    started = time.perf_counter()

    def stage(text: str) -> None:
        out.rule(f"[bold]{text}", align="left")

    samples, model = out_dir / "samples", out_dir / "model"
    for folder, kind in ((samples, SAMPLES_OUTPUT), (model, MODEL_OUTPUT)):  # refuse before any work
        check_output_dir(folder, kind, inputs=[] if data is None else [data], overwrite=overwrite)
    stage("1/6 data")
    if data is None:
        data = find_cached_movielens()
        if data is not None:
            out.print(f"using MovieLens found in the cache: {data}", highlight=False)
    if data is None:
        data = out_dir / "data"
        made = SYNTH_OUTPUT.read_marker(data) or {}
        if made.get("n_ratings") == ratings and made.get("seed") == seed:
            out.print(f"using the synthetic data already in {data}", highlight=False)
        else:
            out.print(f"no --data and no downloaded MovieLens: generating {ratings:,} synthetic ratings "
                      f"(`deepcrossing data download ml-latest-small` gets real data where the network allows)",
                      highlight=False, soft_wrap=True)
            generate(ratings, data, seed=seed, overwrite=overwrite)

    stage("2/6 prepare: point-in-time features, time split")
    prepare_cmd(data=data, out_dir=samples, overwrite=overwrite)
    stage("3/6 train")
    train(samples=samples, out_dir=model, epochs=epochs, seed=seed, overwrite=overwrite)
    stage("4/6 evaluate on the test period")
    evaluate(model=model, samples=samples)
    stage("5/6 publish features to the online store")
    publish_cmd(model=model, data=data, store=None)
    stage("6/6 top 10 for three users")
    for user in _quickstart_users(samples):
        recommend_cmd(model=model, user=user, k=10)
    out.rule()
    out.print(f"done in {time.perf_counter() - started:.0f} s. Everything is under {out_dir}/:\n"
              f"  data    {data}\n  samples {samples}  (train/valid/test.parquet, manifest.json)\n"
              f"  model   {model}  (model.safetensors, manifest.json, metrics, curves.png, roc.png)\n"
              f"Serve it (web page at http://127.0.0.1:8000/ui/):\n"
              f"  deepcrossing serve --model {model}", highlight=False, soft_wrap=True)
