"""The readers' row checks over a staged file: malformed lines, fields that failed to parse or validate, and
duplicate keys, collected per file and raised as one :class:`~deepcrossing.errors.InputError` naming file,
line and field (or counted, when bad rows are skipped).

A staged file's SELECT carries two columns for this: ``bad`` (``field|why`` of the first failing check, NULL on
a good row) and ``bad_value`` (the raw value), see :func:`bad_case`; :func:`check_file` stages a raw file and
runs the basic checks in one call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from deepcrossing.data._duck import MAX_LINE_BYTES, RawFile, Staged, excerpt, ident, sql_str, stage
from deepcrossing.errors import InputError

_CAST_WHY = {"userId": "not an integer user id", "movieId": "not an integer item id", "rating": "not a number",
             "timestamp": "not an integer (unix seconds)"}


def one(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> tuple[Any, ...]:
    """The one row of a query that always returns one (an aggregate, or a row known to exist)."""
    row = con.execute(sql, params).fetchone()
    assert row is not None, sql
    return row


class Problems:
    """Collects the bad rows of one file: raises on the first (by line) unless skipping, else counts them."""

    def __init__(self, staged: Staged, skip: bool) -> None:
        self.staged, self.skip = staged, skip
        self.first: tuple[int, str | None, str] | None = None
        self.count = 0

    def add(self, count: int, line: int | None, field_name: str | None, message: str) -> None:
        if count <= 0:
            return
        self.count += count
        if line is not None and (self.first is None or line < self.first[0]):
            self.first = (line, field_name, message)

    def raise_first(self) -> None:
        if self.first is not None and not self.skip:
            line, field_name, message = self.first
            extra = f" ({self.count} bad rows in this file; pass skip_bad_rows / --skip-bad-rows to skip them)" \
                if self.count > 1 else " (pass skip_bad_rows / --skip-bad-rows to skip such rows)"
            raise InputError(message + extra, path=self.staged.raw.path, line=line, field=field_name)


def _collect_basic(con: duckdb.DuckDBPyConnection, staged: Staged, view: str, problems: Problems) -> None:
    """Malformed lines (from DuckDB's rejects) and rows whose fields failed to parse or validate."""
    raw = staged.raw
    if staged.rejects:
        line, kind, column, text = staged.rejects[0]
        if kind == "CAST" and column in raw.names:
            fields = text.split(raw.delim)
            k = raw.names.index(column)
            value = fields[k] if k < len(fields) else ""
            why = _CAST_WHY.get(column, "not a number")
            problems.add(len(staged.rejects), line, column, f"{why}: {excerpt(value)}" if value else f"{why}: <empty>")
        elif kind == "LINE SIZE OVER MAXIMUM":
            problems.add(len(staged.rejects), line, None, f"malformed line: longer than {MAX_LINE_BYTES:,} bytes")
        else:
            expected = len(raw.names)
            found = len(text.split(raw.delim)) if text else 0
            problems.add(len(staged.rejects), line, None,
                         f"malformed line: expected {expected} fields separated by {raw.delim!r}, found {found}")
    n_bad, first_row = one(con, f"SELECT count(*), min(rn) FROM {view} WHERE bad IS NOT NULL")
    if n_bad:
        bad, value = one(con, f"SELECT bad, bad_value FROM {view} WHERE rn = ?", [first_row])
        fld, why = bad.split("|", 1)
        shown = "<empty>" if value is None or value == "" else excerpt(value)
        problems.add(int(n_bad), staged.line_of(int(first_row)), fld, f"{why}: {shown}")


def _stage_view(con: duckdb.DuckDBPyConnection, staged: Staged, view: str) -> None:
    con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT file_row_number AS rn, * "
                f"FROM read_parquet({sql_str(staged.stage)}, file_row_number=true)")


