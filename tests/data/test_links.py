"""MovieLens links.csv: imdbId / tmdbId in the items table as text (leading zeros kept), NULL when absent, and
the readers' bad-input rules (file, line, field) for its rows."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from deepcrossing.data import load_dataset
from deepcrossing.errors import InputError

MOVIES = "movieId,title,genres\n1,Toy Story (1995),Comedy\n2,Jumanji (1995),Adventure\n3,Heat (1995),Action\n"
RATINGS = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.0,964981247\n2,3,5.0,964982224\n"


def release(tmp_path: Path, links: str | None) -> Path:
    folder = tmp_path / "ml-test"
    folder.mkdir()
    (folder / "movies.csv").write_text(MOVIES)
    (folder / "ratings.csv").write_text(RATINGS)
    if links is not None:
        (folder / "links.csv").write_text(links)
    return folder


def links_of(items: Path) -> list[tuple]:
    return duckdb.sql(f"SELECT item_id, imdb_id, tmdb_id FROM read_parquet('{items}') ORDER BY item_id").fetchall()


def test_links_are_text_with_leading_zeros_and_null_when_missing(tmp_path: Path) -> None:
    # movie 2 has no tmdbId, movie 3 no row at all, movie 99 is not in movies.csv (left out)
    folder = release(tmp_path, "movieId,imdbId,tmdbId\n1,0114709,862\n2,0113497,\n99,0000001,5\n")
    ds = load_dataset(folder, workdir=tmp_path / "w")
    assert links_of(ds.items) == [(1, "0114709", "862"), (2, "0113497", None), (3, None, None)]
    schema = pq.read_schema(ds.items)
    assert [(f.name, str(f.type)) for f in schema][-2:] == [("imdb_id", "string"), ("tmdb_id", "string")]
    assert "links.csv" in ds.sources


def test_no_links_file_gives_null_columns(tmp_path: Path) -> None:
    ds = load_dataset(release(tmp_path, None), workdir=tmp_path / "w")
    assert links_of(ds.items) == [(1, None, None), (2, None, None), (3, None, None)]
    assert "links.csv" not in ds.sources


@pytest.mark.parametrize(("links", "line", "field", "words"), [
    ("movieId,imdbId,tmdbId\n1,0114709,862\nx,1,2\n", 3, "movieId", "not an integer item id: 'x'"),
    ("movieId,imdbId,tmdbId\n1.5,0114709,862\n", 2, "movieId", "not an integer item id: '1.5'"),
    ("movieId,imdbId,tmdbId\n1,tt0114709,862\n", 2, "imdbId", "not a numeric IMDb id"),
    ("movieId,imdbId,tmdbId\n1,0114709,8.5\n", 2, "tmdbId", "not a numeric TMDB id"),
    ("movieId,imdbId,tmdbId\n1,0114709,862\n2,1,2\n1,0114709,862\n", 4, "movieId", "duplicate movie id"),
    ("movieId,imdbId,tmdbId\n1,0114709\n", 2, None, "expected 3 fields"),
    ("movieId,imdbId\n1,0114709\n", 1, "tmdbId", "missing column 'tmdbId'"),
    ("movieId,imdbId,tmdbId\n", 2, None, "no data rows"),
])
def test_bad_links_rows_name_file_line_and_field(tmp_path: Path, links: str, line: int, field: str | None,
                                                 words: str) -> None:
    folder = release(tmp_path, links)
    with pytest.raises(InputError) as err:
        load_dataset(folder, workdir=tmp_path / "w")
    assert (err.value.path, err.value.line, err.value.field) == (str(folder / "links.csv"), line, field)
    assert words in err.value.message


def test_bad_links_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    folder = release(tmp_path, "movieId,imdbId,tmdbId\n1,0114709,862\n2,tt1,2\n3,0113277,949\n3,1,1\n")
    ds = load_dataset(folder, workdir=tmp_path / "w", skip_bad_rows=True)
    assert ds.skipped_rows == {"links.csv": 2}
    assert links_of(ds.items) == [(1, "0114709", "862"), (2, None, None), (3, "0113277", "949")]


def test_ml_latest_small_links(ml_small_dir: Path, tmp_path: Path) -> None:
    ds = load_dataset(ml_small_dir, workdir=tmp_path / "w")
    rows = {i: (a, b) for i, a, b in links_of(ds.items)}
    assert rows[1] == ("0114709", "862") and rows[2] == ("0113497", "8844")
    n, imdb, tmdb = duckdb.sql(f"SELECT count(*), count(imdb_id), count(tmdb_id) "
                               f"FROM read_parquet('{ds.items}')").fetchall()[0]
    assert (n, imdb, tmdb) == (9_742, 9_742, 9_734)   # links.csv has 8 rows without a tmdbId
    assert all(len(v) == 7 for v, _ in rows.values())   # IMDb ids keep their leading zeros


def test_ml_100k_has_no_links(tmp_path: Path) -> None:
    folder = tmp_path / "u"
    folder.mkdir()
    (folder / "u.data").write_text("1\t1\t4\t881250949\n")
    (folder / "u.item").write_text("1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n")
    ds = load_dataset(folder, workdir=tmp_path / "w")
    assert links_of(ds.items) == [(1, None, None)]
