"""Two-tower model: tower shapes, a cold user's vector, the shared movie table, and the sampled softmax with
the log-Q correction against a value computed by hand."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest
import torch

from deepcrossing.encoding.encoder import Encoder
from deepcrossing.errors import InputError
from deepcrossing.model.two_tower import TwoTower, TwoTowerConfig, sampled_softmax_loss, two_tower_spec

GENRE_COUNTS = pa.map_(pa.string(), pa.int64())


def _table(n: int = 6) -> pa.Table:
    return pa.table({
        "movieId": [1 + i % 4 for i in range(n)],
        "movieGenres": [["Drama"] if i % 2 else ["Comedy", "Drama"] for i in range(n)],
        "releaseYear": [1990 + i for i in range(n)],
        "movieRatingCount": list(range(n)),
        "movieAvgRating": [3.0 + 0.1 * i for i in range(n)],
        "moviePositiveRate": [0.5] * n,
        "movieSecondsSinceFirstRating": [1000 * i for i in range(n)],
        "userRecentPositives": [[1 + (i + 1) % 4, 1 + (i + 2) % 4] for i in range(n)],
        "userGenreCounts": pa.array([[("Drama", i + 1)] for i in range(n)], GENRE_COUNTS),
        "userRatingCount": [i + 1 for i in range(n)],
        "userAvgRating": [3.5] * n,
        "userPositiveRate": [0.6] * n,
        "userAvgReleaseYear": [1995.0] * n,
    })


def _cold_user() -> pa.Table:
    return pa.table({"userId": [99], "userRecentPositives": pa.array([[]], pa.list_(pa.int64())),
                     "userGenreCounts": pa.array([[]], GENRE_COUNTS), "userRatingCount": [0],
                     "userAvgRating": pa.array([None], pa.float64()),
                     "userPositiveRate": pa.array([None], pa.float64()),
                     "userAvgReleaseYear": pa.array([None], pa.float64())})


@pytest.fixture()
def fitted() -> tuple[TwoTower, Encoder]:
    torch.manual_seed(0)
    spec = two_tower_spec(movie_dim=6, genre_dim=4)
    enc = Encoder(spec).fit(_table())
    return TwoTower(spec, TwoTowerConfig(dim=5, hidden=(7,)), enc.cardinalities), enc


def test_tower_shapes_and_unit_rows(fitted: tuple[TwoTower, Encoder]) -> None:
    model, enc = fitted
    user, item = model(enc.transform(_table()))
    assert user.shape == (6, 5) and item.shape == (6, 5)
    assert torch.allclose(user.norm(dim=1), torch.ones(6)) and torch.allclose(item.norm(dim=1), torch.ones(6))
    # the towers read only their side: a batch encoding only the item columns gives the same item vectors
    items_only = enc.transform(_table(), only=[f.name for f in model.spec.features if f.side == "item"])
    assert torch.allclose(model.item_tower(items_only), item)


def test_cold_user_gets_a_finite_vector(fitted: tuple[TwoTower, Encoder]) -> None:
    model, enc = fitted
    users = [f.name for f in model.spec.features if f.side == "user"]
    vec = model.eval().user_tower(enc.transform(_cold_user(), only=users))
    assert vec.shape == (1, 5) and torch.isfinite(vec).all()


def test_movie_table_is_shared(fitted: tuple[TwoTower, Encoder]) -> None:
    model, _ = fitted
    assert set(model.embedding.tables) == {"movie", "genre"}
    assert model.embedding.dims["movieId"] == model.embedding.dims["userRecentPositives"] == 6


def test_spec_with_a_context_feature_is_refused() -> None:
    from deepcrossing.config import Feature, FeatureSpec

    spec = FeatureSpec((Feature("movieId", "categorical", "item"), Feature("hour", "categorical", "context")))
    with pytest.raises(InputError, match="user or the item side"):
        TwoTower(spec, TwoTowerConfig(), {"movieId": 3, "hour": 3})


def test_loss_with_log_q_equals_hand_computation() -> None:
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    item = torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]])
    ids = torch.tensor([10, 20, 10])                  # samples 0 and 2 share their positive movie
    q = [0.5, 0.25, 0.5]
    t = 0.5
    got = sampled_softmax_loss(user, item, ids, torch.log(torch.tensor(q)), t)
    dots = [[sum(a * b for a, b in zip(u, v, strict=True)) for v in item.tolist()] for u in user.tolist()]
    logit = [[dots[i][j] / t - math.log(q[j]) for j in range(3)] for i in range(3)]
    # row 0: column 2 is movie 10 again (masked); row 2: column 0 is masked; row 1 sees all three
    rows = [(0, [0, 1]), (1, [0, 1, 2]), (2, [1, 2])]
    want = sum(-logit[i][i] + math.log(sum(math.exp(logit[i][j]) for j in cols)) for i, cols in rows) / 3
    assert float(got) == pytest.approx(want, rel=1e-6)
    # without the correction the value differs (the correction is applied)
    plain = sampled_softmax_loss(user, item, ids, torch.zeros(3), t)
    assert float(plain) != pytest.approx(want, rel=1e-3)


def test_loss_gradient_flows_to_both_towers(fitted: tuple[TwoTower, Encoder]) -> None:
    model, enc = fitted
    batch = enc.transform(_table())
    user, item = model(batch)
    loss = sampled_softmax_loss(user, item, batch.sparse["movieId"], torch.zeros(6), 0.1)
    loss.backward()
    assert model.towers["user"][0].weight.grad is not None and model.towers["item"][0].weight.grad is not None
    assert model.embedding.tables["movie"].weight.grad is not None
