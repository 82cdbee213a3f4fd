"""Feature spec and configs: strict construction, TOML/JSON round trip, errors naming key and file."""

from __future__ import annotations

import json
import tomllib

import pytest

from deepcrossing.config import (
    ExperimentConfig,
    Feature,
    FeatureSpec,
    ModelConfig,
    TrainConfig,
    default_dim,
    dumps_toml,
    load_builtin,
    load_config,
    save_config,
)
from deepcrossing.errors import InputError

GOOD = """
[[features]]
name = "movieId"
kind = "categorical"
side = "item"
table = "movie"
min_count = 2

[[features]]
name = "userRecentPositives"
kind = "multi_hot"
side = "user"
table = "movie"
max_len = 10

[[features]]
name = "userAvgRating"
kind = "numeric"
side = "user"
transform = "standardize"

[model]
mlp = "plain"
hidden = [128, 128]

[train]
epochs = 3
"""


def test_load_good_spec_and_defaults(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(GOOD)
    config = load_config(path)
    assert config.spec.names == ("movieId", "userRecentPositives", "userAvgRating")
    assert config.model.hidden == (128, 128) and config.model.mlp == "plain"
    assert config.train.epochs == 3 and config.train.batch_size == TrainConfig().batch_size
    movie = config.spec.tables()["movie"]
    assert movie.features == ("movieId", "userRecentPositives") and movie.min_count == 2
    assert "userAvgRating" not in config.spec.tables()


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_round_trip(tmp_path, suffix):
    config = load_builtin("movielens")
    path = tmp_path / f"spec{suffix}"
    save_config(config, path)
    assert load_config(path) == config
    assert tomllib.loads(dumps_toml(config))["model"]["mlp"] == config.model.mlp


@pytest.mark.parametrize(("text", "field"), [
    (GOOD.replace('min_count = 2', 'min_count = 2\npoolng = "sum"'), "features[0].poolng"),
    (GOOD.replace('min_count = 2', 'min_count = "2"'), "features[0].min_count"),
    (GOOD.replace('kind = "multi_hot"', 'kind = "list"'), "features[1].kind"),
    (GOOD.replace('transform = "standardize"', 'transform = "zscore"'), "features[2].transform"),
    (GOOD.replace('mlp = "plain"', 'mlp = "plain"\ndnn_activations = "relu"'), "model.dnn_activations"),
    (GOOD.replace('epochs = 3', 'epochs = 3.5'), "train.epochs"),
    (GOOD.replace('epochs = 3', 'epochs = 0'), "train.epochs"),
    (GOOD + '\n[serving]\nport = 1\n', "serving"),
    (GOOD.replace('max_len = 10', 'max_len = 10\nmin_count = 3'), "features[1].min_count"),
])
def test_bad_spec_names_key_and_file(tmp_path, text, field):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_config(path)
    assert info.value.field == field
    assert info.value.path == str(path)
    assert str(path) in str(info.value) and field in str(info.value)


def test_bad_syntax_and_missing_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[[features]\nname=")
    with pytest.raises(InputError, match="not valid TOML") as info:
        load_config(path)
    assert info.value.path == str(path)
    with pytest.raises(InputError, match="cannot read"):
        load_config(tmp_path / "absent.toml")
    (tmp_path / "bad.json").write_text(json.dumps({"features": []}))
    with pytest.raises(InputError, match="non-empty"):
        load_config(tmp_path / "bad.json")


def test_feature_validation():
    with pytest.raises(InputError, match="transform"):
        Feature("x", "numeric")
    with pytest.raises(InputError, match="hash_buckets"):
        Feature("x", "hashed")
    with pytest.raises(InputError, match="weights_from"):
        Feature("x", "categorical", weights_from="values")
    with pytest.raises(InputError, match="listed twice"):
        FeatureSpec((Feature("a", "categorical"), Feature("a", "categorical")))
    with pytest.raises(InputError, match="mixes"):
        FeatureSpec((Feature("a", "categorical", table="t"), Feature("b", "hashed", table="t", hash_buckets=9)))
    with pytest.raises(InputError, match="dropout"):
        ModelConfig(dropout=1.0)
    with pytest.raises(InputError, match="optimizer"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(Exception):  # frozen
        TrainConfig().epochs = 3  # type: ignore[misc]


def test_default_dim_rule():
    assert [default_dim(n) for n in (1, 16, 100, 10_000, 10**7)] == [6, 12, 19, 32, 32]


def test_builtin_specs_use_shared_tables():
    ml = load_builtin("movielens")
    assert isinstance(ml, ExperimentConfig)
    tables = ml.spec.tables()
    assert {"movieGenres", "userGenreCounts"} <= set(tables["genre"].features)
    assert ml.spec["userGenreCounts"].weights_from == "values"
    sparrow = load_builtin("sparrow").spec
    assert {"userGenre1", "movieGenres"} <= set(sparrow.tables()["genre"].features)
    assert {"movieId", "userRecentPositives"} <= set(sparrow.tables()["movie"].features)
    with pytest.raises(InputError, match="no built-in spec"):
        load_builtin("nope")
