"""Numeric embeddings end to end: `deepcrossing train` with PLE / tree-bin / periodic features on the
built-in spec's samples, then the serving fast path against the plain forward pass on published records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from typer.testing import CliRunner

import deepcrossing
from deepcrossing.cli import app
from deepcrossing.config import load_builtin, save_config
from deepcrossing.serving.engine import empty_features
from deepcrossing.serving.publish import build_records, schema_from_json
from deepcrossing.serving.scorer import Scorer, join_user_movies

# every third numeric feature of the built-in spec gets each numeric embedding (both sides get each)
TRANSFORMS = {"ple": {"n_buckets": 8, "dim": 4}, "ple_tree": {"n_buckets": 6},
              "periodic": {"n_frequencies": 4, "sigma": 0.2, "dim": 3}}


@pytest.fixture(scope="module")
def trained(synth_data, tmp_path_factory):
    import dataclasses

    root = tmp_path_factory.mktemp("numeric-train")
    config = load_builtin("movielens")
    features, i = [], 0
    for f in config.spec.features:
        if f.kind == "numeric":
            name = list(TRANSFORMS)[i % 3]
            f = dataclasses.replace(f, transform=name, **TRANSFORMS[name])
            i += 1
        features.append(f)
    config = dataclasses.replace(config, spec=dataclasses.replace(config.spec, features=tuple(features)))
    spec = root / "spec.toml"
    save_config(config, spec)
    out = root / "model"
    result = CliRunner().invoke(app, ["train", "--samples", str(synth_data["samples"]), "--spec", str(spec),
                                      "--out", str(out), "--epochs", "1", "--seed", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return out


def test_trained_model_has_every_numeric_embedding(trained):
    loaded = deepcrossing.load(trained)
    transforms = {f.transform for f in loaded.spec.features if f.kind == "numeric"}
    assert transforms == set(TRANSFORMS)
    sides = {(f.side, f.transform) for f in loaded.spec.features if f.kind == "numeric"}
    assert {s for s, _ in sides} == {"user", "item", "context"}   # context: the user x movie (pair) columns
    assert loaded.manifest["metrics"]["valid"]["auc"] > 0.5


def test_fast_path_equals_plain_forward_with_numeric_embeddings(synth_data, trained: Path):
    scorer = Scorer(deepcrossing.load(trained))
    users, movies, _, meta = build_records(synth_data["dataset"])
    user_schema, movie_schema = schema_from_json(meta["user_schema"]), schema_from_json(meta["movie_schema"])
    movie = pa.Table.from_pylist([r["features"] for _, r in movies], schema=movie_schema)
    items = scorer.items(movie)
    rows = np.array([3, 0, 1999, 17, 500])
    for user in (pa.Table.from_pylist([users[5][1]["features"]], schema=user_schema),
                 pa.Table.from_pylist([empty_features(user_schema, "userId", 10**9)], schema=user_schema)):
        fast = scorer.fast(scorer.user(user), items, rows)
        plain = scorer.plain(join_user_movies(user, movie.take(pa.array(rows))))
        torch.testing.assert_close(fast, plain, atol=1e-5, rtol=0)
        assert torch.isfinite(fast).all() and fast.std() > 1e-4
