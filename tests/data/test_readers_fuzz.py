"""Fuzz the readers: malformed files of every layout either load or raise InputError, never anything else.

Hypothesis writes small files (wrong field counts, junk and non-UTF-8 bytes, empty files, huge numbers, NaN,
negative ids, missing headers, quotes, BOMs, other delimiters, overlong lines) in the MovieLens CSV (with or
without links.csv), ``::`` and ml-100k layouts and as a person's own log (+ items file), and calls
:func:`load_dataset` on each folder.
1,200 examples of 1 to 3 files each write over 2,000 generated files (checked), in well under 90 s: the
files are tiny and one workdir is reused. ``FUZZ_EXAMPLES=N`` runs more (or fewer) examples.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepcrossing.data import ColumnMapping, load_dataset
from deepcrossing.data._duck import MAX_LINE_BYTES
from deepcrossing.errors import InputError

NUMBERS = st.sampled_from(["1", "2", "3", "0", "-1", "4.0", "3.5", "0.5", "5", "7", "1e17", "1e400", "nan", "NaN",
                           "inf", "-inf", "", " ", "9223372036854775808", "-9223372036854775809",
                           "964982703", "964982703000", "99999999999999999999999", "0x10", "1_000", "+3",
                           "2020-01-31", "2020-01-31T12:00:00Z", "abc", '"4"', '"', "''", "null", "NULL", "\\N"])
JUNK = st.sampled_from(["\x00", "\ufeff", "\u00e9", "\u2028", "\r", '"', "'", ",", ";", "|", "\t", "::", ":",
                        "\\", "\x1b", "\U0001f600", "\ud7ff"])
FIELD = st.one_of(NUMBERS, st.text(max_size=6), JUNK, st.integers(-2**70, 2**70).map(str),
                  st.floats(allow_nan=True, allow_infinity=True).map(repr))
DELIMS = st.sampled_from([",", "::", "\t", "|", ";", " "])
HEADERS = st.sampled_from([
    "userId,movieId,rating,timestamp", "movieId,title,genres", "", "userId,movieId,rating",
    "\ufeffuserId,movieId,rating,timestamp", '"userId","movieId","rating","timestamp"',
    "userId;movieId;rating;timestamp", "user,item,rating,time", "userId,userId,rating,timestamp"])


@st.composite
def lines(draw: st.DrawFn, n_fields: int, delim: str) -> str:
    rows = []
    for _ in range(draw(st.integers(0, 5))):
        width = draw(st.sampled_from([n_fields, n_fields, n_fields, n_fields - 1, n_fields + 1, 1, 0]))
        rows.append(draw(DELIMS | st.just(delim)).join(draw(FIELD) for _ in range(max(width, 0))))
    ending = draw(st.sampled_from(["\n", "\r\n", "\n\n", ""]))
    return ending.join(rows) + (ending if draw(st.booleans()) else "")


@st.composite
def text_file(draw: st.DrawFn, n_fields: int, delim: str, header: str | None) -> bytes:
    body = draw(lines(n_fields, delim))
    if header is not None:
        head = draw(HEADERS | st.just(header))
        body = head + "\n" + body
    data = body.encode(draw(st.sampled_from(["utf-8", "latin-1", "utf-16"])), errors="replace")
    mutation = draw(st.sampled_from(["none", "none", "none", "bytes", "cut", "empty", "long"]))
    if mutation == "bytes":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    elif mutation == "cut":
        data = data[:draw(st.integers(0, len(data)))]
    elif mutation == "empty":
        data = b""
    elif mutation == "long":
        data += b"1" + b"9" * (MAX_LINE_BYTES + 10) + b"\n"
    return data


GOOD_MOVIES = "movieId,title,genres\n1,A (1999),Drama\n2,B,Comedy|Drama\n3,C (2001),(no genres listed)\n"
GOOD_RATINGS = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.5,964982704\n2,3,5.0,964982705\n"
GOOD_LINKS = "movieId,imdbId,tmdbId\n1,0114709,862\n2,0113497,\n"
ITEM_100K = "|".join(["1", "A (1999)", "01-Jan-1999", "", "http://x"] + ["0"] * 18 + ["1"]) + "\n"
GOOD_DAT = "1::1::4::964982703\n1::2::3::964982704\n2::1::5::964982705\n"
MOVIES_DAT = "1::Am\u00e9lie (2001)::Comedy|Romance\n2::B (1999)::Drama\n"
USERS_DAT = "1::F::1::10::48067\n2::M::56::16::70072\n"
USERS_100K = "1|24|M|technician|85711\n2|53|F|other|94043\n"


@st.composite
def malformed(draw: st.DrawFn, n_fields: int, delim: str, header: str | None) -> bytes | None:
    """A generated file (7 times in 8), else ``None``: the layout's well-formed sample is used instead."""
    if draw(st.integers(0, 7)) == 0:
        return None
    return draw(text_file(n_fields, delim, header))


