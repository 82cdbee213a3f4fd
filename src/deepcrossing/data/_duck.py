"""DuckDB plumbing shared by the readers: a bounded connection and a raw-file scanner that keeps line numbers.

Every raw file is scanned once, all fields as text, into a staged Parquet file (insertion order kept, so the
Parquet ``file_row_number`` is the n-th data row that parsed). Malformed lines (wrong field count) are set aside
by DuckDB's ``store_rejects`` with their 1-based line numbers; the other checks are SQL over the staged file, and
:func:`row_to_line` maps a staged row back to its line in the source.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

import duckdb

from deepcrossing.duck import connect, ident, sql_str
from deepcrossing.errors import InputError

__all__ = ["MAX_LINE_BYTES", "RawFile", "Staged", "connect", "excerpt", "ident", "read_header", "sql_str", "stage"]

MAX_LINE_BYTES = 1 << 20   # longer lines are malformed (a rating log's lines are ~30 bytes; titles < 1 KiB)
EXCERPT_CHARS = 80


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """``repr`` of a value from a file, cut to about ``limit`` characters: error messages quote no more.

    Example:
        >>> excerpt("x" * 1000, 12)
        "'xxxxxxxxx'... (1,000 characters)"
        >>> excerpt("4.5")
        "'4.5'"
    """
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:max(1, limit - 3)]!r}... ({len(text):,} characters)"



@dataclass(frozen=True)
class RawFile:
    """How to scan one raw text or Parquet file.

    Args:
        path: the file as the person gave it (used in error messages and checksums).
        names: column names in file order (from the header, or the layout's fixed names).
        header: whether line 1 is a header.
        delim: field separator (``","``, ``"::"``, ``"\\t"``, ``"|"``); ignored for Parquet.
        quote: quote character, ``""`` for none (the ``::`` and ml-100k files are unquoted).
        read_path: the file DuckDB reads, when it differs from ``path`` (latin-1 files transcoded to UTF-8).
        types: DuckDB type per column (default all VARCHAR). Typed columns are parsed by the CSV reader
            itself (much faster on big files); a value that does not parse is rejected with its line and column.
    """

    path: Path
    names: tuple[str, ...]
    header: bool = True
    delim: str = ","
    quote: str = '"'
    read_path: Path | None = None
    types: tuple[str, ...] | None = None

    @property
    def is_parquet(self) -> bool:
        return self.path.suffix.lower() in (".parquet", ".pq")


@dataclass
class Staged:
    """A raw file scanned into ``stage`` (Parquet), with the lines DuckDB rejected as malformed.

    ``rejects`` is a sorted list of (line, error_type, column_name, csv_line) for lines DuckDB rejected: the
    wrong field count (``MISSING COLUMNS``, ``TOO MANY COLUMNS``, ...) or a typed column that did not parse
    (``CAST``).
    """

    raw: RawFile
    stage: Path
    rejects: list[tuple[int, str, str | None, str]]
    n_rows: int | None = None          # rows that parsed (set once counted)
    _exact: bool | None = None         # True when the file has no blank lines (the fast mapping is exact)

    def line_of(self, row: int) -> int:
        """1-based source line of staged row ``row`` (0-based), accounting for header and rejected lines.

        DuckDB drops blank lines silently; when the file has any (its newline count says so), the line is
        found by one scan of the file, which only happens on the error path."""
        header = self.raw.header and not self.raw.is_parquet
        fast = row_to_line(row, header=header, rejected=[r[0] for r in self.rejects])
        if self.raw.is_parquet or self.exact:
            return fast
        return scan_line(self.raw.read_path or self.raw.path, row, header=header,
                         rejected={r[0] for r in self.rejects})

    @property
    def exact(self) -> bool:
        """Whether every line of the text file is the header, a parsed row or a rejected line (one count of
        its newlines; the first call after ``n_rows`` is set pays it)."""
        if self._exact is None:
            header = self.raw.header and not self.raw.is_parquet
            physical = count_lines(self.raw.read_path or self.raw.path)
            expected = (1 if header else 0) + len(self.rejects) + (self.n_rows or 0)
            self._exact = self.n_rows is not None and physical == expected
        return self._exact

    def reject_long_lines(self) -> None:
        """Add the lines longer than :data:`MAX_LINE_BYTES` that DuckDB dropped without a word to ``rejects``.

        DuckDB records a long line as rejected only while it fits its read buffer; a longer one (tens of MB)
        vanishes. When the lines do not add up, one scan of the file finds them (blank lines, also dropped,
        are the other, harmless reason)."""
        if self.raw.is_parquet or self.exact:
            return
        known = {r[0] for r in self.rejects}
        found = [line for line in long_lines(self.raw.read_path or self.raw.path, MAX_LINE_BYTES)
                 if line not in known]
        if found:
            self.rejects = sorted(self.rejects + [(line, "LINE SIZE OVER MAXIMUM", None, "") for line in found])
            self._exact = None

    @property
    def reject_count(self) -> int:
        return len(self.rejects)


def count_lines(path: Path) -> int:
    """Physical lines of a text file (a last line without a newline counts), in 8 MiB chunks."""
    n, last = 0, b"\n"
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def long_lines(path: Path, limit: int) -> list[int]:
    """1-based numbers of the lines of ``path`` longer than ``limit`` bytes (newline excluded), in 8 MiB
    chunks with NumPy (no Python loop per line).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = (Path(d) / "f").write_bytes(b"ab\\n" + b"x" * 10 + b"\\nc\\n" + b"y" * 9)
        ...     long_lines(Path(d) / "f", 8)
        [2, 4]
    """
    import numpy as np

    found: list[int] = []
    line, run = 1, 0      # current line number, its length so far
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            ends = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10)
            if ends.size == 0:
                run += len(chunk)
                continue
            lengths = np.diff(ends, prepend=-1) - 1
            lengths[0] += run
            found.extend(int(line + k) for k in np.flatnonzero(lengths > limit))
            line += int(ends.size)
            run = len(chunk) - int(ends[-1]) - 1
    if run > limit:
        found.append(line)
    return found


def scan_line(path: Path, row: int, *, header: bool, rejected: set[int]) -> int:
    """Line of the ``row``-th parsed data row, skipping the header, blank lines and rejected lines."""
    seen = -1
    with open(path, "rb") as handle:
        for lineno, text in enumerate(handle, 1):
            if (header and lineno == 1) or lineno in rejected or not text.strip():
                continue
            seen += 1
            if seen == row:
                return lineno
    return row_to_line(row, header=header, rejected=sorted(rejected))


def row_to_line(row: int, *, header: bool, rejected: list[int]) -> int:
    """Map the 0-based index of a parsed data row to its 1-based line in the file.

    Example:
        >>> row_to_line(1, header=True, rejected=[3])   # lines: 1 header, 2 row0, 3 rejected, 4 row1
        4
    """
    line = row + 1 + (1 if header else 0)
    # every rejected line at or before the candidate pushes it one further
    i = 0
    rejected = sorted(rejected)
    while True:
        n = bisect.bisect_right(rejected, line)
        if n == i:
            return line
        line += n - i
        i = n


def read_header(path: Path, delim: str | None = None) -> tuple[list[str], str]:
    """Read the header of a delimited text file; guess the delimiter among , tab ; | when not given.

    Raises:
        InputError: the file is empty, or its first line is longer than :data:`MAX_LINE_BYTES`.
    """
    with open(path, "rb") as handle:
        first = handle.readline(MAX_LINE_BYTES + 1)
    if len(first) > MAX_LINE_BYTES:
        raise InputError(f"line 1 is longer than {MAX_LINE_BYTES:,} bytes: not a header line (is this a rating "
                         "log with line breaks?)", path=path, line=1)
    text = first.decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r\n")
    if not text.strip():
        raise InputError("the file is empty (expected a header line)", path=path, line=1)
    if delim is None:
        delim = max([",", "\t", ";", "|"], key=text.count)
    names = [name.strip().strip('"').strip() for name in text.split(delim)]
    return names, delim


def scan_sql(raw: RawFile, rejects_table: str) -> str:
    """SQL ``FROM`` item that reads ``raw`` with every column as VARCHAR."""
    if raw.is_parquet:
        cols = ", ".join(f"CAST({ident(n)} AS VARCHAR) AS {ident(n)}" for n in raw.names)
        return f"(SELECT {cols} FROM read_parquet({sql_str(raw.path)}))"
    types = raw.types or ("VARCHAR",) * len(raw.names)
    columns = "{" + ", ".join(f"{sql_str(n)}: {sql_str(t)}" for n, t in zip(raw.names, types)) + "}"
    quote = sql_str(raw.quote)
    return (
        f"read_csv({sql_str(raw.read_path or raw.path)}, header={str(raw.header).lower()}, "
        f"delim={sql_str(raw.delim)}, quote={quote}, escape={quote}, columns={columns}, auto_detect=false, "
        f"store_rejects=true, rejects_table={sql_str(rejects_table)}, "
        f"rejects_scan={sql_str(rejects_table + '_scan')}, max_line_size={MAX_LINE_BYTES})"
    )


def stage(con: duckdb.DuckDBPyConnection, raw: RawFile, select: str, out: Path, tag: str) -> Staged:
    """Scan ``raw`` and write ``SELECT {select} FROM <scan>`` to the Parquet file ``out``.

    ``select`` refers to the raw VARCHAR columns by their quoted names.
    """
    if not raw.path.exists():
        raise InputError("file not found", path=raw.path)
    if raw.path.is_file() and raw.path.stat().st_size == 0:
        raise InputError("the file is empty", path=raw.path, line=1)
    table = f"rejects_{tag}"
    try:
        con.execute(f"COPY (SELECT {select} FROM {scan_sql(raw, table)}) TO {sql_str(out)} "
                    "(FORMAT parquet, COMPRESSION snappy)")
    except duckdb.Error as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise InputError(f"cannot read the file: {first[:200]}", path=raw.path) from None
    rejects: list[tuple[int, str, str | None, str]] = []
    if not raw.is_parquet:
        try:
            rows = con.execute(
                f"SELECT line, arg_min(error_type, column_idx), arg_min(column_name, column_idx), "
                f"any_value(csv_line) FROM {table} GROUP BY line ORDER BY line").fetchall()
            rejects = [(int(line), str(kind), name, str(text)) for line, kind, name, text in rows]
            con.execute(f"DROP TABLE IF EXISTS {table}; DROP TABLE IF EXISTS {table}_scan")
        except duckdb.CatalogException:
            rejects = []
    return Staged(raw=raw, stage=out, rejects=rejects)


def transcode_if_needed(path: Path, out_dir: Path) -> Path | None:
    """Return a UTF-8 copy of a small text file that is not valid UTF-8 (read as latin-1), else ``None``."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        return None
    except UnicodeDecodeError:
        out = out_dir / (path.name + ".utf8")
        out.write_text(data.decode("latin-1"), encoding="utf-8")
        return out
