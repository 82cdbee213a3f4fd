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

from deepcrossing.data._checks import Problems, bad_case, check_file, dedupe, one
from deepcrossing.data._duck import RawFile, connect, ident, sql_str, transcode_if_needed
from deepcrossing.data.layouts import ML100K_GENRES, MOVIELENS_CSV_MAPPING, ColumnMapping, Layout, detect
from deepcrossing.data.schema import Dataset
from deepcrossing.errors import InputError
from deepcrossing.hashing import file_sha256

__all__ = ["MAX_ABS_RATING", "MAX_SECONDS", "MOVIELENS_CSV_MAPPING", "ColumnMapping", "load_dataset"]

MAX_SECONDS = 10**11       # unix seconds below this (year 5138); 1e11..1e14 is a time in milliseconds
MAX_ABS_RATING = 10**4     # a rating column with larger values holds something else (timestamps, ids)
# a whole number written as text ("42", "-7", "42.0"): ids and unix times must be integral, never rounded
_INTEGRAL = r"^\s*[+-]?[0-9]+(\.0*)?\s*$"


# ---------------------------------------------------------------- SQL pieces


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
    bad_field, bad_value = bad_case(checks)
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
    bad_field, bad_value = bad_case([(f"TRY_CAST({i} AS BIGINT) IS NULL", id_col,
                                       id_col, "not an integer item id")])
    return (f"TRY_CAST({i} AS BIGINT) AS item_id, trim({title}) AS title, {year} AS year, "
            f"{genres} AS genres, {bad_field} AS bad, {bad_value} AS bad_value")


def _genre_list(col: str) -> str:
    # trimmed, blanks dropped, a genre listed twice kept once (its first place): "Drama|Drama" is one genre, so
    # it counts once in the user's genre counts and the cosine
    parts = f"list_filter(list_transform(string_split({col}, '|'), lambda x: trim(x)), lambda x: x <> '')"
    return (f"CASE WHEN {col} IS NULL OR trim({col}) IN ('', '(no genres listed)') THEN CAST([] AS VARCHAR[]) "
            f"ELSE list_filter({parts}, lambda g, i: list_position({parts}, g) = i) END")


def _users_select(layout: Layout) -> str:
    if layout.users_kind.startswith("custom:") and layout.users is not None:   # prepare --users FILE
        uid, have = layout.users_kind.split(":", 1)[1], set(layout.users.names)
        text = {c: f"CAST({ident(c)} AS VARCHAR)" if c in have else "CAST(NULL AS VARCHAR)"
                for c in ("gender", "age", "occupation", "zip")}
        checks = [(f"TRY_CAST({ident(uid)} AS BIGINT) IS NULL", uid, uid, "not an integer user id"),
                  (f"NULLIF(trim({text['age']}), '') IS NOT NULL AND TRY_CAST(trim({text['age']}) AS INTEGER) IS NULL",
                   "age", "age", "not an integer age")]
        bad_field, bad_value = bad_case(checks)
        return (f"TRY_CAST({ident(uid)} AS BIGINT) AS user_id, {text['gender']} AS gender, "
                f"TRY_CAST(NULLIF(trim({text['age']}), '') AS INTEGER) AS age, {text['occupation']} AS occupation, "
                f"{text['zip']} AS zip, {bad_field} AS bad, {bad_value} AS bad_value")
    bad_field, bad_value = bad_case([("TRY_CAST(\"userId\" AS BIGINT) IS NULL", "userId",
                                       "userId", "not an integer user id")])
    return ("TRY_CAST(\"userId\" AS BIGINT) AS user_id, \"gender\" AS gender, TRY_CAST(\"age\" AS INTEGER) AS age, "
            f"\"occupation\" AS occupation, \"zip\" AS zip, {bad_field} AS bad, {bad_value} AS bad_value")


def _links_select() -> str:
    """MovieLens ``links.csv``: movieId, then imdbId and tmdbId kept as text (leading zeros: ``0114709``); an
    empty id is NULL, anything but digits is a bad row."""
    movie = _integer('"movieId"', strict=True)
    checks = [(f"{movie} IS NULL", "movieId", "movieId", "not an integer item id")]
    ids = []
    for col, out, what in (("imdbId", "imdb_id", "IMDb"), ("tmdbId", "tmdb_id", "TMDB")):
        value = f"NULLIF(trim({ident(col)}), '')"
        checks.append((f"NOT regexp_full_match(COALESCE({value}, '0'), '[0-9]{{1,20}}')", col, col,
                       f"not a numeric {what} id (digits only, or empty)"))
        ids.append(f"{value} AS {out}")
    bad_field, bad_value = bad_case(checks)
    return f"{movie} AS item_id, {', '.join(ids)}, {bad_field} AS bad, {bad_value} AS bad_value"


# ---------------------------------------------------------------- public API


