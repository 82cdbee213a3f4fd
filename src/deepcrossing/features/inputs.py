"""The Feature layer's inputs: the SQL engine of a run and the normalized files as checked views.

Shared by the offline samples (:mod:`deepcrossing.features.samples`), on either engine, and the online records
(:mod:`deepcrossing.features.online`, DuckDB), so all of them read the same relations the same way:

* ``ratings_src(user_id BIGINT, item_id BIGINT, rating DOUBLE, label TINYINT, timestamp BIGINT)``
* ``items_src(item_id BIGINT, year INTEGER, genres VARCHAR[])``
* ``users_src(user_id BIGINT, gender VARCHAR, age INTEGER, occupation VARCHAR, zip VARCHAR)``, only when the
  dataset has a users table (``Dataset.users``: ml-100k, ml-1m); the user attribute columns read it

An engine is anything with a :class:`~deepcrossing.features.dialect.Dialect` that runs statements and returns
rows (:class:`SqlEngine`): :class:`DuckEngine` here, ``SparkEngine`` in :mod:`deepcrossing.features.spark`.

Example:
    >>> from deepcrossing.features.config import FeatureConfig
    >>> with connect(FeatureConfig(threads=1)) as con:
    ...     DuckEngine(con).rows("SELECT 1")[0][0]
    1
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from deepcrossing.data.schema import Dataset
from deepcrossing.duck import connection, sql_str
from deepcrossing.errors import InputError
from deepcrossing.features.config import FeatureConfig
from deepcrossing.features.dialect import DUCKDB, Dialect
from deepcrossing.features.sql import genre_bits

BATCH_ROWS = 1 << 17
"""Rows per Arrow batch streamed out of an engine."""


class SqlEngine(Protocol):
    """What the Feature layer needs from an SQL engine (DuckDB, Spark)."""

    @property
    def dialect(self) -> Dialect: ...

    def execute(self, sql: str) -> None:
        """Run a statement (e.g. a ``CREATE VIEW``)."""

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """All rows of a (small) query as tuples."""

    def parquet_view(self, name: str, path: Path) -> None:
        """Define view ``name`` over a Parquet file."""

    def batches(self, sql: str, scratch: Path, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        """Stream the rows of a (large) query as Arrow batches with the types of ``schema`` (DuckDB's types,
        the definition; DuckDB's own batches have them already); ``scratch`` is an empty folder it may use."""

    def describe(self) -> dict[str, str]:
        """The engine's name and version (and where it ran) for the samples manifest."""


@dataclass(frozen=True)
class DuckEngine:
    """:class:`SqlEngine` over one DuckDB connection."""

    con: duckdb.DuckDBPyConnection

    @property
    def dialect(self) -> Dialect:
        return DUCKDB

    def execute(self, sql: str) -> None:
        self.con.execute(sql)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        # read to the end, so the connection has no unfinished result (a later con.sql would refuse to run)
        return [tuple(r) for r in self.con.execute(sql).fetchall()]

    def parquet_view(self, name: str, path: Path) -> None:
        self.con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet({sql_str(path)})")

    def batches(self, sql: str, scratch: Path, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        yield from self.con.sql(sql).to_arrow_reader(BATCH_ROWS)

    def describe(self) -> dict[str, str]:
        return {"name": "duckdb", "version": duckdb.__version__}


def connect(config: FeatureConfig) -> contextlib.AbstractContextManager[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB with the config's threads/memory that spills to a private temp folder."""
    return connection(threads=int(config.threads), memory_limit=config.memory_limit, preserve_order=False)


_NEEDED = {"ratings": ("user_id", "item_id", "rating", "label", "timestamp"), "items": ("item_id", "year", "genres")}


def check_inputs(dataset: Dataset) -> None:
    """The normalized files exist and have the columns the feature SQL reads (no engine needed).

    Raises:
        InputError: naming the file (and the column) when a file or a column is missing.
    """
    for kind, columns in _NEEDED.items():
        path = Path(getattr(dataset, kind))
        if not path.is_file():
            raise InputError("normalized file is missing; load the data again with load_dataset", path=path)
        try:
            have = set(pq.read_schema(path).names)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"not a Parquet file ({exc}); load the data again with load_dataset",
                             path=path) from None
        for column in columns:
            if column not in have:
                raise InputError(f"column {column!r} is missing (have: {', '.join(sorted(have))})",
                                 path=path, field=column)


def register_inputs(engine: SqlEngine | duckdb.DuckDBPyConnection, dataset: Dataset) -> int:
    """Create the views ``ratings_src`` / ``items_src`` (and ``users_src`` when ``dataset.users`` is set; files
    and columns checked); return the rating count.

    Args:
        engine: the run's engine (a bare DuckDB connection is wrapped in :class:`DuckEngine`).
        dataset: the normalized files.

    Raises:
        InputError: naming the file (and the column) when a file or a column is missing, when there are
            no ratings, or when a user has two rows in the users table.
    """
    eng = as_engine(engine)
    d = eng.dialect
    check_inputs(dataset)
    eng.parquet_view("ratings_raw", Path(dataset.ratings))
    eng.parquet_view("items_raw", Path(dataset.items))
    eng.execute(d.create_view("ratings_src", (
        f"SELECT {d.cast('user_id', 'BIGINT')} AS user_id, {d.cast('item_id', 'BIGINT')} AS item_id, "
        f"{d.cast('rating', 'DOUBLE')} AS rating, {d.cast('label', 'TINYINT')} AS label, "
        f"{d.cast('timestamp', 'BIGINT')} AS timestamp FROM ratings_raw")))
    eng.execute(d.create_view("items_src", (
        f"SELECT {d.cast('item_id', 'BIGINT')} AS item_id, {d.cast('year', 'INTEGER')} AS year, genres "
        "FROM items_raw")))
    n = eng.rows("SELECT COUNT(*) FROM ratings_src")[0][0]
    if n == 0:
        raise InputError("there are no ratings to build samples from", path=dataset.ratings)
    if dataset.users is not None:
        _register_users(eng, Path(dataset.users))
    return int(n)


_USERS_NEEDED = ("user_id", "gender", "age", "occupation", "zip")


def _register_users(eng: SqlEngine, path: Path) -> None:
    """The view ``users_src(user_id, gender, age, occupation, zip)`` over the normalized users table (one row
    per user: a duplicated id would duplicate samples, so it is refused)."""
    d = eng.dialect
    try:
        have = set(pq.read_schema(path).names)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"not a Parquet file ({exc}); load the data again with load_dataset", path=path) from None
    for column in _USERS_NEEDED:
        if column not in have:
            raise InputError(f"column {column!r} is missing (have: {', '.join(sorted(have))})", path=path,
                             field=column)
    eng.parquet_view("users_raw", path)
    eng.execute(d.create_view("users_src", (
        f"SELECT {d.cast('user_id', 'BIGINT')} AS user_id, {d.cast('gender', 'VARCHAR')} AS gender, "
        f"{d.cast('age', 'INTEGER')} AS age, {d.cast('occupation', 'VARCHAR')} AS occupation, "
        f"{d.cast('zip', 'VARCHAR')} AS zip FROM users_raw WHERE user_id IS NOT NULL")))
    dup = eng.rows("SELECT user_id FROM users_src GROUP BY user_id HAVING COUNT(*) > 1 LIMIT 1")
    if dup:
        raise InputError(f"user {dup[0][0]} has more than one row in the users table (one row per user)",
                         path=path, field="user_id")


def as_engine(engine: SqlEngine | duckdb.DuckDBPyConnection) -> SqlEngine:
    """An engine as is, a DuckDB connection wrapped in :class:`DuckEngine`."""
    return DuckEngine(engine) if isinstance(engine, duckdb.DuckDBPyConnection) else engine


def events_genre_bits(engine: SqlEngine | duckdb.DuckDBPyConnection) -> int:
    """Bits per packed genre counter: enough for the user with the most ``events`` (positives are fewer)."""
    most = as_engine(engine).rows("SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM events GROUP BY user_id) c")[0][0]
    return genre_bits(int(most or 0))


def genre_vocabulary(engine: SqlEngine | duckdb.DuckDBPyConnection) -> list[str]:
    """The sorted distinct genres of ``items_src`` (the vocabulary of the genre counts; byte order of UTF-8,
    which DuckDB, Spark and Python's ``sorted`` share)."""
    eng = as_engine(engine)
    rows = eng.rows(f"SELECT DISTINCT g FROM (SELECT {eng.dialect.unnest('genres')} AS g FROM items_src) u "
                    "WHERE g IS NOT NULL")
    return sorted(str(r[0]) for r in rows)


def fetch_one(con: SqlEngine | duckdb.DuckDBPyConnection, sql: str) -> tuple[Any, ...]:
    """The first row of a query (an aggregate always returns one), read to the end."""
    rows = as_engine(con).rows(sql)
    if not rows:
        raise RuntimeError(f"query returned no row: {sql[:80]}")
    return rows[0]
