"""Read rating logs in any supported layout and write the normalized Parquet files of :mod:`.schema`.

Layouts (detected from the files in a folder):

==================  =========================================================================================
CSV releases        ml-latest-small, ml-latest, ml-20m, ml-25m, ml-32m: ``ratings.csv`` (userId, movieId,
                    rating, timestamp), ``movies.csv`` (movieId, title, genres ``|``-separated), optional
                    ``tags.csv`` and ``links.csv`` (checksummed, not read). Ratings 0.5..5.0.
``::`` releases     ml-1m, ml-10m: ``ratings.dat``, ``movies.dat`` (latin-1 in ml-1m), ``users.dat`` (ml-1m).
                    Ratings 1..5 in ml-1m (it has users.dat), 0.5..5.0 in ml-10m.
ml-100k             ``u.data`` (tab: user item rating timestamp), ``u.item`` (``|``, latin-1, 19 genre flags),
                    ``u.user``. Ratings 1..5.
your own logs       a CSV or Parquet file (or a folder holding exactly one) and a :class:`ColumnMapping`;
                    optionally an items file (CSV/Parquet: item id, optional title, genres, year).
==================  =========================================================================================

Every file is scanned by DuckDB (2 threads, capped memory, spilling to ``workdir``) so a 25M-row ratings file
converts in bounded memory. Bad rows raise :class:`~deepcrossing.errors.InputError` naming file, 1-based line
(header = line 1) and field, or are skipped and counted with ``skip_bad_rows=True``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepcrossing.data._duck import RawFile, Staged, connect, ident, read_header, sql_str, stage, transcode_if_needed
from deepcrossing.data.schema import Dataset
from deepcrossing.errors import InputError
from deepcrossing.hashing import file_sha256

ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
                 "Thriller", "War", "Western")
MOVIELENS_SCALE = (0.5, 5.0)
STAR_SCALE = (1.0, 5.0)
_ITEM_ID_NAMES = ("item_id", "movieId", "itemId", "movie_id", "item", "id")


@dataclass(frozen=True)
class ColumnMapping:
    """Which columns of a person's own log file hold user, item, rating or label, and time.

    Args:
        user_col: user id column (integers).
        item_col: item id column (integers).
        time_col: unix seconds (integers) or ISO dates / datetimes (``2020-01-31``, ``2020-01-31T12:00:00Z``).
        rating_col: numeric rating column; give this or ``label_col`` (or both).
        label_col: explicit 0/1 label column (label-only logs have rating NULL and rating_scale ``None``).
        rating_scale: (min, max) of valid ratings; ``None`` accepts any finite rating and records the
            observed range.

    Example:
        >>> ColumnMapping(user_col="uid", item_col="sku", time_col="ts", label_col="clicked")
        ColumnMapping(user_col='uid', item_col='sku', time_col='ts', rating_col=None, label_col='clicked', rating_scale=None)
    """

    user_col: str
    item_col: str
    time_col: str
    rating_col: str | None = None
    label_col: str | None = None
    rating_scale: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        for key in ("user_col", "item_col", "time_col"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"{key} must be a non-empty column name, not {value!r}", field=key)
        for key in ("rating_col", "label_col"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise InputError(f"{key} must be a column name or None, not {value!r}", field=key)
        if self.rating_col is None and self.label_col is None:
            raise InputError("give rating_col or label_col (or both)", field="rating_col")
        used = [c for c in (self.user_col, self.item_col, self.time_col, self.rating_col, self.label_col) if c]
        if len(set(used)) != len(used):
            raise InputError(f"the mapped columns must be distinct, got {used}", field="columns")
        if self.rating_scale is not None:
            lo, hi = self.rating_scale
            if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo < hi):
                raise InputError(f"rating_scale must be (min, max) with min < max, not {self.rating_scale!r}",
                                 field="rating_scale")

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(c for c in (self.user_col, self.item_col, self.rating_col, self.label_col, self.time_col)
                     if c)


MOVIELENS_CSV_MAPPING = ColumnMapping(user_col="userId", item_col="movieId", time_col="timestamp",
                                      rating_col="rating", rating_scale=MOVIELENS_SCALE)


@dataclass
class _Layout:
    name: str
    ratings: RawFile
    mapping: ColumnMapping
    time_iso: bool = False
    items: RawFile | None = None
    items_kind: str = "csv"          # csv | dat | 100k | custom
    users: RawFile | None = None
    users_kind: str = "dat"          # dat | 100k
    checksum_only: list[Path] = field(default_factory=list)


# ---------------------------------------------------------------- layout detection


def _single_data_file(folder: Path) -> Path | None:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".csv", ".parquet", ".pq",
                                                                                       ".tsv"))
    return files[0] if len(files) == 1 else None


def _find_layout_root(folder: Path) -> Path:
    """The folder itself, or its single sub-folder when it only wraps one (an unzipped release)."""
    markers = ("ratings.csv", "ratings.dat", "u.data")
    if any((folder / m).exists() for m in markers):
        return folder
    subs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subs) == 1 and any((subs[0] / m).exists() for m in markers):
        return subs[0]
    return folder


def _header_raw(path: Path, required: list[str], *, delim: str | None = None) -> RawFile:
    if not path.exists():
        raise InputError("file not found", path=path)
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(path).names
        except Exception as exc:
            raise InputError(f"not a readable Parquet file ({exc})", path=path) from exc
        raw = RawFile(path=path, names=tuple(names))
    else:
        names, delim = read_header(path, delim)
        raw = RawFile(path=path, names=tuple(names), delim=delim)
    for col in required:
        if col not in raw.names:
            raise InputError(f"missing column {col!r} (columns are: {', '.join(raw.names)})", path=path, line=1,
                             field=col)
    return raw


_ML_TYPES = {"userId": "BIGINT", "movieId": "BIGINT", "rating": "DOUBLE", "timestamp": "BIGINT"}


_CAST_WHY = {"userId": "not an integer user id", "movieId": "not an integer item id", "rating": "not a number",
             "timestamp": "not an integer (unix seconds)"}


def _typed(raw: RawFile) -> RawFile:
    """MovieLens ratings: let the CSV reader parse the numbers (bad values are rejected with line + column)."""
    return dataclasses.replace(raw, types=tuple(_ML_TYPES.get(n, "VARCHAR") for n in raw.names))


def _detect(path: Path, columns: ColumnMapping | None, items_path: Path | None) -> _Layout:
    if not path.exists():
        raise InputError("no such file or folder", path=path)
    if path.is_dir():
        root = _find_layout_root(path)
        name = root.name if root.name.startswith("ml-") else "movielens"
        if (root / "synth.json").exists():
            name = "synthetic"
        if columns is None and (root / "ratings.csv").exists():
            return _Layout(
                name=name, mapping=MOVIELENS_CSV_MAPPING,
                ratings=_typed(_header_raw(root / "ratings.csv", list(MOVIELENS_CSV_MAPPING.columns), delim=",")),
                items=_header_raw(root / "movies.csv", ["movieId", "title", "genres"], delim=","),
                checksum_only=[p for p in (root / "tags.csv", root / "links.csv") if p.exists()])
        if columns is None and (root / "ratings.dat").exists():
            has_users = (root / "users.dat").exists()
            scale = STAR_SCALE if has_users else MOVIELENS_SCALE
            names = ("userId", "movieId", "rating", "timestamp")
            return _Layout(
                name=name if name != "movielens" else ("ml-1m" if has_users else "ml-10m"),
                mapping=ColumnMapping("userId", "movieId", "timestamp", rating_col="rating", rating_scale=scale),
                ratings=_typed(RawFile(root / "ratings.dat", names, header=False, delim="::", quote="")),
                items=RawFile(root / "movies.dat", ("movieId", "title", "genres"), header=False, delim="::",
                              quote=""), items_kind="dat",
                users=RawFile(root / "users.dat", ("userId", "gender", "age", "occupation", "zip"), header=False,
                              delim="::", quote="") if has_users else None, users_kind="dat",
                checksum_only=[p for p in (root / "tags.dat",) if p.exists()])
        if columns is None and (root / "u.data").exists():
            item_names = ("movieId", "title", "release", "video", "url") + tuple(f"g{i}" for i in range(19))
            return _Layout(
                name="ml-100k",
                mapping=ColumnMapping("userId", "movieId", "timestamp", rating_col="rating", rating_scale=STAR_SCALE),
                ratings=_typed(RawFile(root / "u.data", ("userId", "movieId", "rating", "timestamp"),
                                       header=False, delim="\t", quote="")),
                items=RawFile(root / "u.item", item_names, header=False, delim="|", quote=""), items_kind="100k",
                users=RawFile(root / "u.user", ("userId", "age", "gender", "occupation", "zip"), header=False,
                              delim="|", quote="") if (root / "u.user").exists() else None, users_kind="100k")
        single = _single_data_file(root)
        if single is None:
            raise InputError("cannot tell the layout: expected ratings.csv + movies.csv, ratings.dat + movies.dat, "
                             "u.data + u.item, or exactly one CSV/Parquet log file with a column mapping",
                             path=path)
        path = single
    mapping = columns or MOVIELENS_CSV_MAPPING
    raw = _header_raw(path, list(mapping.columns))
    layout = _Layout(name="custom", ratings=raw, mapping=mapping, time_iso=True)
    if items_path is not None:
        items_path = Path(items_path)
        names = _header_raw(items_path, []).names
        id_col = next((c for c in (mapping.item_col,) + _ITEM_ID_NAMES if c in names), None)
        if id_col is None:
            raise InputError(f"the items file needs an item id column ({mapping.item_col} or item_id or movieId)",
                             path=items_path, line=1, field=mapping.item_col)
        layout.items = _header_raw(items_path, [id_col])
        layout.items_kind = "custom:" + id_col
    return layout


# ---------------------------------------------------------------- SQL pieces


def _bad_case(checks: list[tuple[str, str, str, str]]) -> tuple[str, str]:
    """CASE expressions giving the first failing ``field|why`` of a row and its raw value; NULL on good rows.

    ``checks``: (SQL condition that is TRUE when bad, field name, raw column name, why it is bad)."""
    field_case = " ".join(f"WHEN {cond} THEN {sql_str(fld + '|' + why)}" for cond, fld, _col, why in checks)
    value_case = " ".join(f"WHEN {cond} THEN CAST({ident(col)} AS VARCHAR)" for cond, _f, col, _w in checks)
    return f"CASE {field_case} END", f"CASE {value_case} END"


def _ratings_select(layout: _Layout) -> str:
    m = layout.mapping
    u, i, t = ident(m.user_col), ident(m.item_col), ident(m.time_col)
    if layout.time_iso:
        time_expr = f"COALESCE(TRY_CAST({t} AS BIGINT), CAST(epoch(TRY_CAST({t} AS TIMESTAMPTZ)) AS BIGINT))"
        time_why = "not unix seconds or an ISO date/datetime"
    else:
        time_expr = f"TRY_CAST({t} AS BIGINT)"
        time_why = "not an integer (unix seconds)"
    checks = [(f"TRY_CAST({u} AS BIGINT) IS NULL", m.user_col, m.user_col, "not an integer user id"),
              (f"TRY_CAST({i} AS BIGINT) IS NULL", m.item_col, m.item_col, "not an integer item id")]
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
    if m.label_col:
        lab = ident(m.label_col)
        label_expr = f"CAST(TRY_CAST({lab} AS INTEGER) AS TINYINT)"
        checks.append((f"TRY_CAST({lab} AS INTEGER) IS NULL OR TRY_CAST({lab} AS INTEGER) NOT IN (0, 1)",
                       m.label_col, m.label_col, "not a 0/1 label"))
    checks.append((f"{time_expr} IS NULL", m.time_col, m.time_col, time_why))
    bad_field, bad_value = _bad_case(checks)
    return (f"TRY_CAST({u} AS BIGINT) AS user_id, TRY_CAST({i} AS BIGINT) AS item_id, {rating_expr} AS rating, "
            f"{label_expr} AS label, {time_expr} AS timestamp, {bad_field} AS bad, {bad_value} AS bad_value")


_YEAR_SQL = r"TRY_CAST(regexp_extract({t}, '\((\d{{4}})\)\s*$', 1) AS INTEGER)"


def _items_select(layout: _Layout) -> str:
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


def _users_select(layout: _Layout) -> str:
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


def _collect_basic(con, staged: Staged, view: str, problems: _Problems) -> None:
    """Malformed lines (from DuckDB's rejects) and rows whose fields failed to parse or validate."""
    raw = staged.raw
    if staged.rejects:
        line, kind, column, text = staged.rejects[0]
        if kind == "CAST" and column in raw.names:
            fields = text.split(raw.delim)
            k = raw.names.index(column)
            value = fields[k] if k < len(fields) else ""
            why = _CAST_WHY.get(column, "not a number")
            problems.add(len(staged.rejects), line, column, f"{why}: {value!r}" if value else f"{why}: <empty>")
        else:
            expected = len(raw.names)
            found = len(text.split(raw.delim)) if text else 0
            problems.add(len(staged.rejects), line, None,
                         f"malformed line: expected {expected} fields separated by {raw.delim!r}, found {found}")
    n_bad, first_row = con.execute(f"SELECT count(*), min(rn) FROM {view} WHERE bad IS NOT NULL").fetchone()
    if n_bad:
        bad, value = con.execute(f"SELECT bad, bad_value FROM {view} WHERE rn = ?", [first_row]).fetchone()
        fld, why = bad.split("|", 1)
        shown = "<empty>" if value is None or value == "" else repr(value)
        problems.add(int(n_bad), staged.line_of(int(first_row)), fld, f"{why}: {shown}")


def _stage_view(con, staged: Staged, view: str) -> None:
    con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT file_row_number AS rn, * "
                f"FROM read_parquet({sql_str(staged.stage)}, file_row_number=true)")


