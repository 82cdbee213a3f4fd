"""The served pair features (user x movie, issue 11): the fast path's third part of the first layer equals the
plain forward pass for every numeric transform, for cold users and unknown movies; through the engine too."""

from __future__ import annotations

import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from deepcrossing.config import Feature, FeatureSpec, ModelConfig, load_builtin
from deepcrossing.encoding.encoder import Encoder
from deepcrossing.features.pair import GENRE_PAIR
from deepcrossing.model.deep_crossing import DeepCrossing
from deepcrossing.serving.engine import empty_features
from deepcrossing.serving.publish import build_records, schema_from_json
from deepcrossing.serving.scorer import Scorer, join_user_movies

# each pair column under each kind of numeric transform (standardize, quantile buckets, PLE, periodic)
PAIRS = {
    "dense": (Feature("userGenreCosine", "numeric", "context", transform="standardize"),
              Feature("userGenreAvgRating", "numeric", "context", transform="log1p_standardize")),
    "embedded": (Feature("userGenreCosine", "numeric", "context", transform="ple", n_buckets=6, dim=3),
                 Feature("userGenreAvgRating", "numeric", "context", transform="periodic", n_frequencies=3,
                         dim=2)),
    "buckets": (Feature("userGenreCosine", "numeric", "context", transform="buckets", n_buckets=5),
                Feature("userGenreAvgRating", "numeric", "context", transform="ple_tree", n_buckets=4)),
}


def build(samples, pairs, mlp: str, seed: int = 0, steps: int = 20):
    base = tuple(f for f in load_builtin("movielens").spec.features if f.name not in GENRE_PAIR)
    spec = FeatureSpec(base + (Feature("movieId", "categorical", "item", min_count=2, dim=4),) + tuple(pairs))
    train = pq.read_table(samples / "train.parquet")
    encoder = Encoder(spec).fit(train)
    torch.manual_seed(seed)
    config = ModelConfig(mlp=mlp, hidden=(32, 32) if mlp == "residual" else (32, 16), width=24 if mlp == "residual"
                         else 0, dropout=0.0, embedding_dropout=0.0)
    model = DeepCrossing(spec, config, encoder.cardinalities)
    batch = encoder.transform(train)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        part = batch.take(torch.randint(0, len(batch), (512,)))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(part), part.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return types.SimpleNamespace(model=model.eval(), encoder=encoder, spec=spec, manifest={})


@pytest.fixture(scope="module")
def records(synth_data):
    users, movies, candidates, meta = build_records(synth_data["dataset"])
    user_schema, movie_schema = schema_from_json(meta["user_schema"]), schema_from_json(meta["movie_schema"])
    movie_table = pa.Table.from_pylist([r["features"] for _, r in movies], schema=movie_schema)
    return types.SimpleNamespace(users=users, user_schema=user_schema, movie_schema=movie_schema,
                                 movies=movie_table)


@pytest.mark.parametrize("mlp", ["residual", "plain"])
@pytest.mark.parametrize("kind", list(PAIRS))
def test_fast_path_with_pair_features_equals_plain_forward(synth_data, records, kind, mlp):
    scorer = Scorer(build(synth_data["samples"], PAIRS[kind], mlp))
    assert scorer.pair_columns == GENRE_PAIR and scorer.pair_idx is not None
    items = scorer.items(records.movies)
    assert items.occ is not None and items.occ.shape[0] == records.movies.num_rows
    rows = np.array([3, 0, 1999, 17, 17, 500, 42, 1234])
    active = max(range(len(records.users)), key=lambda i: len(records.users[i][1]["rated"]))
    known = pa.Table.from_pylist([records.users[active][1]["features"]], schema=records.user_schema)
    assert known.column("userGenreRatingCounts")[0].as_py()   # a user with a genre history
    cold = pa.Table.from_pylist([empty_features(records.user_schema, "userId", 10**9)], schema=records.user_schema)
    pair_values = []
    for user in (known, cold):
        part = scorer.user(user)
        fast = scorer.fast(part, items, rows)
        joined = join_user_movies(user, records.movies.take(pa.array(rows)), pair=True)
        torch.testing.assert_close(fast, scorer.plain(joined), atol=1e-5, rtol=0)
        pair_values.append(joined.select(list(GENRE_PAIR)))
        # many candidates (the chunked path) agree too
        everything = scorer.fast(part, items, np.arange(records.movies.num_rows))
        torch.testing.assert_close(everything[rows], fast, atol=1e-5, rtol=0)
    # the pair columns are really there and really vary (the test can fail): non-null for the known user,
    # all null for the cold one, and the scores move with them
    assert pair_values[0].column("userGenreCosine").null_count < len(rows)
    assert pair_values[1].column("userGenreCosine").null_count == len(rows)
    part = scorer.user(known)
    without = scorer.plain(join_user_movies(known, records.movies.take(pa.array(rows)), pair=True)
                           .drop(list(GENRE_PAIR)).append_column("userGenreCosine", pa.nulls(len(rows), pa.float64()))
                           .append_column("userGenreAvgRating", pa.nulls(len(rows), pa.float64())))
    assert not torch.allclose(without, scorer.fast(part, items, rows), atol=1e-4)


