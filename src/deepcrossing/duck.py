"""The one DuckDB helper module: bounded connections and SQL quoting, used by every stage that runs SQL.

Example:
    >>> sql_str("it's")
    "'it''s'"
    >>> ident('a"b')
    '"a""b"'
    >>> with connection(threads=1) as con:
    ...     con.execute("SELECT 41 + 1").fetchone()[0]
    42
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import duckdb

MEMORY_LIMIT = os.environ.get("DEEPCROSSING_DUCKDB_MEMORY", "1500MB")
THREADS = int(os.environ.get("DEEPCROSSING_DUCKDB_THREADS", "2"))


def sql_str(value: str | Path) -> str:
    """Quote a value (text or a path) as an SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def ident(name: str) -> str:
    """Quote an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def connect(temp_dir: Path | None = None, *, threads: int | None = None, memory_limit: str | None = None,
            preserve_order: bool = True) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection in UTC with bounded threads and memory, spilling into ``temp_dir``.

    Args:
        temp_dir: spill folder (created); None keeps DuckDB's default.
        threads: worker threads (default ``$DEEPCROSSING_DUCKDB_THREADS`` or 2).
        memory_limit: e.g. "1500MB" (default ``$DEEPCROSSING_DUCKDB_MEMORY`` or 1500MB).
        preserve_order: keep insertion order (line numbers of raw files need it; bulk SQL is faster without).
    """
    config: dict[str, str | bool | int | float | list[str]] = {
        "threads": threads or THREADS, "memory_limit": memory_limit or MEMORY_LIMIT,
        "preserve_insertion_order": preserve_order}
    if temp_dir is not None:
        temp_dir.mkdir(parents=True, exist_ok=True)
        config["temp_directory"] = str(temp_dir)
    con = duckdb.connect(config=config)
    con.execute("SET TimeZone='UTC'; SET enable_progress_bar = false")
    return con


@contextlib.contextmanager
def connection(*, threads: int | None = None, memory_limit: str | None = None,
               preserve_order: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
    """:func:`connect` with a private spill folder, both closed and removed on exit."""
    spill = Path(tempfile.mkdtemp(prefix="deepcrossing-duckdb-"))
    con = connect(spill, threads=threads, memory_limit=memory_limit, preserve_order=preserve_order)
    try:
        yield con
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)
