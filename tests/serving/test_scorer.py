"""The split-first-layer fast path equals the model's plain forward pass; cold start and OOV movies work."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from deepcrossing.serving.engine import empty_features
from deepcrossing.serving.publish import build_records, schema_from_json
from deepcrossing.serving.scorer import Scorer, join_user_movies


@pytest.fixture(scope="module")
def records(synth_data):
    return build_records(synth_data["dataset"])


def tables(records, user_index=0):
    users, movies, candidates, meta = records
    user_schema, movie_schema = schema_from_json(meta["user_schema"]), schema_from_json(meta["movie_schema"])
    user = pa.Table.from_pylist([users[user_index][1]["features"]], schema=user_schema)
    movie = pa.Table.from_pylist([r["features"] for _, r in movies], schema=movie_schema)
    return user, movie, user_schema, movie_schema


@pytest.mark.parametrize("mlp", ["residual", "residual_noproj", "plain"])
def test_fast_path_equals_plain_forward(synth_data, records, mlp, make_loaded):
    scorer = Scorer(make_loaded(synth_data["samples"], mlp=mlp, steps=10))
    user, movies, user_schema, _ = tables(records, user_index=5)
    # as the engine calls it: the movie table and the one-row user table, each encoded on its own side
    items = scorer.items(movies)
    part = scorer.user(user)
    assert items.p.shape[0] == movies.num_rows == 2000
    rows = np.array([3, 0, 1999, 17, 17, 500])
    fast = scorer.fast(part, items, rows)
    plain = scorer.plain(join_user_movies(user, movies.take(pa.array(rows))))
    assert fast.shape == (6,)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=0)
    assert fast.std() > 1e-3  # not a constant: the movies really differ
    everything = scorer.fast(part, items, np.arange(2000))
    torch.testing.assert_close(everything, scorer.plain(join_user_movies(user, movies)), atol=1e-5, rtol=0)
    # joined tables (every column present) give the same partials
    cold = pa.Table.from_pylist([empty_features(user_schema, "userId", 0)], schema=user_schema)
    torch.testing.assert_close(scorer.items(join_user_movies(cold, movies)).p, items.p)
    torch.testing.assert_close(scorer.user(join_user_movies(user, movies.slice(0, 1))).p, part.p)


def test_cold_start_user_and_oov_movie(synth_data, records, make_loaded):
    scorer = Scorer(make_loaded(synth_data["samples"]))
    _, movies, user_schema, movie_schema = tables(records)
    cold_user = pa.Table.from_pylist([empty_features(user_schema, "userId", 10**9)], schema=user_schema)
    oov = pa.Table.from_pylist([empty_features(movie_schema, "movieId", 10**9)], schema=movie_schema)
    items = scorer.items(join_user_movies(cold_user, pa.concat_tables([movies.slice(0, 3), oov])))
    fast = scorer.fast(scorer.user(join_user_movies(cold_user, movies.slice(0, 1))), items, np.arange(4))
    plain = scorer.plain(join_user_movies(cold_user, pa.concat_tables([movies.slice(0, 3), oov])))
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=0)
    assert torch.isfinite(fast).all()
    batch = scorer.encoder.transform(join_user_movies(cold_user, oov))
    assert batch.sparse["movieId"].item() == 1 and batch.sparse["userId"].item() == 1  # the OOV rows


def test_cold_start_matches_a_first_rating_sample(synth_data, records):
    """A user's first sample has exactly the 'empty history' features the service uses for cold start."""
    import pyarrow.parquet as pq

    _, _, user_schema, _ = tables(records)
    train = pq.read_table(synth_data["samples"] / "train.parquet")
    first = train.filter(pa.compute.equal(train.column("userRatingCount"), 0)).slice(0, 1)
    names = [n for n in user_schema.names if n in train.column_names]   # the online-only maps are not samples'
    row = first.select(names).to_pylist()[0]
    row["userGenreCounts"] = dict(row["userGenreCounts"] or [])
    cold = empty_features(user_schema, "userId", row["userId"])
    assert row == {n: cold[n] for n in names} and len(names) >= len(user_schema.names) - 2


@pytest.mark.parametrize("mlp", ["residual_noproj", "plain"])
def test_onnx_backend_equals_torch(synth_data, records, mlp, make_loaded):
    pytest.importorskip("onnxruntime")
    loaded = make_loaded(synth_data["samples"], mlp=mlp, steps=5)
    torch_scorer, onnx_scorer = Scorer(loaded), Scorer(loaded, backend="onnx")
    user, movies, user_schema, _ = tables(records, user_index=2)
    cold = pa.Table.from_pylist([empty_features(user_schema, "userId", 0)], schema=user_schema)
    items = torch_scorer.items(join_user_movies(cold, movies))
    part = torch_scorer.user(join_user_movies(user, movies.slice(0, 1)))
    rows = np.arange(0, 2000, 3)
    torch.testing.assert_close(onnx_scorer.fast(part, items, rows), torch_scorer.fast(part, items, rows),
                               atol=1e-5, rtol=0)


def test_scorer_needs_a_deep_crossing_model():
    """The fast path uses the model's own split; any other module is refused by type, not by layer names."""
    import types

    from deepcrossing.errors import DeepCrossingError

    with pytest.raises(DeepCrossingError, match="needs a DeepCrossing model, not a Linear"):
        Scorer(types.SimpleNamespace(model=torch.nn.Linear(2, 1), encoder=None, spec=None))
    with pytest.raises(DeepCrossingError, match="backend must be torch or onnx"):
        Scorer(types.SimpleNamespace(model=torch.nn.Linear(2, 1), encoder=None, spec=None), backend="tf")
