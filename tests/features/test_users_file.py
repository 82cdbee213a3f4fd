"""`prepare --users FILE` (issue 11): a users file for a log without one adds the static user attribute columns,
read like every other input (bad rows with file, line and field); `publish --users` serves them."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deepcrossing.data import ColumnMapping, load_dataset
from deepcrossing.errors import InputError
from deepcrossing.features import compute_samples
from deepcrossing.features.columns import USER_ATTRIBUTES

LOG = "u,i,r,t\n1,10,4.0,100\n2,10,2.0,110\n3,11,5.0,120\n1,11,3.0,130\n4,10,4.5,140\n"
MAPPING = ColumnMapping("u", "i", "t", rating_col="r")


def _prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deepcrossing.cli", "prepare", *args], capture_output=True,
                          text=True, timeout=120)


def test_a_users_csv_adds_the_attributes(tmp_path):
    (tmp_path / "log.csv").write_text(LOG)
    # zip with a leading zero kept as text; a blank age; user 3 without a row; user 9 without a rating
    (tmp_path / "users.csv").write_text("u,zip,age,gender\n1,02139,34,F\n2,T8H1N,,M\n4,9,17,\n9,1,1,F\n")
    ds = load_dataset(tmp_path / "log.csv", workdir=tmp_path / "w", columns=MAPPING, users_path=tmp_path / "users.csv")
    assert ds.users is not None and "users.csv" in ds.sources
    table = compute_samples(ds)
    got = {r["userId"]: tuple(r[c] for c in USER_ATTRIBUTES) for r in table.to_pylist()}
    assert got == {1: ("F", 34, None, "021"), 2: ("M", None, None, "T8H"), 3: (None,) * 4, 4: (None, 17, None, "9")}


def test_a_users_parquet_with_the_log_s_user_column(tmp_path):
    (tmp_path / "log.csv").write_text(LOG)
    pq.write_table(pa.table({"u": [1, 2], "occupation": ["nurse", None], "age": pa.array([40, 22], pa.int16())}),
                   tmp_path / "users.parquet")
    ds = load_dataset(tmp_path / "log.csv", workdir=tmp_path / "w", columns=MAPPING,
                      users_path=tmp_path / "users.parquet")
    rows = {r["user_id"]: r for r in pq.read_table(ds.users).to_pylist()}
    assert rows[1] == {"user_id": 1, "gender": None, "age": 40, "occupation": "nurse", "zip": None}


@pytest.mark.parametrize(("text", "message", "line"), [
    ("u,age,income\n1,3,9\n", "column 'income' is not a user attribute", 1),
    ("u\n1\n", "no attribute column", 1),
    ("name,age\nx,3\n", "needs a user id column", 1),
    ("u,age\n1,30\nabc,4\n", "not an integer user id", 3),
    ("u,age\n1,thirty\n", "not an integer age", 2),
    ("u,age\n1,30\n2,40\n1,50\n", "duplicate user id", 4),
])
def test_a_bad_users_file_names_file_line_and_field(tmp_path, text, message, line):
    (tmp_path / "log.csv").write_text(LOG)
    (tmp_path / "users.csv").write_text(text)
    with pytest.raises(InputError, match=message) as err:
        load_dataset(tmp_path / "log.csv", workdir=tmp_path / "w", columns=MAPPING, users_path=tmp_path / "users.csv")
    assert str(err.value.path).endswith("users.csv") and err.value.line == line


def test_a_release_with_its_own_users_table_refuses_users(ml_100k_dir, tmp_path):
    (tmp_path / "users.csv").write_text("userId,age\n1,3\n")
    with pytest.raises(InputError, match="this release has its own u.user"):
        load_dataset(ml_100k_dir, workdir=tmp_path / "w", users_path=tmp_path / "users.csv")


@pytest.mark.slow
def test_prepare_and_publish_with_users(tmp_path):
    (tmp_path / "log.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{m},{(u * m) % 5 + 1}.0,{1000 + 10 * u + m}\n" for u in range(1, 30) for m in range(1, 9)))
    (tmp_path / "users.csv").write_text("userId,gender,occupation\n" + "".join(
        f"{u},{'MF'[u % 2]},job{u % 3}\n" for u in range(1, 25)))
    done = _prepare("--data", str(tmp_path / "log.csv"), "--out", str(tmp_path / "s"), "--users",
                    str(tmp_path / "users.csv"))
    assert done.returncode == 0, done.stderr
    assert pq.read_schema(tmp_path / "s" / "train.parquet").names[-4:] == list(USER_ATTRIBUTES)
    cli = [sys.executable, "-m", "deepcrossing.cli"]
    train = subprocess.run([*cli, "train", "--samples", str(tmp_path / "s"), "--out", str(tmp_path / "m"),
                            "--epochs", "1"], capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr
    url = f"sqlite:///{tmp_path / 'f.db'}"
    refused = subprocess.run([*cli, "publish", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "log.csv"),
                              "--store", url], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--users file given to prepare" in refused.stderr
    done = subprocess.run([*cli, "publish", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "log.csv"),
                           "--users", str(tmp_path / "users.csv"), "--store", url], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    from deepcrossing.serving.engine import Engine

    engine = Engine.open(tmp_path / "m", url)
    assert engine.store.get_user(1)["features"]["userGender"] == "F"
    assert all(0 < s < 1 for s in engine.score(27, [1, 2])["scores"])      # a user without a row: NULLs
    assert all(0 < s < 1 for s in engine.score(10**9, [1, 2])["scores"])    # an unknown user
