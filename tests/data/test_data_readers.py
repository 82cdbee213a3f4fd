"""Readers: every layout on small files written here, every bad-input case with its exact file/line/field."""

from __future__ import annotations

import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deepcrossing.data import ColumnMapping, load_dataset
from deepcrossing.data._duck import row_to_line
from deepcrossing.errors import InputError

MOVIES_CSV = (
    "movieId,title,genres\n"
    "1,Toy Story (1995),Adventure|Animation|Children\n"
    '2,"American President, The (1995) ",Comedy|Drama|Romance\n'
    "3,Babylon 5,(no genres listed)\n"
)
RATINGS_CSV = (
    "userId,movieId,rating,timestamp\n"
    "1,1,4.0,964982703\n"
    "1,2,0.5,964981247\n"
    "2,1,5.0,964982224\n"
    "2,3,3.5,964983815\n"
)


def rows(path: Path, order: str = "user_id, item_id, timestamp") -> list[tuple]:
    return duckdb.sql(f"SELECT * FROM read_parquet('{path}') ORDER BY {order}").fetchall()


def items_rows(path: Path) -> list[tuple]:
    """The items table's first four columns (the links columns: tests/data/test_links.py)."""
    return duckdb.sql(f"SELECT item_id, title, year, genres FROM read_parquet('{path}') ORDER BY item_id").fetchall()


