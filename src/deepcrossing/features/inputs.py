"""The Feature layer's inputs: a DuckDB connection per run and the normalized files as checked views.

Shared by the offline samples (:mod:`deepcrossing.features.samples`) and the online records
(:mod:`deepcrossing.features.online`), so both read the same relations the same way:

* ``ratings_src(user_id BIGINT, item_id BIGINT, rating DOUBLE, label TINYINT, timestamp BIGINT)``
* ``items_src(item_id BIGINT, year INTEGER, genres VARCHAR[])``

Example:
    >>> from deepcrossing.features.config import FeatureConfig
    >>> with connect(FeatureConfig(threads=1)) as con:
    ...     con.execute("SELECT 1").fetchone()[0]
    1
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import duckdb

from deepcrossing.data.schema import Dataset
from deepcrossing.duck import connection, sql_str
from deepcrossing.errors import InputError
from deepcrossing.features.config import FeatureConfig
from deepcrossing.features.sql import genre_bits


def connect(config: FeatureConfig) -> contextlib.AbstractContextManager[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB with the config's threads/memory that spills to a private temp folder."""
    return connection(threads=int(config.threads), memory_limit=config.memory_limit, preserve_order=False)


def register_inputs(con: duckdb.DuckDBPyConnection, dataset: Dataset) -> int:
    """Create the views ``ratings_src`` / ``items_src`` (files and columns checked); return the rating count.

    Raises:
        InputError: naming the file (and the column) when a file or a column is missing, or when there are
            no ratings.
    """
    need = {
        Path(dataset.ratings): ("user_id", "item_id", "rating", "label", "timestamp"),
        Path(dataset.items): ("item_id", "year", "genres"),
    }
    for path, columns in need.items():
        if not path.is_file():
            raise InputError("normalized file is missing; load the data again with load_dataset", path=path)
        have = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM read_parquet({sql_str(path)})").fetchall()}
        for column in columns:
            if column not in have:
                raise InputError(f"column {column!r} is missing (have: {', '.join(sorted(have))})",
                                 path=path, field=column)
    con.execute(f"CREATE VIEW ratings_src AS SELECT CAST(user_id AS BIGINT) AS user_id, "
                f"CAST(item_id AS BIGINT) AS item_id, CAST(rating AS DOUBLE) AS rating, "
                f"CAST(label AS TINYINT) AS label, CAST(timestamp AS BIGINT) AS timestamp "
                f"FROM read_parquet({sql_str(dataset.ratings)})")
    con.execute(f"CREATE VIEW items_src AS SELECT CAST(item_id AS BIGINT) AS item_id, "
                f"CAST(year AS INTEGER) AS year, genres FROM read_parquet({sql_str(dataset.items)})")
    n = _scalar(con, "SELECT COUNT(*) FROM ratings_src")
    if n == 0:
        raise InputError("there are no ratings to build samples from", path=dataset.ratings)
    return int(n)


def events_genre_bits(con: duckdb.DuckDBPyConnection) -> int:
    """Bits per packed genre counter: enough for the user with the most ``events`` (positives are fewer)."""
    most = _scalar(con, "SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM events GROUP BY user_id)")
    return genre_bits(int(most or 0))


def genre_vocabulary(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The sorted distinct genres of ``items_src`` (the vocabulary of the genre counts)."""
    rows = con.execute("SELECT DISTINCT g FROM (SELECT UNNEST(genres) AS g FROM items_src) "
                       "WHERE g IS NOT NULL ORDER BY g").fetchall()
    return [str(r[0]) for r in rows]


def fetch_one(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[Any, ...]:
    """The first row of a query (an aggregate always returns one), read to the end so that the connection has
    no unfinished result (a later ``con.sql`` would refuse to run)."""
    rows = con.execute(sql).fetchall()
    if not rows:
        raise RuntimeError(f"query returned no row: {sql[:80]}")
    return tuple(rows[0])


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    return fetch_one(con, sql)[0]
