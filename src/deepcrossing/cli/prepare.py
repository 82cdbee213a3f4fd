"""`deepcrossing prepare`: raw logs -> leakage-free samples."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deepcrossing.cli.common import FEATURE_CONFIG, app, checked_by, console, one_of, out, parse_fractions
from deepcrossing.errors import DeepCrossingError


@app.command("prepare")
def prepare_cmd(
    data: Annotated[Path, typer.Option("--data", help="MovieLens folder (any release) or your own log file/folder.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder: new, empty or a previous samples folder "
                                                       "(replaced as a whole at the end).")],
    fmt: Annotated[str, typer.Option(
        "--format", callback=one_of(source="deepcrossing.features.samples:FORMATS"),
        help="parquet (our schema) or sparrow (SparrowRecSys CSV).")] = "parquet",
    label_threshold: Annotated[float, typer.Option(
        callback=checked_by(FEATURE_CONFIG, "label_threshold"), help="rating >= this is a positive.")] = 3.5,
    recent_n: Annotated[int, typer.Option(
        callback=checked_by(FEATURE_CONFIG, "recent_n"),
        help="N of userRecentPositives (last N positive movies).")] = 10,
    split: Annotated[str, typer.Option(
        callback=checked_by(FEATURE_CONFIG, "split"),
        help="time (global timestamp quantiles) or random (seeded).")] = "time",
    fractions: Annotated[str, typer.Option(
        callback=checked_by(FEATURE_CONFIG, "fractions", parse_fractions),
        help="train,valid,test shares.")] = "0.8,0.1,0.1",
    seed: Annotated[int, typer.Option(help="Seed of the random split.")] = 0,
    itemcf: Annotated[bool, typer.Option(
        help="Compute userItemCFScore (item-CF score of the movie against the user's last ratings; costs more "
             "time; off: the column is NULL).")] = False,
    movie_bayes: Annotated[bool, typer.Option(
        help="Compute movieBayesAvgRating (the movie mean shrunk toward the global mean; off: NULL).")] = False,
    skip_bad_rows: Annotated[bool, typer.Option(help="Skip and count bad input rows instead of failing.")] = False,
    user_col: Annotated[str | None, typer.Option(help="Your log: user id column.")] = None,
    item_col: Annotated[str | None, typer.Option(help="Your log: item id column.")] = None,
    rating_col: Annotated[str | None, typer.Option(help="Your log: rating column.")] = None,
    label_col: Annotated[str | None, typer.Option(help="Your log: explicit 0/1 label column.")] = None,
    time_col: Annotated[str | None, typer.Option(help="Your log: time column (unix seconds or ISO).")] = None,
    items: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="Your log: items file (id, title, genres, year).")] = None,
    users: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="A users file (user id + any of gender, age, occupation, zip; static, as "
                                          "of the export) for a log without one: adds the user attribute columns; "
                                          "publish with the same --users.")] = None,
    overwrite: Annotated[bool, typer.Option(
        help="Write into a folder of other files; they are kept (a file of the same name is never replaced).")]
        = False,
    engine: Annotated[str, typer.Option(
        "--engine", callback=one_of(source="deepcrossing.features.samples:ENGINES"),
        help="SQL engine of the features: duckdb (one machine) or spark (pyspark; same samples).")] = "duckdb",
    spark_master: Annotated[str, typer.Option(
        help="--engine spark: the Spark master (local[*], spark://host:7077, yarn, k8s://...).")] = "local[*]",
    spark_conf: Annotated[list[str] | None, typer.Option(
        "--spark-conf", help="--engine spark: any Spark setting as key=value (repeatable).")] = None,
    spark_driver_memory: Annotated[str | None, typer.Option(
        help="--engine spark: spark.driver.memory, e.g. 4g (when this command starts Spark).")] = None,
) -> None:
    """Rating logs -> leakage-free train/valid/test samples + items.parquet + manifest.json."""
    import time

    from deepcrossing.data import ColumnMapping, load_dataset
    from deepcrossing.features import FeatureConfig, build_samples
    from deepcrossing.features.samples import SAMPLES_OUTPUT
    from deepcrossing.outputs import reserve

    started = time.perf_counter()
    spark = None
    if engine == "spark":  # a bad setting or a missing Java / pyspark stops here, before any work
        from deepcrossing.features.spark import SparkOptions, require_spark

        spark = SparkOptions(master=spark_master, conf=SparkOptions.parse_conf(spark_conf or []),
                             driver_memory=spark_driver_memory)
        require_spark()
    try:
        shares = tuple(float(x) for x in fractions.split(","))
    except ValueError:
        raise DeepCrossingError(f"--fractions must be three numbers like 0.8,0.1,0.1, not {fractions!r}") from None
    config = FeatureConfig(label_threshold=label_threshold, recent_n=recent_n, split=split,
                           fractions=shares, seed=seed, itemcf=itemcf,  # type: ignore[arg-type]
                           movie_bayes=movie_bayes)
    columns = None
    if any(v is not None for v in (user_col, item_col, rating_col, label_col, time_col)):
        missing = [name for name, v in (("--user-col", user_col), ("--item-col", item_col),
                                        ("--time-col", time_col)) if v is None]
        if missing or (rating_col is None and label_col is None):
            raise DeepCrossingError("your own log needs --user-col, --item-col, --time-col and --rating-col "
                                    f"or --label-col (missing: {', '.join(missing) or '--rating-col/--label-col'})")
        columns = ColumnMapping(user_col=user_col, item_col=item_col, time_col=time_col,  # type: ignore[arg-type]
                                rating_col=rating_col, label_col=label_col)
    inputs = [data, *(p for p in (items, users) if p is not None)]
    with reserve(out_dir, SAMPLES_OUTPUT, inputs=inputs, overwrite=overwrite) as target, target.scratch() as work:
        dataset = load_dataset(data, workdir=work, columns=columns, items_path=items, skip_bad_rows=skip_bad_rows,
                               users_path=users)
        loaded = time.perf_counter() - started
        manifest = build_samples(dataset, config, target, fmt=fmt, spark=spark)
    def say(text: str) -> None:
        out.print(text, soft_wrap=True, highlight=False)

    for name, count in dataset.skipped_rows.items():
        if count:
            console.print(f"skipped {count} bad rows in {name}")
    say(f"read {manifest['dataset']['ratings']:,} ratings of {dataset.name} from {data} "
              f"({loaded:.1f} s)")
    split_info = manifest["split"]
    if config.split == "time":
        say(f"time split: valid from {split_info['valid_start_iso']}, test from {split_info['test_start_iso']}")
    for name in ("train", "valid", "test"):
        info = manifest["splits"][name]
        rate = "-" if info["positive_rate"] is None else f"{info['positive_rate']:.3f}"
        say(f"  {name:<5} {info['rows']:>11,} rows  positive rate {rate}  -> "
                  f"{out_dir / manifest['files'][name]}")
    unseen = manifest["unseen_users"]["test_users_not_in_train_share"]
    if unseen is not None:
        say(f"test users never seen in train: {unseen:.1%} (their features come from earlier ratings)")
    say(f"wrote {out_dir} (manifest.json, items.parquet) with {manifest['engine']['name']} "
        f"in {time.perf_counter() - started:.1f} s")
