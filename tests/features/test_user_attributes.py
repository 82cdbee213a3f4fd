"""The static user attributes (issue 11): ``prepare`` of a dataset with a users table adds userGender, userAge,
userOccupation and userZipPrefix (NULL for a user without a row), the manifest says they are static, the online
records carry them; a dataset without a users table gets none of them and the same values as before."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deepcrossing.errors import InputError
from deepcrossing.features import FeatureConfig, build_samples, compute_samples, online_records
from deepcrossing.features.columns import (
    ONLINE_USER_SIDE,
    SAMPLE_COLUMNS,
    USER_ATTRIBUTES,
    cold_features,
    sample_columns,
    side_of,
)
from deepcrossing.features.samples import SPLIT_NAMES

from .conftest import with_users, write_dataset

ITEMS = [(1, 1995, ["Drama"]), (2, 2000, ["Comedy"]), (3, None, [])]
RATINGS = [(1, 1, 4.0, 10), (1, 2, 2.0, 20), (2, 1, 5.0, 15), (2, 3, 3.5, 30), (3, 2, 4.5, 25), (3, 1, 1.0, 40),
           (4, 3, 4.0, 50), (1, 3, 5.0, 60)]
# user 3 has no row; user 9 has a row and no rating; blank and short zips; a NULL age; padded text
USERS = [(1, "M", 24, "technician", "85711"), (2, "F", None, " writer ", "  "), (4, "F", 56, "20", "T8"),
         (9, "M", 18, "other", "00000")]
WANT = {1: ("M", 24, "technician", "857"), 2: ("F", None, "writer", None), 3: (None, None, None, None),
        4: ("F", 56, "20", "T8")}


def _dataset(tmp_path: Path, users: bool = True):
    ds = write_dataset(tmp_path / "data", RATINGS, ITEMS)
    return with_users(ds, USERS) if users else ds


def test_samples_have_the_attributes_of_each_user_and_nulls_without_a_row(tmp_path):
    table = compute_samples(_dataset(tmp_path))
    assert table.column_names == list(sample_columns(True)) == [*SAMPLE_COLUMNS, *USER_ATTRIBUTES]
    assert [table.schema.field(c).type for c in USER_ATTRIBUTES] == [pa.string(), pa.int32(), pa.string(),
                                                                       pa.string()]
    assert table.num_rows == len(RATINGS)  # the join adds no row (user 9 has no rating) and drops none
    for row in table.to_pylist():
        assert tuple(row[c] for c in USER_ATTRIBUTES) == WANT[row["userId"]], row["userId"]


def test_without_a_users_table_no_column_and_the_same_values(tmp_path):
    plain = compute_samples(_dataset(tmp_path, users=False))
    assert plain.column_names == list(SAMPLE_COLUMNS)
    with_attrs = compute_samples(_dataset(tmp_path / "u"))
    assert with_attrs.drop_columns(list(USER_ATTRIBUTES)).equals(plain)


def test_manifest_lists_them_as_static_user_columns(tmp_path):
    manifest = build_samples(_dataset(tmp_path), FeatureConfig(split="random", seed=3), tmp_path / "s")
    features = {f["name"]: f for f in manifest["features"]}
    for name in USER_ATTRIBUTES:
        assert features[name]["side"] == "user" and features[name]["static"] is True, name
        assert "static" in features[name]["meaning"] or "attribute" in features[name]["meaning"]
        assert side_of(name) == "user"
    assert "static" not in features["userAvgRating"] and "users table" in manifest["point_in_time"]
    assert features["userAge"]["type"] == "INTEGER" and "age-group code" in features["userAge"]["meaning"]
    for split in SPLIT_NAMES:
        assert pq.read_schema(tmp_path / "s" / f"{split}.parquet").names[-4:] == list(USER_ATTRIBUTES)
    plain = build_samples(_dataset(tmp_path / "p", users=False), FeatureConfig(split="random", seed=3),
                          tmp_path / "p" / "s")
    assert [f["name"] for f in plain["features"]] == list(SAMPLE_COLUMNS)
    assert "users table" not in plain["point_in_time"]
    assert json.loads((tmp_path / "p" / "s" / "manifest.json").read_text())["features"] == plain["features"]


def test_online_records_carry_the_attributes_and_a_cold_user_gets_nulls(tmp_path):
    records = online_records(_dataset(tmp_path), history_n=3, max_candidates=3)
    assert records.users.column_names == [*ONLINE_USER_SIDE, *USER_ATTRIBUTES]
    got = {r["userId"]: tuple(r[c] for c in USER_ATTRIBUTES) for r in records.users.to_pylist()}
    assert got == WANT  # the same values as the samples (a user without ratings has no online record)
    assert all(records.cold_user[c] is None for c in USER_ATTRIBUTES)
    plain = online_records(_dataset(tmp_path / "p", users=False), history_n=3, max_candidates=3)
    assert plain.users.column_names == list(ONLINE_USER_SIDE) and plain.cold_user == cold_features("user")


def test_cold_features_has_attributes_only_when_asked():
    assert not set(USER_ATTRIBUTES) & set(cold_features("user"))
    cold = cold_features("user", 5, user_attributes=True)
    assert list(cold)[-4:] == list(USER_ATTRIBUTES) and all(cold[c] is None for c in USER_ATTRIBUTES)
    assert not set(USER_ATTRIBUTES) & set(cold_features("movie", 5, user_attributes=True))


def test_a_user_with_two_rows_is_refused_naming_the_file(tmp_path):
    ds = with_users(write_dataset(tmp_path / "data", RATINGS, ITEMS), [*USERS, (1, "F", 30, "x", "1")])
    with pytest.raises(InputError, match="user 1 has more than one row") as err:
        compute_samples(ds)
    assert "users.parquet" in str(err.value)


def test_ml_latest_small_has_no_users_table_and_samples_without_the_columns(ml_small_dataset, ml_small_samples):
    folder, manifest = ml_small_samples
    assert ml_small_dataset.users is None
    assert [f["name"] for f in manifest["features"]] == list(SAMPLE_COLUMNS)
    assert not any("static" in f for f in manifest["features"]) and "users table" not in manifest["point_in_time"]
    for split in SPLIT_NAMES:  # the files' schema is the one before the attributes existed
        schema = pq.read_schema(folder / f"{split}.parquet")
        assert schema.names == list(SAMPLE_COLUMNS) and not set(USER_ATTRIBUTES) & set(schema.names)



def test_an_ml_1m_layout_keeps_the_age_group_and_occupation_codes(tmp_path):
    from deepcrossing.data import load_dataset

    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "movies.dat").write_text("1::Toy Story (1995)::Animation|Comedy\n2::Heat (1995)::Action\n")
    (folder / "ratings.dat").write_text("1::1::5::978300760\n1::2::3::978302109\n2::2::1::978301968\n"
                                        "3::1::4::978301000\n")
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072-1234\n")   # user 3: no row
    table = compute_samples(load_dataset(folder, workdir=tmp_path / "w"))
    got = {r["userId"]: tuple(r[c] for c in USER_ATTRIBUTES) for r in table.to_pylist()}
    assert got == {1: ("F", 1, "10", "480"), 2: ("M", 56, "16", "700"), 3: (None,) * 4}