def test_unknown_movie_and_a_store_without_pair_inputs(synth_data, records):
    scorer = Scorer(build(synth_data["samples"], PAIRS["embedded"], "residual"))
    oov = pa.Table.from_pylist([empty_features(records.movie_schema, "movieId", 10**9)], schema=records.movie_schema)
    movies = pa.concat_tables([records.movies.slice(0, 3), oov])
    user = pa.Table.from_pylist([records.users[5][1]["features"]], schema=records.user_schema)
    items = scorer.items(movies)
    fast = scorer.fast(scorer.user(user), items, np.arange(4))
    torch.testing.assert_close(fast, scorer.plain(join_user_movies(user, movies, pair=True)), atol=1e-5, rtol=0)
    # a user table without the rating maps (a store published before them): the averages are NULL, no error
    old = user.drop(["userGenreRatingSums", "userGenreRatingCounts"])
    fast_old = scorer.fast(scorer.user(old), items, np.arange(4))
    torch.testing.assert_close(fast_old, scorer.plain(join_user_movies(old, movies, pair=True)), atol=1e-5, rtol=0)
    assert torch.isfinite(fast_old).all()


def test_a_model_without_pair_features_does_no_pair_work(synth_data, records):
    scorer = Scorer(build(synth_data["samples"], (), "plain"))
    assert scorer.pair_idx is None and scorer.pair_columns == ()
    items = scorer.items(records.movies)
    user = pa.Table.from_pylist([records.users[5][1]["features"]], schema=records.user_schema)
    part = scorer.user(user)
    assert items.occ is None and part.pair is None
    rows = np.arange(0, 2000, 7)
    torch.testing.assert_close(scorer.fast(part, items, rows),
                               scorer.plain(join_user_movies(user, records.movies.take(pa.array(rows)))),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_parity_with_pair_features(synth_data, tmp_path, fmt):
    """The whole model exported with the pair columns (nulls included) scores like the loaded model."""
    import json

    from dc_synthetic import exported_scores

    import deepcrossing
    from deepcrossing.config import TrainConfig
    from deepcrossing.training import artifact
    from deepcrossing.training.export import export_model, flat_inputs, layout

    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    built = build(synth_data["samples"], PAIRS["embedded"][:1] + PAIRS["dense"][1:], "residual", steps=5)
    artifact.save(tmp_path / "model", built.model, built.encoder, TrainConfig(epochs=1))
    path = export_model(tmp_path / "model", fmt, tmp_path / f"m.{fmt}")
    loaded = deepcrossing.load(tmp_path / "model")
    table = pq.read_table(synth_data["samples"] / "valid.parquet").slice(0, 300)
    assert 0 < table.column("userGenreAvgRating").null_count < 300
    batch = loaded.encoder.transform(table)
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert "userGenreAvgRating" in meta["dense_names"] and meta["numeric_names"] == ["userGenreCosine"]
    got = exported_scores(path, fmt, list(flat_inputs(batch, layout(loaded))), meta["inputs"])
    np.testing.assert_allclose(got, loaded.logits(batch).numpy(), atol=1e-5, rtol=0)
    assert np.std(got) > 1e-4


def check_fast_equals_plain(engine) -> None:
    """The engine's split first layer ranks a heavy user and an unknown one like the plain forward pass."""
    user = engine.store.meta()["example_users"][0]
    for uid in (user, 10**12):
        fast = engine.recommend(uid, k=20, candidates=300)
        plain = engine.recommend(uid, k=20, candidates=300, plain=True)
        assert [i["movieId"] for i in fast["items"]] == [i["movieId"] for i in plain["items"]]
        np.testing.assert_allclose([i["score"] for i in fast["items"]], [i["score"] for i in plain["items"]],
                                   atol=1e-5)


def test_engine_recommend_and_score_with_pair_features(synth_data, sqlite_url, tmp_path):
    """/recommend's engine path: fast equals plain on the published store; score() of an unknown movie works."""
    from deepcrossing.config import TrainConfig
    from deepcrossing.serving.engine import Engine
    from deepcrossing.training import artifact

    built = build(synth_data["samples"], PAIRS["embedded"], "residual")
    artifact.save(tmp_path / "model", built.model, built.encoder, TrainConfig(epochs=1))
    engine = Engine.open(tmp_path / "model", sqlite_url)
    assert engine.state is not None and engine.state.scorer.pair_idx is not None
    check_fast_equals_plain(engine)
    user = engine.store.meta()["example_users"][0]
    movies = [i["movieId"] for i in engine.recommend(user, k=3)["items"]] + [10**12]
    scored = engine.score(user, movies)
    assert scored["knownMovies"] == [True, True, True, False] and all(0 < s < 1 for s in scored["scores"])


def test_a_model_reading_an_unserved_pair_column_is_refused_by_name(monkeypatch):
    # every pair column is served now; the refusal stays for the next one (here: item-CF taken off the list)
    import deepcrossing.serving.scorer as scorer_module
    from deepcrossing.errors import DeepCrossingError

    spec = FeatureSpec((Feature("movieId", "categorical", "item", dim=4),
                        Feature("userItemCFScore", "numeric", "context", transform="standardize")))
    encoder = Encoder(spec).fit(pa.table({"movieId": [1, 2], "userItemCFScore": [3.0, 4.0]}))
    model = DeepCrossing(spec, ModelConfig(hidden=(4,), width=4), encoder.cardinalities)
    loaded = types.SimpleNamespace(model=model, encoder=encoder, spec=spec)
    assert Scorer(loaded).reads_itemcf
    monkeypatch.setattr(scorer_module, "SERVED_PAIR", GENRE_PAIR)
    with pytest.raises(DeepCrossingError, match="userItemCFScore"):
        Scorer(loaded)
