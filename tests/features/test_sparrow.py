"""SparrowRecSys sample CSVs: reading testSamples.csv, writing the same layout, and the round trip."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deepcrossing.errors import InputError
from deepcrossing.features import SPARROW_COLUMNS, FeatureConfig, build_samples, read_samples

from .conftest import write_dataset
from .test_samples import ITEMS


def test_read_sparrow_test_samples(sparrow_dir):
    table = read_samples(sparrow_dir / "testSamples.csv")
    assert table.num_rows == 22_440
    assert table.schema.field("movieId").type == pa.int64() and table.schema.field("label").type == pa.int8()
    assert table.schema.field("movieAvgRating").type == pa.float64()
    assert table.schema.field("userRecentPositives").type == pa.list_(pa.int64())
    first = table.slice(0, 1).to_pylist()[0]
    assert first["movieId"] == 1 and first["userId"] == 14887 and first["rating"] == 3.0
    assert first["timestamp"] == 830155608 and first["releaseYear"] == 1995 and first["movieRatingCount"] == 10759
    assert first["movieAvgRating"] == 3.91 and first["userAvgReleaseYear"] == 1992.0
    assert first["userRatedMovie5"] is None and first["userRecentPositives"] == [349, 590, 150, 592]
    assert first["movieGenres"] == ["Adventure", "Animation", "Children"] and first["userGenre5"] == "Crime"
    assert table.column("movieGenre3").null_count == 10_341  # the "" cells
    assert "userGenreCounts" not in table.column_names


def test_sparrow_write_matches_layout_and_round_trips(tmp_path, sparrow_dir):
    ratings = [(1, 1, 4.0, 10), (1, 2, 2.0, 20), (1, 4, 5.0, 20), (1, 5, 4.5, 30), (2, 5, 3.0, 30),
               (2, 1, 1.0, 40), (1, 3, 3.5, 50), (3, 2, 5.0, 60), (1, 2, 4.0, 70), (2, 4, 4.0, 80)]
    ds = write_dataset(tmp_path / "d", ratings, ITEMS)
    parquet = build_samples(ds, FeatureConfig(fractions=(0.6, 0.2, 0.2)), tmp_path / "pq")
    sparrow = build_samples(ds, FeatureConfig(fractions=(0.6, 0.2, 0.2)), tmp_path / "sp", fmt="sparrow")
    assert sorted(p.name for p in (tmp_path / "sp").iterdir()) == ["items.parquet", "manifest.json", "test.csv",
                                                                   "train.csv", "valid.csv"]
    assert sparrow["splits"] == parquet["splits"] and sparrow["files"]["train"] == "train.csv"
    text = (tmp_path / "sp" / "train.csv").read_text()
    reference_header = (sparrow_dir / "testSamples.csv").open().readline()
    assert text.splitlines(keepends=True)[0] == reference_header
    lines = text.splitlines()
    # user 1 rates movie 5 at t=30: three earlier ratings (4.0, 2.0, 5.0), positives 4 then 1
    assert lines[4] == ('5,1,4.5,30,1,2010,Action,Comedy,Drama,0,"","",4,1,"","","",3,1991,10.41,3.67,1.53,'
                        'Drama,Comedy,War,"",""')
    assert lines[1].startswith('1,1,4.0,10,1,1995,Comedy,Drama,"",0,"","","","","","","",0,"","","","",')
    assert all(len(line.split(",")) == 27 for line in lines)
    order = [("timestamp", "ascending"), ("userId", "ascending"), ("movieId", "ascending")]
    ours = pa.concat_tables([pq.read_table(tmp_path / "pq" / f"{s}.parquet").sort_by(order)
                             for s in ("train", "valid", "test")])
    back = pa.concat_tables([read_samples(tmp_path / "sp" / f"{s}.csv") for s in ("train", "valid", "test")])
    assert back.num_rows == ours.num_rows == 10
    for name in back.column_names:
        for a, b in zip(ours.column(name).to_pylist(), back.column(name).to_pylist()):
            if name == "userAvgReleaseYear" and a is not None:
                assert b == int(a)
            elif isinstance(a, float):
                assert b == pytest.approx(a, abs=0.005)
            elif name in ("userRecentPositives", "movieGenres"):  # Sparrow keeps 5 movies, 3 genres
                assert b == a[: 5 if name == "userRecentPositives" else 3]
            else:
                assert a == b, name
    assert tuple(read_samples(tmp_path / "pq" / "train.parquet").column_names[:2]) == ("userId", "movieId")
    assert len(SPARROW_COLUMNS) == 27


def test_bad_sparrow_csv_names_line_and_field(tmp_path, sparrow_dir):
    lines = (sparrow_dir / "testSamples.csv").read_text().splitlines()[:4]
    bad = lines[3].split(",")
    bad[9] = "many"
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines[:3] + [",".join(bad)]) + "\n")
    with pytest.raises(InputError) as err:
        read_samples(path)
    assert (err.value.line, err.value.field) == (4, "movieRatingCount")
    (tmp_path / "short.csv").write_text("movieId,userId\n1,2\n")
    with pytest.raises(InputError, match="rating"):
        read_samples(tmp_path / "short.csv")
