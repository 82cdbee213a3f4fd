"""The built-in spec train picks: movielens, + userItemCFScore when the samples were prepared with --itemcf, + the
static user attributes when the samples have them (a dataset with a users table)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from deepcrossing.config import load_builtin
from deepcrossing.features.columns import USER_ATTRIBUTES, sample_columns
from deepcrossing.training.default_spec import (
    USER_ATTRIBUTE_FEATURES,
    default_config,
    samples_have_itemcf,
    samples_have_user_attributes,
    with_itemcf,
    with_user_attributes,
)


def _manifest(folder: Path, config: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"config": config}))
    return folder / "train.parquet"


def test_the_itemcf_column_joins_the_default_spec_only_when_the_samples_have_it(tmp_path):
    plain = [f.name for f in load_builtin("movielens").spec.features]
    on = _manifest(tmp_path / "on", {"itemcf": True})
    off = _manifest(tmp_path / "off", {"itemcf": False})
    old = _manifest(tmp_path / "old", {"recent_n": 10})        # samples from before the setting existed
    broken = tmp_path / "broken" / "train.parquet"
    broken.parent.mkdir()
    (broken.parent / "manifest.json").write_text("{not json")
    assert [samples_have_itemcf(p) for p in (on, off, old, broken, tmp_path / "none" / "train.parquet")] == \
        [True, False, False, False, False]
    names = [f.name for f in default_config(on).spec.features]
    assert names == plain[:plain.index("userGenreAvgRating") + 1] + ["userItemCFScore"] + \
        plain[plain.index("userGenreAvgRating") + 1:]
    assert [f.name for f in default_config(off).spec.features] == plain
    assert default_config(tmp_path / "x" / "train.csv") == load_builtin("sparrow")
    twice = with_itemcf(with_itemcf(load_builtin("movielens")))
    assert [f.name for f in twice.spec.features].count("userItemCFScore") == 1


def test_train_reads_the_itemcf_score_of_samples_prepared_with_it(tmp_path):
    rows = ["u,i,r,t"] + [f"{u},{i},{4.0 if (u * i) % 3 else 2.0},{100 * u + 7 * i}" for u in range(1, 41)
                         for i in range(1, 13)]
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    run = [sys.executable, "-m", "deepcrossing.cli"]
    prep = subprocess.run([*run, "prepare", "--data", str(tmp_path / "log.csv"), "--out", str(tmp_path / "s"),
                           "--user-col", "u", "--item-col", "i", "--rating-col", "r", "--time-col", "t",
                           "--itemcf"], capture_output=True, text=True, timeout=120)
    assert prep.returncode == 0, prep.stderr
    train = subprocess.run([*run, "train", "--samples", str(tmp_path / "s"), "--out", str(tmp_path / "m"),
                            "--epochs", "1"], capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr
    spec = json.loads((tmp_path / "m" / "manifest.json").read_text())["spec"]
    assert "userItemCFScore" in [f["name"] for f in spec["features"]]


def test_the_user_attributes_join_the_default_spec_only_when_the_samples_have_them(tmp_path):
    plain = [f.name for f in load_builtin("movielens").spec.features]
    have, without = tmp_path / "have", tmp_path / "without"
    for folder, attrs in ((have, True), (without, False)):
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps({"config": {"itemcf": True}, "features": [
            {"name": n, "type": t} for n, (t, _) in sample_columns(attrs).items()]}))
    assert [samples_have_user_attributes(p / "train.parquet") for p in (have, without, tmp_path / "none")] == \
        [True, False, False]
    names = [f.name for f in default_config(have / "train.parquet").spec.features]
    assert names[-4:] == list(USER_ATTRIBUTES) and "userItemCFScore" in names and set(plain) <= set(names)
    assert not set(USER_ATTRIBUTES) & {f.name for f in default_config(without / "train.parquet").spec.features}
    kinds = {f.name: (f.kind, f.side) for f in USER_ATTRIBUTE_FEATURES}
    assert kinds == {"userGender": ("categorical", "user"), "userAge": ("numeric", "user"),
                     "userOccupation": ("categorical", "user"), "userZipPrefix": ("categorical", "user")}
    assert next(f for f in USER_ATTRIBUTE_FEATURES if f.name == "userZipPrefix").min_count > 1  # rare zips: unknown
    twice = with_user_attributes(with_user_attributes(load_builtin("movielens")))
    assert [f.name for f in twice.spec.features].count("userZipPrefix") == 1
