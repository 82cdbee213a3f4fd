"""DuckDB and Spark build the same samples: same files, schema, split of every row and every value.

Both engines run on (a) a hand-made log with the traps (same-second ties, several positives in one second,
movies with 0/1/2/3+ genres and a genre with a quote, a NULL year, a movie missing from the items file,
explicit labels, a users table without users 5 and 6, a blank zip and a NULL age) and (b) 100 users of
ml-latest-small; the rows, sorted by (timestamp, userId, movieId), must be equal: integers, strings, lists and
maps exactly, floats to 1e-9 relative.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from deepcrossing.data.schema import Dataset
from deepcrossing.features import FeatureConfig, build_samples, read_samples
from deepcrossing.features.samples import SPLIT_NAMES
from deepcrossing.features.spark import SparkOptions

from .conftest import with_users, write_dataset

pytestmark = pytest.mark.slow
SORT = [("timestamp", "ascending"), ("userId", "ascending"), ("movieId", "ascending")]
ITEMS = [(1, 1995, []), (2, 2000, ["Action"]), (3, None, ["Comedy", "Drama"]),
         (4, 1980, ["Drama", "War", "Children's"]), (5, 2010, ["Action", "Comedy", "Drama", "Sci-Fi"]),
         (6, 1999, ["Sci-Fi", "Drama", "Action", "War", "Film-Noir"]), (7, 1950, ["Comedy"]), (8, None, [])]
USERS = [(1, "M", 25, "12", "48067"), (2, "F", None, "writer", " "), (3, "M", 1, "O'Brien's", "T8H1N"),
         (4, "F", 56, "0", "55"), (7, "M", 18, "x", "99999")]   # 5 and 6 rated without a row; 7 has no rating


def _hand_made(folder: Path) -> Dataset:
    """A seeded log over 6 users and 9 movies (movie 9 is not in the items file) in 40 distinct seconds, so
    most seconds hold several ratings of one user, several of them positive; a third of the rows carry an
    explicit 0/1 label (and some of those no rating)."""
    rng = random.Random(11)
    seen, rows = set(), []
    while len(rows) < 260:
        key = (rng.randint(1, 6), rng.randint(1, 9), 1_000 + 7 * rng.randint(0, 39))
        if key not in seen:
            seen.add(key)
            rows.append((*key[:2], rng.choice([0.5, 2.0, 3.0, 3.5, 4.0, 5.0]), key[2]))
    ds = write_dataset(folder, rows, ITEMS)
    table = pq.read_table(ds.ratings)
    labels = [rng.choice([0, 1]) if i % 3 == 0 else None for i in range(len(rows))]
    ratings = [None if i % 6 == 0 else r[2] for i, r in enumerate(rows)]
    table = table.set_column(2, "rating", pa.array(ratings, pa.float64()))
    table = table.set_column(3, "label", pa.array(labels, pa.int8()))
    pq.write_table(table, ds.ratings)
    return ds


def _user_slice(dataset: Dataset, folder: Path, users: int) -> Dataset:
    folder.mkdir(parents=True, exist_ok=True)
    ratings = pq.read_table(dataset.ratings)
    pq.write_table(ratings.filter(pc.less_equal(ratings.column("user_id"), users)), folder / "ratings.parquet")
    pq.write_table(pq.read_table(dataset.items), folder / "items.parquet")
    return Dataset(name="ml-latest-small-slice", ratings=folder / "ratings.parquet", items=folder / "items.parquet",
                   sources=dict(dataset.sources))


def _assert_same_column(name: str, a: pa.ChunkedArray, b: pa.ChunkedArray) -> None:
    left, right = a.to_pylist(), b.to_pylist()
    if pa.types.is_floating(a.type):
        bad = [i for i, (x, y) in enumerate(zip(left, right, strict=True))
               if not ((x is None and y is None) or (x is not None and y is not None
                                                     and math.isclose(x, y, rel_tol=1e-9, abs_tol=0.0)))]
    else:
        bad = [i for i, (x, y) in enumerate(zip(left, right, strict=True)) if x != y]
    assert not bad, (f"{name}: {len(bad)} rows differ, first at {bad[0]}: "
                     f"duckdb {left[bad[0]]!r} spark {right[bad[0]]!r}")


def _assert_same_samples(duck: Path, spark: Path) -> dict[str, int]:
    rows = {}
    for split in SPLIT_NAMES:
        a = pq.read_table(duck / f"{split}.parquet").sort_by(SORT)
        b = pq.read_table(spark / f"{split}.parquet").sort_by(SORT)
        assert a.schema.equals(b.schema), (split, a.schema, b.schema)
        assert a.num_rows == b.num_rows, split  # the same rows in each split: the split assignment agrees
        for name in a.column_names:
            _assert_same_column(f"{split}.{name}", a.column(name), b.column(name))
        rows[split] = a.num_rows
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (duck, spark))
    for key in ("format_version", "kind", "format", "files", "dataset", "config", "split", "splits", "unseen_users",
                "features", "genres"):
        assert ma[key] == mb[key], key
    assert (ma["engine"]["name"], mb["engine"]["name"]) == ("duckdb", "spark")
    assert (duck / "items.parquet").read_bytes() == (spark / "items.parquet").read_bytes()
    return rows


def _both(dataset: Dataset, config: FeatureConfig, out: Path, fmt: str = "parquet") -> tuple[Path, Path]:
    build_samples(dataset, config, out / "duckdb", fmt)
    build_samples(dataset, config, out / "spark", fmt, spark=SparkOptions(master="local[2]"))
    return out / "duckdb", out / "spark"


def test_hand_made_log_same_samples_and_random_split(spark_session: Any, tmp_path: Path) -> None:
    ds = with_users(_hand_made(tmp_path / "data"), USERS)
    config = FeatureConfig(split="random", fractions=(0.6, 0.2, 0.2), seed=5, recent_n=5, itemcf=True,
                           itemcf_window=3, itemcf_history=4, movie_bayes=True, movie_prior_weight=2.5)
    duck, spark = _both(ds, config, tmp_path)
    rows = _assert_same_samples(duck, spark)
    assert sum(rows.values()) == 260 and min(rows.values()) > 20  # every split has rows to compare
    # the traps are really in the data: short genre lists, NULL years, explicit labels, same-second positives
    table = pa.concat_tables([pq.read_table(duck / f"{s}.parquet") for s in SPLIT_NAMES])
    lengths = set(pc.list_value_length(table.column("movieGenres")).to_pylist())
    assert {0, 1, 2, 3, 4, 5} <= lengths
    assert table.column("releaseYear").null_count > 0 and table.column("rating").null_count > 0
    assert "Children's" in json.loads((duck / "manifest.json").read_text())["genres"]
    per_second = table.filter(pc.equal(table.column("label"), 1)).group_by(["userId", "timestamp"]).aggregate(
        [("movieId", "count")])
    assert max(per_second.column("movieId_count").to_pylist()) >= 2
    # the user attributes: a row's values, NULLs for users 5 and 6 (no row), a blank zip NULL, a quote kept
    attrs = {r["userId"]: (r["userGender"], r["userAge"], r["userOccupation"], r["userZipPrefix"])
             for r in table.select(["userId", "userGender", "userAge", "userOccupation", "userZipPrefix"]).to_pylist()}
    assert attrs == {1: ("M", 25, "12", "480"), 2: ("F", None, "writer", None), 3: ("M", 1, "O'Brien's", "T8H"),
                     4: ("F", 56, "0", "55"), 5: (None,) * 4, 6: (None,) * 4}


def test_hand_made_log_same_sparrow_csv(spark_session: Any, tmp_path: Path) -> None:
    duck, spark = _both(_hand_made(tmp_path / "data"), FeatureConfig(), tmp_path, fmt="sparrow")
    for split in SPLIT_NAMES:
        assert (duck / f"{split}.csv").read_bytes() == (spark / f"{split}.csv").read_bytes(), split


def test_ml_latest_small_slice_same_samples(spark_session: Any, ml_small_dataset: Dataset, tmp_path: Path) -> None:
    ds = _user_slice(ml_small_dataset, tmp_path / "data", users=100)
    config = FeatureConfig(itemcf=True, movie_bayes=True)
    duck, spark = _both(ds, config, tmp_path)
    rows = _assert_same_samples(duck, spark)
    assert sum(rows.values()) == pq.read_metadata(ds.ratings).num_rows > 10_000
    # a Spark-made folder is an ordinary samples folder: read_samples and publish's config lookup read it
    manifest = json.loads((spark / "manifest.json").read_text())
    assert FeatureConfig.from_dict(manifest["config"]) == config
    assert read_samples(spark / "valid.parquet").num_rows == rows["valid"]


def test_failed_spark_job_leaves_no_samples_folder(spark_session: Any, tmp_path: Path) -> None:
    ds = write_dataset(tmp_path / "data", [(1, 1, 4.0, 10), (2, 2, 3.0, 20)], ITEMS)
    table = pq.read_table(ds.ratings)
    table = table.set_column(0, "user_id", pa.array(["1", "not a number"], pa.string()))
    pq.write_table(table, ds.ratings)  # Spark's ANSI cast to BIGINT fails inside the job
    out = tmp_path / "samples"
    with pytest.raises(Exception, match="(?i)cast|not a number"):
        build_samples(ds, FeatureConfig(), out, spark=SparkOptions(master="local[2]"))
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".samples")] == []