def _require_rows(con, staged: Staged, view: str) -> None:
    n = con.execute(f"SELECT count(*) FROM {view}").fetchone()[0]
    staged.n_rows = int(n)
    if n == 0 and not staged.rejects:
        raise InputError("the file has no data rows", path=staged.raw.path,
                         line=2 if staged.raw.header else 1)


def _dedupe(con, staged: Staged, view: str, keys: list[str], problems: _Problems, table: str,
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
    n, first_row = con.execute(f"SELECT count(*), min(rn) FROM {table}").fetchone()
    if n:
        row = con.execute(f"SELECT first_rn, {key} FROM {table} WHERE rn = ?", [first_row]).fetchone()
        values = ", ".join(f"{k}={v}" for k, v in zip(keys, row[1:]))
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
        >>> ds = load_dataset("data/ml-latest-small", workdir="work")   # doctest: +SKIP
        >>> ds.name, ds.rating_scale   # doctest: +SKIP
        ('ml-latest-small', (0.5, 5.0))
    """
    path, workdir = Path(path), Path(workdir)
    layout = _detect(path, columns, Path(items_path) if items_path is not None else None)
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


def _convert(con, layout: _Layout, scratch: Path, skip: bool) -> dict:
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
    if has_items:
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
    if con.execute("SELECT count(*) FROM ratings_dup").fetchone()[0]:
        exclude.append("rn NOT IN (SELECT rn FROM ratings_dup)")
    if has_items:
        con.execute("""CREATE TEMP TABLE ratings_unknown AS SELECT r.rn, r.item_id FROM ratings_v r
                       ANTI JOIN items_ok i ON r.item_id = i.item_id WHERE r.bad IS NULL""")
        n, first_row = con.execute("SELECT count(*), min(rn) FROM ratings_unknown").fetchone()
        if n:
            item = con.execute("SELECT item_id FROM ratings_unknown WHERE rn = ?", [first_row]).fetchone()[0]
            problems.add(int(n), staged.line_of(int(first_row)), m.item_col,
                         f"unknown item {item}: not in {layout.items.path.name}")
            exclude.append("rn NOT IN (SELECT rn FROM ratings_unknown)")
    problems.raise_first()
    if problems.count:
        skipped[ratings_raw.path.name] = problems.count
    where = " AND ".join(exclude)
    con.execute(f"COPY (SELECT user_id, item_id, rating, label, timestamp FROM ratings_v WHERE {where}) "
                f"TO {sql_str(scratch / 'ratings.parquet')} (FORMAT parquet, COMPRESSION zstd)")
    n_out = con.execute(f"SELECT count(*) FROM read_parquet({sql_str(scratch / 'ratings.parquet')})").fetchone()[0]
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
        lo, hi = con.execute(f"SELECT min(rating), max(rating) FROM "
                             f"read_parquet({sql_str(scratch / 'ratings.parquet')})").fetchone()
        scale = (float(lo), float(hi))
    return {"scale": scale, "skipped": skipped}