def _require_rows(con: duckdb.DuckDBPyConnection, staged: Staged, view: str) -> None:
    n = one(con, f"SELECT count(*) FROM {view}")[0]
    staged.n_rows = int(n)
    staged.reject_long_lines()
    if n == 0 and not staged.rejects:
        raise InputError("the file has no data rows", path=staged.raw.path,
                         line=2 if staged.raw.header else 1)


def dedupe(con: duckdb.DuckDBPyConnection, staged: Staged, view: str, keys: list[str], problems: Problems, table: str,
            what: str, field_name: str) -> None:
    """Rows repeating an earlier row's ``keys`` go to temp table ``table`` (rn); the first one is kept."""
    key = ", ".join(keys)
    # a 64-bit hash per row, sorted in numpy: much cheaper than a 20M-group hash aggregate; only hashes seen
    # twice (real duplicates, or a rare collision) go through the exact SQL below
    hashes = con.execute(f"SELECT hash({key}) AS h FROM {view} WHERE bad IS NULL").fetchnumpy()["h"]
    hashes = np.sort(np.asarray(hashes, dtype=np.uint64))
    hot = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
    del hashes
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table}_hot (h UBIGINT)")
    if hot.size:
        con.register(f"{table}_hot_np", {"h": hot})
        con.execute(f"INSERT INTO {table}_hot SELECT h FROM {table}_hot_np")
        con.unregister(f"{table}_hot_np")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {table} AS
        WITH cand AS (SELECT rn, {key} FROM {view}
                      WHERE bad IS NULL AND hash({key}) IN (SELECT h FROM {table}_hot)),
             ranked AS (SELECT rn, {key}, row_number() OVER (PARTITION BY {key} ORDER BY rn) AS k,
                               min(rn) OVER (PARTITION BY {key}) AS first_rn FROM cand)
        SELECT rn, first_rn, {key} FROM ranked WHERE k > 1""")
    n, first_row = one(con, f"SELECT count(*), min(rn) FROM {table}")
    if n:
        row = one(con, f"SELECT first_rn, {key} FROM {table} WHERE rn = ?", [first_row])
        values = ", ".join(f"{k}={excerpt(v, 30)}" for k, v in zip(keys, row[1:]))
        problems.add(int(n), staged.line_of(int(first_row)), field_name,
                     f"duplicate {what} ({values}) already on line {staged.line_of(int(row[0]))}")


def bad_case(checks: list[tuple[str, str, str, str]]) -> tuple[str, str]:
    """CASE expressions giving the first failing ``field|why`` of a row and its raw value; NULL on good rows.

    ``checks``: (SQL condition that is TRUE when bad, field name, raw column name, why it is bad).

    Example:
        >>> print(bad_case([('"x" IS NULL', "x", "x", "missing")])[0])
        CASE WHEN "x" IS NULL THEN 'x|missing' END
    """
    field_case = " ".join(f"WHEN {cond} THEN {sql_str(fld + '|' + why)}" for cond, fld, _col, why in checks)
    value_case = " ".join(f"WHEN {cond} THEN CAST({ident(col)} AS VARCHAR)" for cond, _f, col, _w in checks)
    return f"CASE {field_case} END", f"CASE {value_case} END"


def check_file(con: duckdb.DuckDBPyConnection, raw: RawFile, select: str, scratch: Path, tag: str,
               skip: bool) -> tuple[Staged, Problems]:
    """Stage ``raw`` through ``select`` into ``scratch/{tag}_stage.parquet``, as the temp view ``{tag}_v``
    (with ``rn``, the staged row number), refuse an empty file and collect the malformed lines and bad
    fields; the caller adds its own checks (duplicates, unknown ids) and then calls ``raise_first``."""
    staged = stage(con, raw, select, scratch / f"{tag}_stage.parquet", tag)
    view = f"{tag}_v"
    _stage_view(con, staged, view)
    _require_rows(con, staged, view)
    problems = Problems(staged, skip)
    _collect_basic(con, staged, view, problems)
    return staged, problems
