"""Read rating logs in any supported layout (see :mod:`.layouts`) and write the normalized Parquet files of
:mod:`.schema`.

Every file is scanned by DuckDB (2 threads, capped memory, spilling to ``workdir``) so a 25M-row ratings file
converts in bounded memory; lines longer than :data:`~deepcrossing.data._duck.MAX_LINE_BYTES` are malformed.
Bad rows raise :class:`~deepcrossing.errors.InputError` naming file, 1-based line (header = line 1) and field,
quoting at most a short excerpt of the value, or are skipped and counted with ``skip_bad_rows=True``.

Times are unix seconds (or ISO dates in a person's own logs). A time of 1e11 or more (after the year 5138) is
refused, as milliseconds when below 1e14: convert such a column to seconds first (the readers do not guess).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from deepcrossing.data._duck import MAX_LINE_BYTES, RawFile, Staged, connect, excerpt, ident, sql_str, stage, \
    transcode_if_needed
from deepcrossing.data.layouts import ML100K_GENRES, MOVIELENS_CSV_MAPPING, ColumnMapping, Layout, detect
from deepcrossing.data.schema import Dataset
from deepcrossing.errors import InputError
from deepcrossing.hashing import file_sha256

__all__ = ["MAX_ABS_RATING", "MAX_SECONDS", "MOVIELENS_CSV_MAPPING", "ColumnMapping", "load_dataset"]

MAX_SECONDS = 10**11       # unix seconds below this (year 5138); 1e11..1e14 is a time in milliseconds
MAX_ABS_RATING = 10**4     # a rating column with larger values holds something else (timestamps, ids)
_CAST_WHY = {"userId": "not an integer user id", "movieId": "not an integer item id", "rating": "not a number",
             "timestamp": "not an integer (unix seconds)"}
# a whole number written as text ("42", "-7", "42.0"): ids and unix times must be integral, never rounded
_INTEGRAL = r"^\s*[+-]?[0-9]+(\.0*)?\s*$"


# ---------------------------------------------------------------- SQL pieces


def _one(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> tuple[Any, ...]:
    """The one row of a query that always returns one (an aggregate, or a row known to exist)."""
    row = con.execute(sql, params).fetchone()
    assert row is not None, sql
    return row


def _bad_case(checks: list[tuple[str, str, str, str]]) -> tuple[str, str]:
    """CASE expressions giving the first failing ``field|why`` of a row and its raw value; NULL on good rows.

    ``checks``: (SQL condition that is TRUE when bad, field name, raw column name, why it is bad)."""
    field_case = " ".join(f"WHEN {cond} THEN {sql_str(fld + '|' + why)}" for cond, fld, _col, why in checks)
    value_case = " ".join(f"WHEN {cond} THEN CAST({ident(col)} AS VARCHAR)" for cond, _f, col, _w in checks)
    return f"CASE {field_case} END", f"CASE {value_case} END"


def _ratings_select(layout: Layout) -> str:
    m = layout.mapping
    u, i, t = ident(m.user_col), ident(m.item_col), ident(m.time_col)
    strict = layout.time_iso  # a person's own log: text columns, parsed here (MovieLens's are typed by the scan)
    user_expr, item_expr = _integer(u, strict), _integer(i, strict)
    if layout.time_iso:
        time_expr = f"COALESCE({_integer(t, strict)}, CAST(epoch(TRY_CAST({t} AS TIMESTAMPTZ)) AS BIGINT))"
        time_why = "not unix seconds or an ISO date/datetime"
    else:
        time_expr = _integer(t, strict)
        time_why = "not an integer (unix seconds)"
    checks = [(f"{user_expr} IS NULL", m.user_col, m.user_col, "not an integer user id"),
              (f"{item_expr} IS NULL", m.item_col, m.item_col, "not an integer item id")]
    rating_expr, label_expr = "CAST(NULL AS DOUBLE)", "CAST(NULL AS TINYINT)"
    if m.rating_col:
        r = ident(m.rating_col)
        rating_expr = f"TRY_CAST({r} AS DOUBLE)"
        checks.append((f"{rating_expr} IS NULL OR NOT isfinite({rating_expr})", m.rating_col,
                       m.rating_col, "not a number"))
        if m.rating_scale is not None:
            lo, hi = m.rating_scale
            checks.append((f"{rating_expr} < {lo} OR {rating_expr} > {hi}", m.rating_col,
                           m.rating_col, f"outside the rating scale {lo:g}..{hi:g}"))
        else:
            checks.append((f"NOT ({rating_expr} BETWEEN {-MAX_ABS_RATING} AND {MAX_ABS_RATING})", m.rating_col,
                           m.rating_col, f"not a rating (beyond +-{MAX_ABS_RATING:,}): is this the rating "
                                         "column?"))
    if m.label_col:
        lab = ident(m.label_col)
        label_expr = f"CAST(TRY_CAST({lab} AS INTEGER) AS TINYINT)"
        checks.append((f"TRY_CAST({lab} AS INTEGER) IS NULL OR TRY_CAST({lab} AS INTEGER) NOT IN (0, 1)",
                       m.label_col, m.label_col, "not a 0/1 label"))
    checks.append((f"{time_expr} IS NULL", m.time_col, m.time_col, time_why))
    checks.append((f"{time_expr} BETWEEN {MAX_SECONDS} AND {MAX_SECONDS * 1000 - 1}", m.time_col, m.time_col,
                   f"looks like milliseconds (unix seconds are below {MAX_SECONDS:.0e}, the year 5138): convert "
                   "the column to seconds (divide by 1000)"))
    checks.append((f"NOT ({time_expr} BETWEEN {-MAX_SECONDS} AND {MAX_SECONDS})", m.time_col, m.time_col,
                   f"out of range: unix seconds must be within +-{MAX_SECONDS:.0e} (the year 5138)"))
    bad_field, bad_value = _bad_case(checks)
    return (f"{user_expr} AS user_id, {item_expr} AS item_id, {rating_expr} AS rating, "
            f"{label_expr} AS label, {time_expr} AS timestamp, {bad_field} AS bad, {bad_value} AS bad_value")


def _integer(col: str, strict: bool) -> str:
    """SQL for an integer column, NULL unless it holds a whole number (``3.5`` is refused, never rounded):
    ``strict`` for text, else a DOUBLE column parsed by the scan."""
    if not strict:
        return f"CASE WHEN {col} = trunc({col}) THEN TRY_CAST({col} AS BIGINT) END"
    return f"CASE WHEN regexp_matches(CAST({col} AS VARCHAR), {sql_str(_INTEGRAL)}) THEN TRY_CAST({col} AS BIGINT) END"


_YEAR_SQL = r"TRY_CAST(regexp_extract({t}, '\((\d{{4}})\)\s*$', 1) AS INTEGER)"


def _items_select(layout: Layout) -> str:
    raw = layout.items
    assert raw is not None
    kind = layout.items_kind
    if kind == "100k":
        flags = ", ".join(f"CASE WHEN g{k} = '1' THEN {sql_str(g)} END" for k, g in enumerate(ML100K_GENRES) if k)
        genres = f"list_filter([{flags}], lambda x: x IS NOT NULL)"
        id_col, title = "movieId", '"title"'
    elif kind.startswith("custom:"):
        id_col = kind.split(":", 1)[1]
        title = '"title"' if "title" in raw.names else "CAST(NULL AS VARCHAR)"
        genres = _genre_list('"genres"') if "genres" in raw.names else "CAST([] AS VARCHAR[])"
    else:
        id_col, title, genres = "movieId", '"title"', _genre_list('"genres"')
    year = _YEAR_SQL.format(t=title)
    if kind.startswith("custom:") and "year" in raw.names:
        year = f"COALESCE(TRY_CAST(\"year\" AS INTEGER), {year})"
    i = ident(id_col)
    bad_field, bad_value = _bad_case([(f"TRY_CAST({i} AS BIGINT) IS NULL", id_col,
                                       id_col, "not an integer item id")])
    return (f"TRY_CAST({i} AS BIGINT) AS item_id, trim({title}) AS title, {year} AS year, "
            f"{genres} AS genres, {bad_field} AS bad, {bad_value} AS bad_value")


def _genre_list(col: str) -> str:
    return (f"CASE WHEN {col} IS NULL OR trim({col}) IN ('', '(no genres listed)') THEN CAST([] AS VARCHAR[]) "
            f"ELSE list_filter(list_transform(string_split({col}, '|'), lambda x: trim(x)), lambda x: x <> '') END")


def _users_select(layout: Layout) -> str:
    bad_field, bad_value = _bad_case([("TRY_CAST(\"userId\" AS BIGINT) IS NULL", "userId",
                                       "userId", "not an integer user id")])
    return ("TRY_CAST(\"userId\" AS BIGINT) AS user_id, \"gender\" AS gender, TRY_CAST(\"age\" AS INTEGER) AS age, "
            f"\"occupation\" AS occupation, \"zip\" AS zip, {bad_field} AS bad, {bad_value} AS bad_value")


# ---------------------------------------------------------------- checks


class _Problems:
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


def _collect_basic(con: duckdb.DuckDBPyConnection, staged: Staged, view: str, problems: _Problems) -> None:
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
    n_bad, first_row = _one(con, f"SELECT count(*), min(rn) FROM {view} WHERE bad IS NOT NULL")
    if n_bad:
        bad, value = _one(con, f"SELECT bad, bad_value FROM {view} WHERE rn = ?", [first_row])
        fld, why = bad.split("|", 1)
        shown = "<empty>" if value is None or value == "" else excerpt(value)
        problems.add(int(n_bad), staged.line_of(int(first_row)), fld, f"{why}: {shown}")


def _stage_view(con: duckdb.DuckDBPyConnection, staged: Staged, view: str) -> None:
    con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT file_row_number AS rn, * "
                f"FROM read_parquet({sql_str(staged.stage)}, file_row_number=true)")


def _require_rows(con: duckdb.DuckDBPyConnection, staged: Staged, view: str) -> None:
    n = _one(con, f"SELECT count(*) FROM {view}")[0]
    staged.n_rows = int(n)
    staged.reject_long_lines()
    if n == 0 and not staged.rejects:
        raise InputError("the file has no data rows", path=staged.raw.path,
                         line=2 if staged.raw.header else 1)


def _dedupe(con: duckdb.DuckDBPyConnection, staged: Staged, view: str, keys: list[str], problems: _Problems, table: str,
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
    n, first_row = _one(con, f"SELECT count(*), min(rn) FROM {table}")
    if n:
        row = _one(con, f"SELECT first_rn, {key} FROM {table} WHERE rn = ?", [first_row])
        values = ", ".join(f"{k}={excerpt(v, 30)}" for k, v in zip(keys, row[1:]))
        problems.add(int(n), staged.line_of(int(first_row)), field_name,
                     f"duplicate {what} ({values}) already on line {staged.line_of(int(row[0]))}")


# ---------------------------------------------------------------- public API




def load_dataset(path: str | Path, *, workdir: str | Path, columns: ColumnMapping | None = None,
                 items_path: str | Path | None = None, skip_bad_rows: bool = False) -> Dataset:
    """Detect the layout of ``path``, validate it and write normalized Parquet files into ``workdir``.

    Args:
        path: a MovieLens folder (any release), or a person's CSV/Parquet log file (or a folder with one).
        workdir: where ``ratings.parquet``, ``items.parquet`` (and ``users.parquet``) are written; files are
            renamed into place only after every check passed.
        columns: column mapping for a person's own logs; ``None`` for MovieLens layouts (and for a log file
            that already has MovieLens's ``userId,movieId,rating,timestamp`` columns).
        items_path: items file for a person's own logs (item id column named like ``columns.item_col``,
            ``item_id`` or ``movieId``; optional ``title``, ``genres`` ``|``-separated, ``year``). Without it
            the items table holds a bare row (title NULL, no genres) per rated item.
        skip_bad_rows: skip and count bad rows (``Dataset.skipped_rows``, by file name) instead of raising.
            Missing files or columns and empty files always raise.

    Returns:
        A :class:`~deepcrossing.data.schema.Dataset`; ratings (N rows) and items (M rows) as in ``schema.py``.

    Raises:
        InputError: naming file, line (1-based, header = 1) and field of the first bad row.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = (Path(tmp) / "log.csv").write_text("user,item,stars,when\\n7,42,4.5,2020-01-31\\n")
        ...     ds = load_dataset(Path(tmp) / "log.csv", workdir=Path(tmp) / "work",
        ...                       columns=ColumnMapping("user", "item", "when", rating_col="stars"))
        ...     ds.name, ds.rating_scale, ds.ratings.name
        ('custom', (4.5, 4.5), 'ratings.parquet')
    """
    path, workdir = Path(path), Path(workdir)
    layout = detect(path, columns, Path(items_path) if items_path is not None else None)
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".load-", dir=workdir))
    sources = [f.path for f in (layout.ratings, layout.items, layout.users) if f is not None]
    sources += layout.checksum_only
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:  # hashing overlaps DuckDB's scan
            hashes = pool.submit(lambda: {p.name: file_sha256(p) for p in sources if p.exists()})
            con = connect(scratch / "spill")
            try:
                result = _convert(con, layout, scratch, skip_bad_rows)
            finally:
                con.close()
            digests = hashes.result()
        outputs = {}
        for stem in ("ratings", "items", "users"):
            tmp = scratch / f"{stem}.parquet"
            if tmp.exists():
                os.replace(tmp, workdir / f"{stem}.parquet")
                outputs[stem] = workdir / f"{stem}.parquet"
            elif stem == "users":
                (workdir / "users.parquet").unlink(missing_ok=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Dataset(name=layout.name, ratings=outputs["ratings"], items=outputs["items"],
                   users=outputs.get("users"), sources=digests, rating_scale=result["scale"],
                   skipped_rows=result["skipped"])


def _convert(con: duckdb.DuckDBPyConnection, layout: Layout, scratch: Path, skip: bool) -> dict[str, Any]:
    skipped: dict[str, int] = {}

    def prep(raw: RawFile) -> RawFile:
        if raw.is_parquet or not raw.path.exists():
            return raw
        if raw.path.stat().st_size < (64 << 20):  # items/users files; big ratings files are ASCII
            utf8 = transcode_if_needed(raw.path, scratch)
            if utf8 is not None:
                return dataclasses.replace(raw, read_path=utf8)
        return raw

    # items first: ratings are checked against them
    has_items = layout.items is not None
    if layout.items is not None:
        items_raw = prep(layout.items)
        staged = stage(con, items_raw, _items_select(layout), scratch / "items_stage.parquet", "items")
        _stage_view(con, staged, "items_v")
        _require_rows(con, staged, "items_v")
        problems = _Problems(staged, skip)
        _collect_basic(con, staged, "items_v", problems)
        _dedupe(con, staged, "items_v", ["item_id"], problems, "items_dup", "item id",
                "movieId" if not layout.items_kind.startswith("custom:") else layout.items_kind.split(":")[1])
        problems.raise_first()
        if problems.count:
            skipped[items_raw.path.name] = problems.count
        con.execute("CREATE TEMP TABLE items_ok AS SELECT item_id, title, year, genres FROM items_v "
                    "WHERE bad IS NULL AND rn NOT IN (SELECT rn FROM items_dup)")

    ratings_raw = prep(layout.ratings)
    staged = stage(con, ratings_raw, _ratings_select(layout), scratch / "ratings_stage.parquet", "ratings")
    _stage_view(con, staged, "ratings_v")
    _require_rows(con, staged, "ratings_v")
    problems = _Problems(staged, skip)
    _collect_basic(con, staged, "ratings_v", problems)
    m = layout.mapping
    _dedupe(con, staged, "ratings_v", ["user_id", "item_id", "timestamp"], problems, "ratings_dup",
            "(user, item, timestamp)", m.time_col)
    exclude = ["bad IS NULL"]
    if _one(con, "SELECT count(*) FROM ratings_dup")[0]:
        exclude.append("rn NOT IN (SELECT rn FROM ratings_dup)")
    if layout.items is not None:
        con.execute("""CREATE TEMP TABLE ratings_unknown AS SELECT r.rn, r.item_id FROM ratings_v r
                       ANTI JOIN items_ok i ON r.item_id = i.item_id WHERE r.bad IS NULL""")
        n, first_row = _one(con, "SELECT count(*), min(rn) FROM ratings_unknown")
        if n:
            item = _one(con, "SELECT item_id FROM ratings_unknown WHERE rn = ?", [first_row])[0]
            problems.add(int(n), staged.line_of(int(first_row)), m.item_col,
                         f"unknown item {item}: not in {layout.items.path.name}")
            exclude.append("rn NOT IN (SELECT rn FROM ratings_unknown)")
    problems.raise_first()
    if problems.count:
        skipped[ratings_raw.path.name] = problems.count
    where = " AND ".join(exclude)
    con.execute(f"COPY (SELECT user_id, item_id, rating, label, timestamp FROM ratings_v WHERE {where}) "
                f"TO {sql_str(scratch / 'ratings.parquet')} (FORMAT parquet, COMPRESSION zstd)")
    n_out = _one(con, f"SELECT count(*) FROM read_parquet({sql_str(scratch / 'ratings.parquet')})")[0]
    if n_out == 0:
        raise InputError("no valid ratings left after skipping bad rows", path=ratings_raw.path)

    items_sql = "SELECT * FROM items_ok" if has_items else (
        "SELECT DISTINCT item_id, CAST(NULL AS VARCHAR) AS title, CAST(NULL AS INTEGER) AS year, "
        f"CAST([] AS VARCHAR[]) AS genres FROM read_parquet({sql_str(scratch / 'ratings.parquet')})")
    con.execute(f"COPY ({items_sql} ORDER BY item_id) TO {sql_str(scratch / 'items.parquet')} (FORMAT parquet)")

    if layout.users is not None and layout.users.path.exists():
        users_raw = prep(layout.users)
        ustaged = stage(con, users_raw, _users_select(layout), scratch / "users_stage.parquet", "users")
        _stage_view(con, ustaged, "users_v")
        uproblems = _Problems(ustaged, skip)
        _require_rows(con, ustaged, "users_v")
        _collect_basic(con, ustaged, "users_v", uproblems)
        uproblems.raise_first()
        if uproblems.count:
            skipped[users_raw.path.name] = uproblems.count
        con.execute("COPY (SELECT user_id, gender, age, occupation, zip FROM users_v WHERE bad IS NULL "
                    f"ORDER BY user_id) TO {sql_str(scratch / 'users.parquet')} (FORMAT parquet)")

    scale = m.rating_scale
    if m.rating_col is None:
        scale = None
    elif scale is None:
        lo, hi = _one(con, f"SELECT min(rating), max(rating) FROM "
                             f"read_parquet({sql_str(scratch / 'ratings.parquet')})")
        scale = (float(lo), float(hi))
    return {"scale": scale, "skipped": skipped}
