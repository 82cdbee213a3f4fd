"""SparrowRecSys sample CSVs, both ways, and ``read_samples`` for either format.

SparrowRecSys (``FeatureEngForRecModel``) writes 27 columns: ids and rating as numbers, genres as words,
averages and stddevs with two decimals (``format_number``), ``userAvgReleaseYear`` truncated to an integer,
and missing values as ``""``. Its sample CSVs have no list columns: reading one derives ``movieGenres`` from
``movieGenre1..3`` and ``userRecentPositives`` from ``userRatedMovie1..5``; ``userGenreCounts`` and the extra
columns are absent.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from deepcrossing.duck import sql_str
from deepcrossing.errors import InputError
from deepcrossing.features.columns import SAMPLE_COLUMNS

SPARROW_COLUMNS = (
    "movieId", "userId", "rating", "timestamp", "label", "releaseYear", "movieGenre1", "movieGenre2",
    "movieGenre3", "movieRatingCount", "movieAvgRating", "movieRatingStddev", "userRatedMovie1",
    "userRatedMovie2", "userRatedMovie3", "userRatedMovie4", "userRatedMovie5", "userRatingCount",
    "userAvgReleaseYear", "userReleaseYearStddev", "userAvgRating", "userRatingStddev", "userGenre1",
    "userGenre2", "userGenre3", "userGenre4", "userGenre5",
)
# how each column is written: "int", "f1" (one decimal), "f2" (two decimals), "trunc" (integer part), "str"
_WRITE_AS = dict.fromkeys(SPARROW_COLUMNS, "int") | {
    "rating": "f1", "movieAvgRating": "f2", "movieRatingStddev": "f2", "userReleaseYearStddev": "f2",
    "userAvgRating": "f2", "userRatingStddev": "f2", "userAvgReleaseYear": "trunc",
} | {c: "str" for c in SPARROW_COLUMNS if "Genre" in c}




def write_sparrow_csv(con: duckdb.DuckDBPyConnection, source: str, path: Path) -> None:
    """Write samples from relation ``source`` (SQL, e.g. ``read_parquet('train.parquet')``) as a Sparrow CSV.

    Args:
        con: a DuckDB connection.
        source: SQL relation with at least :data:`SPARROW_COLUMNS`.
        path: the CSV to write (header, ``\\n`` line ends, ``""`` for missing values), rows sorted by
            (timestamp, userId, movieId).

    Example:
        >>> write_sparrow_csv(duckdb.connect(), "read_parquet('test.parquet')", Path("test.csv"))  # doctest: +SKIP
    """
    fmt = {
        "int": "CAST({c} AS VARCHAR)",
        "f1": "printf('%.1f', {c})",
        "f2": "printf('%.2f', {c})",
        "trunc": "CAST(CAST(trunc({c}) AS BIGINT) AS VARCHAR)",
        "str": "{c}",
    }
    cols = ", ".join(
        f"COALESCE({fmt[_WRITE_AS[c]].format(c=chr(34) + c + chr(34))}, '') AS \"{c}\"" for c in SPARROW_COLUMNS
    )
    # an empty VARCHAR is written quoted ("") by DuckDB's CSV writer, exactly as SparrowRecSys does
    con.execute(f"COPY (SELECT {cols} FROM {source} ORDER BY timestamp, userId, movieId) TO {sql_str(path)} "
                f"(FORMAT csv, HEADER, DELIMITER ',', QUOTE '\"', NEW_LINE '\\n')")


def _read_sparrow(path: Path) -> pa.Table:
    con = duckdb.connect()
    try:
        con.execute("SET threads = 1")  # keep file order so that errors can name the line
        rel = f"read_csv({sql_str(path)}, header = true, all_varchar = true, auto_detect = false, " \
              f"columns = {{{', '.join(repr(c) + ': ' + repr('VARCHAR') for c in SPARROW_COLUMNS)}}})"
        header = path.open(encoding="utf-8").readline().strip().split(",")
        missing = [c for c in SPARROW_COLUMNS if c not in header]
        if missing:
            raise InputError(f"not a SparrowRecSys sample CSV: column {missing[0]!r} is missing",
                             path=path, line=1, field=missing[0])
        if header != list(SPARROW_COLUMNS):
            rel = f"read_csv({sql_str(path)}, header = true, all_varchar = true)"
        con.execute(f"CREATE TEMP TABLE raw AS SELECT ROW_NUMBER() OVER () + 1 AS line_no, * FROM {rel}")
        kinds = {"int": "BIGINT", "f1": "DOUBLE", "f2": "DOUBLE", "trunc": "DOUBLE", "str": "VARCHAR"}
        for c in SPARROW_COLUMNS:
            kind = kinds[_WRITE_AS[c]]
            if kind == "VARCHAR":
                continue
            bad = con.execute(f'SELECT line_no, "{c}" FROM raw WHERE "{c}" <> \'\' '
                              f'AND TRY_CAST("{c}" AS {kind}) IS NULL ORDER BY line_no LIMIT 1').fetchone()
            if bad:
                raise InputError(f"{bad[1]!r} is not a number", path=path, line=int(bad[0]), field=c)
        schema = {c: SAMPLE_COLUMNS[c][0] for c in SAMPLE_COLUMNS}

        def col(c: str) -> str:
            return f'CAST(NULLIF("{c}", \'\') AS {schema[c]}) AS "{c}"'

        genres = ", ".join(f'NULLIF("movieGenre{i}", \'\')' for i in (1, 2, 3))
        rated = ", ".join(f'CAST(NULLIF("userRatedMovie{i}", \'\') AS BIGINT)' for i in range(1, 6))
        out = []
        for c in SAMPLE_COLUMNS:
            if c in SPARROW_COLUMNS:
                out.append(col(c))
            elif c == "movieGenres":
                out.append(f"list_filter([{genres}], lambda x: x IS NOT NULL) AS movieGenres")
            elif c == "userRecentPositives":
                out.append(f"list_filter([{rated}], lambda x: x IS NOT NULL) AS userRecentPositives")
        return con.sql(f"SELECT {', '.join(out)} FROM raw ORDER BY line_no").to_arrow_table()
    finally:
        con.close()


def read_samples(path: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """Read a sample file, ours (Parquet) or SparrowRecSys's (CSV), into our sample schema.

    Args:
        path: ``train.parquet`` etc. written by :func:`build_samples`, or a SparrowRecSys sample CSV such as
            ``testSamples.csv`` (or one written by ``prepare --format sparrow``).
        columns: read only these columns of a Parquet file (those it has; ``userId``, ``movieId`` and
            ``label`` always), e.g. the feature spec's: the other columns are never loaded. CSV files are read
            whole.

    Returns:
        A pyarrow Table with the columns of :data:`deepcrossing.features.sql.SAMPLE_COLUMNS` that the file
        has or that can be derived, in that order, with those types (``""`` becomes null).

    Example:
        >>> t = read_samples("../shared/data/sparrowrecsys/testSamples.csv")  # doctest: +SKIP
        >>> t.num_rows, t.schema.field("userRecentPositives").type  # doctest: +SKIP
        (22440, DataType(list<element: int64>))
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("sample file not found", path=path)
    if path.suffix == ".parquet":
        try:
            names = pq.read_schema(path).names
            for c in ("userId", "movieId", "label"):
                if c not in names:
                    raise InputError(f"not a sample file: column {c!r} is missing", path=path, field=c)
            wanted = None if columns is None else [c for c in names if c in {*columns, "userId", "movieId", "label"}]
            return pq.read_table(path, columns=wanted)
        except pa.ArrowInvalid as exc:
            raise InputError(f"not a Parquet file: {exc}", path=path) from exc
    if path.suffix in (".csv", ".txt"):
        return _read_sparrow(path)
    raise InputError("unknown sample file type; expected .parquet or a SparrowRecSys .csv", path=path)
