"""Fixtures for the Feature layer: normalized Datasets built from real CSVs or from small in-memory logs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deepcrossing.data.schema import Dataset


def write_dataset(folder: Path, ratings: list[tuple], items: list[tuple], name: str = "tiny") -> Dataset:
    """Write normalized ratings (user, item, rating, timestamp) and items (item, year, genres) Parquet files."""
    folder.mkdir(parents=True, exist_ok=True)
    r = pa.table({
        "user_id": pa.array([x[0] for x in ratings], pa.int64()),
        "item_id": pa.array([x[1] for x in ratings], pa.int64()),
        "rating": pa.array([x[2] for x in ratings], pa.float64()),
        "label": pa.array([None] * len(ratings), pa.int8()),
        "timestamp": pa.array([x[3] for x in ratings], pa.int64()),
    })
    i = pa.table({
        "item_id": pa.array([x[0] for x in items], pa.int64()),
        "title": pa.array([f"Movie {x[0]}" for x in items], pa.string()),
        "year": pa.array([x[1] for x in items], pa.int32()),
        "genres": pa.array([x[2] for x in items], pa.list_(pa.string())),
    })
    pq.write_table(r, folder / "ratings.parquet")
    pq.write_table(i, folder / "items.parquet")
    return Dataset(name=name, ratings=folder / "ratings.parquet", items=folder / "items.parquet",
                   sources={"ratings.csv": "0" * 64})


def with_users(dataset: Dataset, users: list[tuple]) -> Dataset:
    """``dataset`` with a normalized users table (user_id, gender, age, occupation, zip) beside its ratings."""
    import dataclasses

    path = Path(dataset.ratings).parent / "users.parquet"
    pq.write_table(pa.table({
        "user_id": pa.array([u[0] for u in users], pa.int64()),
        "gender": pa.array([u[1] for u in users], pa.string()),
        "age": pa.array([u[2] for u in users], pa.int32()),
        "occupation": pa.array([u[3] for u in users], pa.string()),
        "zip": pa.array([u[4] for u in users], pa.string()),
    }), path)
    return dataclasses.replace(dataset, users=path)


def normalize_movielens_csv(src: Path, workdir: Path) -> Dataset:
    """Normalize a MovieLens CSV release with DuckDB (a stand-in that matches data/schema.py)."""
    try:  # prefer the real reader once it exists
        from deepcrossing.data import load_dataset  # type: ignore[attr-defined]

        return load_dataset(src, workdir=workdir)
    except ImportError:
        pass
    workdir.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute(f"""COPY (SELECT CAST(userId AS BIGINT) AS user_id, CAST(movieId AS BIGINT) AS item_id,
        CAST(rating AS DOUBLE) AS rating, CAST(NULL AS TINYINT) AS label, CAST(timestamp AS BIGINT) AS timestamp
        FROM read_csv('{src / "ratings.csv"}', header=true)) TO '{workdir / "ratings.parquet"}' (FORMAT parquet)""")
    con.execute(f"""COPY (SELECT CAST(movieId AS BIGINT) AS item_id, title,
        CAST(NULLIF(regexp_extract(trim(title), '\\((\\d{{4}})\\)$', 1), '') AS INTEGER) AS year,
        CASE WHEN genres = '(no genres listed)' THEN CAST([] AS VARCHAR[]) ELSE string_split(genres, '|') END
          AS genres
        FROM read_csv('{src / "movies.csv"}', header=true, quote='"')) TO '{workdir / "items.parquet"}'
        (FORMAT parquet)""")
    con.close()
    return Dataset(name="ml-latest-small", ratings=workdir / "ratings.parquet", items=workdir / "items.parquet",
                   sources={"ratings.csv": "unknown"})


@pytest.fixture(scope="session")
def ml_small_dataset(ml_small_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return normalize_movielens_csv(ml_small_dir, tmp_path_factory.mktemp("ml_small_norm"))


@pytest.fixture(scope="session")
def ml_small_samples(ml_small_dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from deepcrossing.features import FeatureConfig, build_samples

    out = tmp_path_factory.mktemp("ml_small_samples") / "samples"
    return out, build_samples(ml_small_dataset, FeatureConfig(), out)


IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def spark_missing() -> str | None:
    """Why Spark cannot run here (no pyspark, no Java), or None."""
    from deepcrossing.errors import DeepCrossingError
    from deepcrossing.features.spark import require_spark

    try:
        require_spark()
    except DeepCrossingError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="session")
def spark_session() -> Iterator[Any]:
    """One local[2] SparkSession for every Spark test (UI off, 2 shuffle partitions, UTC), stopped at the end.

    Without pyspark or Java the Spark tests skip on a developer's machine and FAIL under CI (a skipped
    Spark test would hide a broken CI setup: .ci/run installs both).
    """
    reason = spark_missing()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"Spark tests cannot run under CI: {reason}")
        pytest.skip(f"Spark tests skipped: {reason}")
    from pyspark.sql import SparkSession

    from deepcrossing.features.spark import SparkOptions

    builder = SparkSession.builder.master("local[2]").appName("deepcrossing-tests")
    settings = SparkOptions(master="local[2]", conf=(("spark.sql.shuffle.partitions", "2"),),
                            driver_memory="1g").settings()
    for key, value in settings.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