def load_dataset(path: str | Path, *, workdir: str | Path, columns: ColumnMapping | None = None,
                 items_path: str | Path | None = None, skip_bad_rows: bool = False,
                 users_path: str | Path | None = None) -> Dataset:
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
        users_path: a users file for a log without one (CSV/Parquet: a user id column named like
            ``columns.user_col``, ``user_id`` or ``userId``, and some of ``gender``, ``age`` (integer),
            ``occupation``, ``zip``; static attributes, as of the export). A release with its own users table
            refuses it.
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
    layout = detect(path, columns, Path(items_path) if items_path is not None else None,
                    Path(users_path) if users_path is not None else None)
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".load-", dir=workdir))
    sources = [f.path for f in (layout.ratings, layout.items, layout.users, layout.links) if f is not None]
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

    def done(problems: Problems, raw: RawFile) -> None:
        problems.raise_first()
        if problems.count:
            skipped[raw.path.name] = problems.count

    # items first: ratings are checked against them
    has_items = layout.items is not None
    if layout.items is not None:
        items_raw = prep(layout.items)
        staged, problems = check_file(con, items_raw, _items_select(layout), scratch, "items", skip)
        dedupe(con, staged, "items_v", ["item_id"], problems, "items_dup", "item id",
               "movieId" if not layout.items_kind.startswith("custom:") else layout.items_kind.split(":")[1])
        done(problems, items_raw)
        con.execute("CREATE TEMP TABLE items_ok AS SELECT item_id, title, year, genres FROM items_v "
                    "WHERE bad IS NULL AND rn NOT IN (SELECT rn FROM items_dup)")
    links, links_join = "CAST(NULL AS VARCHAR) AS imdb_id, CAST(NULL AS VARCHAR) AS tmdb_id", ""
    if has_items and layout.links is not None:
        links_raw = prep(layout.links)
        staged, problems = check_file(con, links_raw, _links_select(), scratch, "links", skip)
        dedupe(con, staged, "links_v", ["item_id"], problems, "links_dup", "movie id", "movieId")
        done(problems, links_raw)
        con.execute("CREATE TEMP TABLE links_ok AS SELECT item_id, imdb_id, tmdb_id FROM links_v "
                    "WHERE bad IS NULL AND rn NOT IN (SELECT rn FROM links_dup)")
        # links of movies that are not in the movies file are left out; movies without links get NULL
        links, links_join = "l.imdb_id, l.tmdb_id", " LEFT JOIN links_ok l USING (item_id)"

    ratings_raw = prep(layout.ratings)
    staged, problems = check_file(con, ratings_raw, _ratings_select(layout), scratch, "ratings", skip)
    m = layout.mapping
    dedupe(con, staged, "ratings_v", ["user_id", "item_id", "timestamp"], problems, "ratings_dup",
           "(user, item, timestamp)", m.time_col)
    exclude = ["bad IS NULL"]
    if one(con, "SELECT count(*) FROM ratings_dup")[0]:
        exclude.append("rn NOT IN (SELECT rn FROM ratings_dup)")
    if layout.items is not None:
        con.execute("""CREATE TEMP TABLE ratings_unknown AS SELECT r.rn, r.item_id FROM ratings_v r
                       ANTI JOIN items_ok i ON r.item_id = i.item_id WHERE r.bad IS NULL""")
        n, first_row = one(con, "SELECT count(*), min(rn) FROM ratings_unknown")
        if n:
            item = one(con, "SELECT item_id FROM ratings_unknown WHERE rn = ?", [first_row])[0]
            problems.add(int(n), staged.line_of(int(first_row)), m.item_col,
                         f"unknown item {item}: not in {layout.items.path.name}")
            exclude.append("rn NOT IN (SELECT rn FROM ratings_unknown)")
    done(problems, ratings_raw)
    where = " AND ".join(exclude)
    con.execute(f"COPY (SELECT user_id, item_id, rating, label, timestamp FROM ratings_v WHERE {where}) "
                f"TO {sql_str(scratch / 'ratings.parquet')} (FORMAT parquet, COMPRESSION zstd)")
    n_out = one(con, f"SELECT count(*) FROM read_parquet({sql_str(scratch / 'ratings.parquet')})")[0]
    if n_out == 0:
        raise InputError("no valid ratings left after skipping bad rows", path=ratings_raw.path)

    items_sql = f"SELECT i.*, {links} FROM items_ok i{links_join}" if has_items else (
        "SELECT DISTINCT item_id, CAST(NULL AS VARCHAR) AS title, CAST(NULL AS INTEGER) AS year, "
        f"CAST([] AS VARCHAR[]) AS genres, {links} FROM read_parquet({sql_str(scratch / 'ratings.parquet')})")
    con.execute(f"COPY ({items_sql} ORDER BY item_id) TO {sql_str(scratch / 'items.parquet')} (FORMAT parquet)")

    if layout.users is not None and layout.users.path.exists():
        users_raw = prep(layout.users)
        ustaged, uproblems = check_file(con, users_raw, _users_select(layout), scratch, "users", skip)
        dedupe(con, ustaged, "users_v", ["user_id"], uproblems, "users_dup", "user id",
               layout.users_kind.split(":", 1)[1] if layout.users_kind.startswith("custom:") else "userId")
        done(uproblems, users_raw)
        con.execute("COPY (SELECT user_id, gender, age, occupation, zip FROM users_v WHERE bad IS NULL "
                    "AND rn NOT IN (SELECT rn FROM users_dup) "
                    f"ORDER BY user_id) TO {sql_str(scratch / 'users.parquet')} (FORMAT parquet)")

    scale = m.rating_scale
    if m.rating_col is None:
        scale = None
    elif scale is None:
        lo, hi = one(con, f"SELECT min(rating), max(rating) FROM "
                          f"read_parquet({sql_str(scratch / 'ratings.parquet')})")
        scale = (float(lo), float(hi))
    return {"scale": scale, "skipped": skipped}
