"""Feature spec and configs: strict construction, TOML/JSON round trip, errors naming key and file."""

from __future__ import annotations

import dataclasses
import json
import pickle
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
    with pytest.raises(dataclasses.FrozenInstanceError):
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


# ---------------------------------------------------------------- the common check of every strict config

def _all_configs():
    from pathlib import Path

    from deepcrossing.features.config import FeatureConfig
    from deepcrossing.serving.settings import ServingSettings

    feature = Feature("movieId", "categorical", "item", table="movie", min_count=2)
    spec = FeatureSpec((feature, Feature("userAvgRating", "numeric", "user", transform="buckets", n_buckets=5)))
    return [  # (config, a key, a value of the wrong type for it)
        (feature, "min_count", "2"),
        (spec, "features", "movieId"),
        (ModelConfig(mlp="plain", hidden=(32, 16), dropout=0.2), "hidden", [32, 1.5]),
        (TrainConfig(epochs=3, optimizer="adamw", lr=0.01), "epochs", 3.5),
        (ExperimentConfig(spec, ModelConfig(norm="layer"), TrainConfig(seed=4)), "model", "plain"),
        (FeatureConfig(split="random", fractions=(0.7, 0.2, 0.1), seed=3), "recent_n", True),
        (ServingSettings(Path("m"), "sqlite:///x.db", admin_token="t", control_dir=Path("c")), "max_k", 1.0),
    ]


@pytest.mark.parametrize(("config", "key", "wrong"), _all_configs(), ids=lambda v: type(v).__name__)
def test_every_config_is_strict_and_round_trips(config, key, wrong):
    cls = type(config)
    data = config.to_dict()
    assert json.loads(json.dumps(data)) == data  # JSON-ready
    assert cls.from_dict(json.loads(json.dumps(data))) == config
    with pytest.raises(InputError, match="unknown") as info:
        cls.from_dict({**data, "colour": 1})
    assert info.value.field == "colour"
    with pytest.raises(InputError, match="must be") as info:
        cls.from_dict({**data, key: wrong})
    assert info.value.field is not None and info.value.field.startswith(key)
    with pytest.raises(InputError) as info:  # the constructor validates too, and the error is not pydantic's
        dataclasses.replace(config, **{key: wrong})
    assert info.value.field is not None and info.value.field.startswith(key)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, key, wrong)
    assert dataclasses.replace(config) == config and hash(dataclasses.replace(config)) == hash(config)
    assert pickle.loads(pickle.dumps(config)) == config


def test_positional_arguments_and_tuples_are_named_in_errors():
    from deepcrossing.features.config import FeatureConfig
    from deepcrossing.serving.settings import ServingSettings

    with pytest.raises(InputError) as info:
        ServingSettings("model", 5)
    assert info.value.field == "store_url" and info.value.message == "must be a string, not 5"
    with pytest.raises(InputError) as info:
        FeatureConfig(fractions=(0.8, 0.2))
    assert info.value.field == "fractions" and "three numbers" in info.value.message
    assert FeatureConfig(fractions=[0.6, 0.2, 0.2]).fractions == (0.6, 0.2, 0.2)


def test_error_names_nested_keys_and_reads_well():
    with pytest.raises(InputError) as info:
        ExperimentConfig.from_dict({"features": [{"name": "a", "kind": "categorical"}], "model": {"hidden": [8, 0]}})
    assert info.value.field == "model.hidden[1]" and "must be >= 1, not 0" in info.value.message
    with pytest.raises(InputError) as info:
        FeatureSpec.from_dict({"features": [{"name": "a", "kind": "categorical", "side": "both"}]})
    assert info.value.field == "features[0].side"
    assert info.value.message == "must be one of user, item, context, not 'both'"
    with pytest.raises(InputError, match="must be finite"):
        TrainConfig(lr=float("nan"))