@st.composite
def release(draw: st.DrawFn) -> tuple[str, dict[str, bytes], ColumnMapping | None, int]:
    """(layout, {file name: bytes}, column mapping, how many of the files were generated)."""
    kind = draw(st.sampled_from(["csv", "dat", "100k", "custom"]))
    wanted: list[tuple[str, int, str, str | None, str, str]] = {
        "csv": [("ratings.csv", 4, ",", "userId,movieId,rating,timestamp", GOOD_RATINGS, "utf-8"),
                ("movies.csv", 3, ",", "movieId,title,genres", GOOD_MOVIES, "utf-8"),
                ("links.csv", 3, ",", "movieId,imdbId,tmdbId", GOOD_LINKS, "utf-8")],
        "dat": [("ratings.dat", 4, "::", None, GOOD_DAT, "utf-8"), ("movies.dat", 3, "::", None, MOVIES_DAT, "latin-1"),
                ("users.dat", 5, "::", None, USERS_DAT, "utf-8")],
        "100k": [("u.data", 4, "\t", None, GOOD_DAT.replace("::", "\t"), "utf-8"),
                 ("u.item", 24, "|", None, ITEM_100K, "latin-1"), ("u.user", 5, "|", None, USERS_100K, "utf-8")],
        "custom": [("log.csv", 4, ",", "u,i,r,t", GOOD_RATINGS.replace("userId,movieId,rating,timestamp", "u,i,r,t"),
                    "utf-8"), ("items.csv", 3, ",", "i,title,genres", GOOD_MOVIES.replace("movieId", "i"), "utf-8")],
    }[kind]
    files: dict[str, bytes] = {}
    generated = 0
    for name, n_fields, delim, header, good, encoding in wanted:
        if name in ("users.dat", "u.user", "items.csv", "links.csv") and draw(st.integers(0, 3)) == 0:
            continue
        if kind == "custom" and name == "log.csv":
            delim = draw(st.sampled_from([",", "\t", ";", "|"]))
            header = delim.join(["u", "i", "r", "t"])
        data = draw(malformed(n_fields, delim, header))
        generated += data is not None
        files[name] = data if data is not None else good.encode(encoding)
    mapping = ColumnMapping("u", "i", "t", rating_col="r") if kind == "custom" else None
    return kind, files, mapping, generated


EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1200"))
GENERATED = {"files": 0}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("fuzz")
    if EXAMPLES >= 1200:  # the bar: at least 2,000 generated malformed files per run
        assert GENERATED["files"] >= 2000, GENERATED


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(case=release(), skip=st.booleans())
def test_malformed_files_load_or_raise_input_error(case: tuple[str, dict[str, bytes], ColumnMapping | None, int],
                                                   skip: bool, workdir: Path) -> None:
    kind, files, mapping, generated = case
    GENERATED["files"] += generated
    folder = workdir / "in"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    target = folder / "log.csv" if kind == "custom" else folder
    items = folder / "items.csv" if "items.csv" in files else None
    try:
        ds = load_dataset(target, workdir=workdir / "out", columns=mapping, items_path=items, skip_bad_rows=skip)
    except InputError as exc:  # any other exception fails the test
        message = str(exc)
        assert "\n" not in message.strip() and len(message) < 1000, message[:2000]
    else:
        assert ds.ratings.exists() and ds.items.exists()
