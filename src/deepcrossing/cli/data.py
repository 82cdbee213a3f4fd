"""`deepcrossing data ...`: download MovieLens, generate synthetic logs, describe a log."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deepcrossing.cli.common import console, data_app, out


@data_app.command("download")
def data_download(
    name: Annotated[str, typer.Argument(
        help="ml-latest-small, ml-latest, ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-32m")],
    cache: Annotated[Path | None, typer.Option(help="cache folder [default: $DEEPCROSSING_HOME/datasets or "
                                                       "~/.cache/deepcrossing/datasets]")] = None,
    base_url: Annotated[str, typer.Option(help="where <name>.zip and <name>.zip.md5 live")] =
        "https://files.grouplens.org/datasets/movielens",
    force: Annotated[bool, typer.Option(help="download again even when cached")] = False,
) -> None:
    """Download a GroupLens MovieLens zip (MD5-verified) and extract it into the cache."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from deepcrossing.data.download import download

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(f"{name}.zip", total=None)
        folder = download(name, cache=cache, base_url=base_url, force=force,
                          progress=lambda done, total: bar.update(task, completed=done, total=total))
    out.print(f"{name}: {folder}")


@data_app.command("synth")
def data_synth(
    ratings: Annotated[int, typer.Option("--ratings", min=1000, help="number of ratings (10k .. 20M+)")] = 100_000,
    out_dir: Annotated[Path, typer.Option(
        "--out", help="output folder: new, empty or a previous synthetic folder (replaced atomically)")]
        = Path("synthetic"),
    seed: Annotated[int, typer.Option(help="random seed; same seed and size give the same files")] = 0,
    overwrite: Annotated[bool, typer.Option(
        help="write into a folder of other files; they are kept (a file of the same name is never replaced)")]
        = False,
) -> None:
    """Generate synthetic MovieLens-format ratings.csv + movies.csv with learnable structure."""
    import time

    from deepcrossing.data.synth import generate

    start = time.perf_counter()
    with console.status(f"generating {ratings:,} ratings"):
        folder = generate(ratings, out_dir, seed=seed, overwrite=overwrite)
    out.print(f"wrote {ratings:,} ratings to {folder} in {time.perf_counter() - start:.1f} s")


@data_app.command("info")
def data_info(
    path: Annotated[Path, typer.Argument(help="a MovieLens folder or your own CSV/Parquet log")],
    user_col: Annotated[str | None, typer.Option(help="your logs: user id column")] = None,
    item_col: Annotated[str | None, typer.Option(help="your logs: item id column")] = None,
    rating_col: Annotated[str | None, typer.Option(help="your logs: rating column")] = None,
    label_col: Annotated[str | None, typer.Option(help="your logs: 0/1 label column")] = None,
    time_col: Annotated[str | None, typer.Option(help="your logs: time column (unix s or ISO)")] = None,
    items: Annotated[Path | None, typer.Option(exists=True, dir_okay=False,
                                                     help="your logs: items file (CSV/Parquet)")] = None,
    skip_bad_rows: Annotated[bool, typer.Option(help="skip and count bad rows instead of failing")] = False,
) -> None:
    """Detect the layout, validate, and print counts, time range and rating distribution."""
    import tempfile

    from deepcrossing.data.info import describe
    from deepcrossing.data.readers import ColumnMapping, load_dataset

    mapping = None
    if any(c is not None for c in (user_col, item_col, rating_col, label_col, time_col)):
        mapping = ColumnMapping(user_col=user_col or "", item_col=item_col or "", time_col=time_col or "",
                                rating_col=rating_col, label_col=label_col)
    with tempfile.TemporaryDirectory(prefix="deepcrossing-info-") as work:
        ds = load_dataset(path, workdir=work, columns=mapping, items_path=items, skip_bad_rows=skip_bad_rows)
        out.print(describe(ds))