def write(folder: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(text.encode(encoding))
    return folder / name


@pytest.fixture
def csv_release(tmp_path: Path) -> Path:
    folder = tmp_path / "ml-latest-small"
    write(folder, "movies.csv", MOVIES_CSV)
    write(folder, "ratings.csv", RATINGS_CSV)
    write(folder, "links.csv", "movieId,imdbId,tmdbId\n1,0114709,862\n")
    return folder


# ------------------------------------------------------------------ layouts


def test_csv_release(csv_release: Path, tmp_path: Path) -> None:
    ds = load_dataset(csv_release, workdir=tmp_path / "w")
    assert ds.name == "ml-latest-small" and ds.rating_scale == (0.5, 5.0) and ds.users is None
    assert rows(ds.ratings) == [(1, 1, 4.0, None, 964982703), (1, 2, 0.5, None, 964981247),
                                (2, 1, 5.0, None, 964982224), (2, 3, 3.5, None, 964983815)]
    assert items_rows(ds.items) == [
        (1, "Toy Story (1995)", 1995, ["Adventure", "Animation", "Children"]),
        (2, "American President, The (1995)", 1995, ["Comedy", "Drama", "Romance"]),  # trailing space
        (3, "Babylon 5", None, []),
    ]
    assert set(ds.sources) == {"ratings.csv", "movies.csv", "links.csv"}
    assert all(len(v) == 64 for v in ds.sources.values())
    schema = pq.read_schema(ds.ratings)
    assert [(f.name, str(f.type)) for f in schema] == [("user_id", "int64"), ("item_id", "int64"),
                                                       ("rating", "double"), ("label", "int8"),
                                                       ("timestamp", "int64")]
    # only the outputs are left in workdir (staging removed)
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["items.parquet", "ratings.parquet"]


def test_dat_release_latin1_with_users(tmp_path: Path) -> None:
    folder = tmp_path / "ml-1m"
    write(folder, "movies.dat", "1::Toy Story (1995)::Animation|Children's|Comedy\n"
                                "2::Misérables, Les (1995)::Drama|Musical\n", encoding="latin-1")
    write(folder, "ratings.dat", "1::1::5::978300760\n1::2::3::978302109\n2::2::1::978301968\n")
    write(folder, "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    ds = load_dataset(folder, workdir=tmp_path / "w")
    assert ds.name == "ml-1m" and ds.rating_scale == (1.0, 5.0)
    assert items_rows(ds.items)[1] == (2, "Misérables, Les (1995)", 1995, ["Drama", "Musical"])
    assert rows(ds.ratings)[0] == (1, 1, 5.0, None, 978300760)
    assert duckdb.sql(f"SELECT * FROM read_parquet('{ds.users}') ORDER BY user_id").fetchall() == [
        (1, "F", 1, "10", "48067"), (2, "M", 56, "16", "70072")]
    # ml-10m: no users.dat, half stars
    folder10 = tmp_path / "ml-10M100K"
    write(folder10, "movies.dat", "1::Toy Story (1995)::Animation\n")
    write(folder10, "ratings.dat", "1::1::4.5::838985046\n")
    ds10 = load_dataset(folder10, workdir=tmp_path / "w10")
    assert ds10.rating_scale == (0.5, 5.0) and ds10.users is None and rows(ds10.ratings)[0][2] == 4.5


def test_ml100k_genre_flags(tmp_path: Path) -> None:
    folder = tmp_path / "ml-100k"
    flags_toy = ["0"] * 19
    for g in (3, 4, 5):          # Animation, Children's, Comedy
        flags_toy[g] = "1"
    flags_unknown = ["1"] + ["0"] * 18
    item = ("1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(flags_toy) + "\n"
            "2|Café Society (1995)|01-Jan-1995||http://y|0|0|0|0|0|0|0|0|1|0|1|0|0|0|0|0|0|1|0\n"
            "267|unknown||||" + "|".join(flags_unknown) + "\n")
    write(folder, "u.item", item, encoding="latin-1")
    write(folder, "u.data", "196\t1\t3\t881250949\n186\t2\t1\t891717742\n22\t267\t5\t878887116\n")
    write(folder, "u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n")
    ds = load_dataset(folder, workdir=tmp_path / "w")
    assert ds.name == "ml-100k" and ds.rating_scale == (1.0, 5.0)
    assert items_rows(ds.items) == [(1, "Toy Story (1995)", 1995, ["Animation", "Children's", "Comedy"]),
                                    (2, "Café Society (1995)", 1995, ["Drama", "Film-Noir", "War"]),
                                    (267, "unknown", None, [])]
    assert rows(ds.ratings) == [(22, 267, 5.0, None, 878887116), (186, 2, 1.0, None, 891717742),
                                (196, 1, 3.0, None, 881250949)]
    assert duckdb.sql(f"SELECT user_id, gender, age FROM read_parquet('{ds.users}')").fetchall() == [
        (1, "M", 24), (2, "F", 53)]


def test_custom_csv_iso_times_and_items(tmp_path: Path) -> None:
    log = write(tmp_path, "events.csv", "uid;sku;stars;when\n"
                                         "7;100;8;2020-01-02\n"
                                         "7;101;3;2020-01-02T03:04:05Z\n"
                                         "8;100;10;1577923200\n")
    items = write(tmp_path, "catalog.csv", "sku,title,genres\n100,Widget (2019),Tools|Home\n101,Gadget,\n")
    mapping = ColumnMapping(user_col="uid", item_col="sku", rating_col="stars", time_col="when")
    ds = load_dataset(log, workdir=tmp_path / "w", columns=mapping, items_path=items)
    assert ds.name == "custom" and ds.rating_scale == (3.0, 10.0)
    assert rows(ds.ratings) == [(7, 100, 8.0, None, 1577923200), (7, 101, 3.0, None, 1577934245),
                                (8, 100, 10.0, None, 1577923200)]
    assert items_rows(ds.items) == [(100, "Widget (2019)", 2019, ["Tools", "Home"]), (101, "Gadget", None, [])]


def test_custom_parquet_label_only_without_items(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    table = pa.table({"user": [1, 1, 2], "item": [10, 11, 10], "clicked": [1, 0, 1],
                      "ts": pa.array([1_600_000_000, 1_600_000_100, 1_600_000_200], pa.int64())})
    pq.write_table(table, folder / "clicks.parquet")
    mapping = ColumnMapping(user_col="user", item_col="item", label_col="clicked", time_col="ts")
    ds = load_dataset(folder, workdir=tmp_path / "w", columns=mapping)
    assert ds.rating_scale is None
    assert rows(ds.ratings) == [(1, 10, None, 1, 1_600_000_000), (1, 11, None, 0, 1_600_000_100),
                                (2, 10, None, 1, 1_600_000_200)]
    assert items_rows(ds.items) == [(10, None, None, []), (11, None, None, [])]


def test_label_must_be_zero_or_one(tmp_path: Path) -> None:
    log = write(tmp_path, "l.csv", "u,i,y,t\n1,1,1,5\n1,2,2,6\n")
    mapping = ColumnMapping(user_col="u", item_col="i", label_col="y", time_col="t")
    with pytest.raises(InputError) as err:
        load_dataset(log, workdir=tmp_path / "w", columns=mapping)
    assert (err.value.path, err.value.line, err.value.field) == (str(log), 3, "y")
    assert "0/1" in err.value.message


def test_column_mapping_validates() -> None:
    with pytest.raises(InputError, match="rating_col or label_col"):
        ColumnMapping(user_col="u", item_col="i", time_col="t")
    with pytest.raises(InputError, match="distinct"):
        ColumnMapping(user_col="u", item_col="u", time_col="t", rating_col="r")
    with pytest.raises(InputError) as err:
        ColumnMapping(user_col="", item_col="i", time_col="t", rating_col="r")
    assert err.value.field == "user_col"
    with pytest.raises(InputError):
        ColumnMapping(user_col="u", item_col="i", time_col="t", rating_col="r", rating_scale=(5, 1))


def test_row_to_line_skips_rejected_lines() -> None:
    assert row_to_line(0, header=True, rejected=[]) == 2
    assert row_to_line(0, header=False, rejected=[]) == 1
    assert row_to_line(1, header=True, rejected=[3, 4]) == 5
    assert row_to_line(2, header=True, rejected=[3, 5, 6]) == 7


# ------------------------------------------------------------------ bad input

BAD_CASES = [
    # (name, ratings.csv body after the header, expected line, field, message part)
    ("non-numeric rating", "1,1,4.0,10\n1,2,abc,11\n2,1,3.0,12\n", 3, "rating", "not a number: 'abc'"),
    ("non-numeric timestamp", "1,1,4.0,10\n1,2,3.0,yesterday\n", 3, "timestamp", "not an integer"),
    ("rating outside scale", "1,1,4.0,10\n1,2,3.0,11\n2,1,7.0,12\n", 4, "rating", "outside the rating scale"),
    ("zero rating", "1,1,0.0,10\n1,2,3.0,11\n", 2, "rating", "outside the rating scale 0.5..5"),
    ("duplicate", "1,1,4.0,10\n2,1,3.0,10\n1,1,2.0,10\n", 4, "timestamp", "already on line 2"),
    ("unknown item", "1,1,4.0,10\n1,99,3.0,11\n", 3, "movieId", "unknown item 99"),
    ("bad user id", "x,1,4.0,10\n1,2,3.0,11\n", 2, "userId", "not an integer user id"),
    ("fractional item id", "1,1,4.0,10\n1,2.5,3.0,11\n", 3, "movieId", "not an integer item id: '2.5'"),
    ("fractional timestamp", "1,1,4.0,10\n1,2,3.0,11.5\n", 3, "timestamp", "not an integer"),
    ("millisecond timestamp", "1,1,4.0,10\n1,2,3.0,964982703000\n", 3, "timestamp", "looks like milliseconds"),
    ("timestamp 1e17", "1,1,4.0,10\n1,2,3.0,100000000000000000\n", 3, "timestamp", "out of range"),
    ("huge user id", "1,1,4.0,10\n99999999999999999999,2,3.0,11\n", 3, "userId", "not an integer user id"),
    ("long value quoted short", "1,1,4.0,10\n1,2," + "x" * 5000 + ",11\n", 3, "rating", "(5,000 characters)"),
]


@pytest.mark.parametrize("name,body,line,field,part", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_ratings_raise_and_skip(tmp_path: Path, name: str, body: str, line: int, field: str,
                                    part: str) -> None:
    folder = tmp_path / "ml"
    write(folder, "movies.csv", MOVIES_CSV)
    ratings = write(folder, "ratings.csv", "userId,movieId,rating,timestamp\n" + body)
    with pytest.raises(InputError) as err:
        load_dataset(folder, workdir=tmp_path / "w")
    assert (err.value.path, err.value.line, err.value.field) == (str(ratings), line, field)
    assert part in err.value.message
    assert not (tmp_path / "w" / "ratings.parquet").exists()  # no partial output
    ds = load_dataset(folder, workdir=tmp_path / "w", skip_bad_rows=True)
    assert ds.skipped_rows == {"ratings.csv": 1}
    n_good = body.count("\n") - 1
    assert len(rows(ds.ratings)) == n_good


def test_malformed_lines_are_located_and_counted(tmp_path: Path) -> None:
    folder = tmp_path / "ml"
    write(folder, "movies.csv", MOVIES_CSV)
    ratings = write(folder, "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,10\n1,2,3.0\n"
                                           "1,3,3.0,11,9\n2,1,7.0,12\n2,2,4.0,13\n")
    with pytest.raises(InputError) as err:
        load_dataset(folder, workdir=tmp_path / "w")
    assert (err.value.path, err.value.line) == (str(ratings), 3)
    assert "expected 4 fields" in err.value.message and "found 3" in err.value.message
    ds = load_dataset(folder, workdir=tmp_path / "w", skip_bad_rows=True)
    # 2 malformed lines + the 7.0 rating (line 5, located past the rejected lines)
    assert ds.skipped_rows == {"ratings.csv": 3}
    assert rows(ds.ratings) == [(1, 1, 4.0, None, 10), (2, 2, 4.0, None, 13)]


def test_range_error_line_counts_rejected_lines(tmp_path: Path) -> None:
    folder = tmp_path / "ml"
    write(folder, "movies.csv", MOVIES_CSV)
    ratings = write(folder, "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,10\n1,2,3.0,11,5\n"
                                           "2,1,9.0,12\n")
    with pytest.raises(InputError) as err:
        load_dataset(folder, workdir=tmp_path / "w")
    assert err.value.line == 3      # the malformed line comes first
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,10\n2,1,9.0,12\n1,2,3.0,11,5\n")
    with pytest.raises(InputError) as err:
        load_dataset(folder, workdir=tmp_path / "w")
    assert (err.value.line, err.value.field) == (3, "rating")
    del ratings


def test_missing_file_column_empty(tmp_path: Path) -> None:
    folder = tmp_path / "ml"
    write(folder, "ratings.csv", RATINGS_CSV)
    with pytest.raises(InputError) as err:
        load_dataset(folder, workdir=tmp_path / "w")
    assert err.value.path == str(folder / "movies.csv") and "not found" in err.value.message
    write(folder, "movies.csv", "movieId,title\n1,Toy Story (1995)\n")
    with pytest.raises(InputError) as err:
        load_dataset(folder, workdir=tmp_path / "w", skip_bad_rows=True)
    assert (err.value.path, err.value.line, err.value.field) == (str(folder / "movies.csv"), 1, "genres")
    write(folder, "movies.csv", MOVIES_CSV)
    write(folder, "ratings.csv", "")
    with pytest.raises(InputError) as err:
        load_dataset(folder, workdir=tmp_path / "w", skip_bad_rows=True)
    assert (err.value.path, err.value.line) == (str(folder / "ratings.csv"), 1)
    assert "empty" in err.value.message
    write(folder, "ratings.csv", "userId,movieId,rating,timestamp\n")
    with pytest.raises(InputError) as err:
        load_dataset(folder, workdir=tmp_path / "w")
    assert (err.value.line, "no data rows") == (2, "no data rows") and "no data rows" in err.value.message
    with pytest.raises(InputError, match="no such file"):
        load_dataset(tmp_path / "nope", workdir=tmp_path / "w")


def test_bad_items_file(tmp_path: Path) -> None:
    folder = tmp_path / "ml"
    movies = write(folder, "movies.csv", MOVIES_CSV + "3,Dup (2000),Drama\nabc,X (2001),Drama\n")
    write(folder, "ratings.csv", RATINGS_CSV)
    with pytest.raises(InputError) as err:
        load_dataset(folder, workdir=tmp_path / "w")
    assert (err.value.path, err.value.line, err.value.field) == (str(movies), 5, "movieId")
    assert "duplicate item id" in err.value.message and "already on line 4" in err.value.message
    ds = load_dataset(folder, workdir=tmp_path / "w", skip_bad_rows=True)
    assert ds.skipped_rows == {"movies.csv": 2}
    assert [r[0] for r in items_rows(ds.items)] == [1, 2, 3]


def test_unknown_item_in_dat_and_100k_lines_without_header(tmp_path: Path) -> None:
    folder = tmp_path / "ml-1m"
    write(folder, "movies.dat", "1::Toy Story (1995)::Animation\n")
    dat = write(folder, "ratings.dat", "1::1::5::978300760\n1::5::3::978302109\n")
    write(folder, "users.dat", "1::F::1::10::48067\n")
    with pytest.raises(InputError) as err:
        load_dataset(folder, workdir=tmp_path / "w")
    assert (err.value.path, err.value.line, err.value.field) == (str(dat), 2, "movieId")
    folder = tmp_path / "ml-100k"
    write(folder, "u.item", "1|Toy Story (1995)|||x|" + "|".join(["0"] * 19) + "\n")
    udata = write(folder, "u.data", "1\t1\t3\t881250949\n1\t1\t6\t881250950\n")
    with pytest.raises(InputError) as err:
        load_dataset(folder, workdir=tmp_path / "w")
    assert (err.value.path, err.value.line, err.value.field) == (str(udata), 2, "rating")
    assert "1..5" in err.value.message


def test_ml_latest_small_end_to_end(ml_small_dir: Path, tmp_path: Path) -> None:
    start = time.perf_counter()
    ds = load_dataset(ml_small_dir, workdir=tmp_path / "w")
    elapsed = time.perf_counter() - start
    n, users, items_rated, mean = duckdb.sql(
        f"SELECT count(*), count(DISTINCT user_id), count(DISTINCT item_id), avg(rating) "
        f"FROM read_parquet('{ds.ratings}')").fetchall()[0]
    assert (n, users, items_rated) == (100_836, 610, 9_724)
    assert mean == pytest.approx(3.5016, abs=1e-4)
    n_items, with_year, no_genres = duckdb.sql(
        f"SELECT count(*), count(year), count(*) FILTER (WHERE len(genres) = 0) "
        f"FROM read_parquet('{ds.items}')").fetchall()[0]
    assert (n_items, with_year, no_genres) == (9_742, 9_729, 34)
    assert ds.name == "ml-latest-small" and ds.skipped_rows == {}
    assert set(ds.sources) == {"ratings.csv", "movies.csv", "tags.csv", "links.csv"}
    assert elapsed < 20  # ~0.3 s alone; generous for a shared 2-core machine


def test_blank_lines_do_not_shift_line_numbers(tmp_path: Path) -> None:
    folder = tmp_path / "ml"
    write(folder, "movies.csv", MOVIES_CSV)
    ratings = write(folder, "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,10\n\n1,2,9.0,11\n\n")
    with pytest.raises(InputError) as err:
        load_dataset(folder, workdir=tmp_path / "w")
    assert (err.value.path, err.value.line, err.value.field) == (str(ratings), 4, "rating")
    write(folder, "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,10\n\n1,2,4.0\n\n2,2,x,11\n")
    with pytest.raises(InputError) as err:
        load_dataset(folder, workdir=tmp_path / "w")
    assert err.value.line == 4 and "malformed" in err.value.message
    ds = load_dataset(folder, workdir=tmp_path / "w", skip_bad_rows=True)
    assert ds.skipped_rows == {"ratings.csv": 2} and rows(ds.ratings) == [(1, 1, 4.0, None, 10)]


# ------------------------------------------------------------------ hostile input (issue 8)


def test_a_custom_rating_column_holding_times_is_refused(tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv", "u,i,r,t\n1,1,964982703,4\n1,2,964982704,3\n")
    mapping = ColumnMapping("u", "i", "t", rating_col="r")  # ratings and times swapped
    with pytest.raises(InputError) as err:
        load_dataset(log, workdir=tmp_path / "w", columns=mapping)
    assert (err.value.line, err.value.field) == (2, "r") and "not a rating" in err.value.message
    log = write(tmp_path, "log.csv", "u,i,r,t\n1,1,4.5,964982703\n1,2,-2,964982704\n")  # any scale is fine
    assert load_dataset(log, workdir=tmp_path / "w", columns=mapping).rating_scale == (-2.0, 4.5)


def test_custom_times_must_be_whole_seconds(tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv", "u,i,r,t\n1,1,4,964982703\n1,2,3,3.5\n")
    with pytest.raises(InputError) as err:
        load_dataset(log, workdir=tmp_path / "w", columns=ColumnMapping("u", "i", "t", rating_col="r"))
    assert (err.value.line, err.value.field) == (3, "t") and "'3.5'" in err.value.message


def test_items_file_checked(csv_release: Path, tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv", "u,i,r,t\n1,1,4,964982703\n")
    mapping = ColumnMapping("u", "i", "t", rating_col="r")
    with pytest.raises(InputError, match="no such items file"):
        load_dataset(log, workdir=tmp_path / "w", columns=mapping, items_path=tmp_path / "nope.csv")
    with pytest.raises(InputError, match="--items is for your own logs"):
        load_dataset(csv_release, workdir=tmp_path / "w", items_path=log)


def test_overlong_header_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    log = tmp_path / "one-line.csv"
    log.write_bytes(b"userId,movieId,rating,timestamp" + b",x" * (2 << 20))  # 4 MiB, no newline
    with pytest.raises(InputError) as err:
        load_dataset(log, workdir=tmp_path / "w")
    assert err.value.line == 1 and "longer than 1,048,576 bytes" in err.value.message
    assert len(str(err.value)) < 300


def test_a_line_longer_than_duckdbs_buffer_is_reported_not_dropped(tmp_path: Path) -> None:
    folder = tmp_path / "ml"
    write(folder, "movies.csv", MOVIES_CSV)
    ratings = folder / "ratings.csv"
    ratings.write_bytes(b"userId,movieId,rating,timestamp\n1,1,4.0,10\n1,2,4.0," + b"9" * (40 << 20)
                        + b"\n2,1,3.0,12\n2,2,x,13\n")
    with pytest.raises(InputError) as err:
        load_dataset(folder, workdir=tmp_path / "w")
    assert (err.value.line, "longer than") == (3, "longer than") and "longer than" in err.value.message
    ds = load_dataset(folder, workdir=tmp_path / "w", skip_bad_rows=True)
    assert ds.skipped_rows == {"ratings.csv": 2}   # the long line and the 'x' rating on line 5
    assert rows(ds.ratings) == [(1, 1, 4.0, None, 10), (2, 1, 3.0, None, 12)]


def test_a_genre_listed_twice_is_one_genre_in_its_first_place(tmp_path: Path) -> None:
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "movies.csv").write_text("movieId,title,genres\n1,Twice (1999),Drama| Comedy |Drama||Comedy|War\n"
                                       "2,Once (2001),Drama\n")
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,10\n1,2,4.0,20\n")
    ds = load_dataset(folder, workdir=tmp_path / "w")
    assert items_rows(ds.items) == [(1, "Twice (1999)", 1999, ["Drama", "Comedy", "War"]),
                                    (2, "Once (2001)", 2001, ["Drama"])]
