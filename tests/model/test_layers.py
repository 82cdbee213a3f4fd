"""The paper's layers on tiny seeded inputs, with exact expected shapes and values."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch
from dc_synthetic import sample_table, small_spec

from deepcrossing.config import Feature, FeatureSpec, ModelConfig
from deepcrossing.encoding import Batch, Encoder
from deepcrossing.model import MLP, DeepCrossing, EmbeddingLayer, ResidualUnit, ScoringLayer, StackingLayer


def test_residual_unit_against_hand_computation():
    unit = ResidualUnit(2, 3)
    with torch.no_grad():
        unit.linear1.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))
        unit.linear1.bias.copy_(torch.tensor([0.0, -1.0, 0.5]))
        unit.linear2.weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [-2.0, 0.0, 1.0]]))
        unit.linear2.bias.copy_(torch.tensor([0.1, -0.1]))
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
    # row 1: h = relu([1, 1, -0.5]) = [1, 1, 0]; W2 h + b2 = [2.1, -2.1]; relu(x + .) = relu([3.1, -0.1])
    # row 2: h = relu([-1, -0.5, -1]) = 0;        W2 h + b2 = [0.1, -0.1]; relu([-0.9, 0.4])
    expected = torch.tensor([[3.1, 0.0], [0.0, 0.4]])
    torch.testing.assert_close(unit(x), expected)


def test_embedding_layer_pools_and_ignores_padding():
    spec = FeatureSpec((
        Feature("movieId", "categorical", "item", table="movie", dim=2),
        Feature("recent", "multi_hot", "user", table="movie", pooling="mean"),
        Feature("recentSum", "multi_hot", "user", table="movie", pooling="sum"),
        Feature("weighted", "multi_hot", "user", table="movie", pooling="mean", weights_from="values"),
    ))
    layer = EmbeddingLayer(spec, {"movie": 4})
    with torch.no_grad():
        layer.tables["movie"].weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0], [0.0, 4.0]]))
    ids = torch.tensor([[2, 3, 0], [0, 0, 0]])  # row 2: all padding
    batch = Batch(torch.zeros(2, 0), {"movieId": torch.tensor([3, 0])},
                  {"recent": ids, "recentSum": ids, "weighted": ids},
                  {"weighted": torch.tensor([[3.0, 1.0, 100.0], [1.0, 1.0, 1.0]])})
    out = layer(batch)
    assert out["movieId"].tolist() == [[0.0, 4.0], [0.0, 0.0]]
    assert out["recent"].tolist() == [[1.0, 2.0], [0.0, 0.0]]  # mean of rows 2 and 3; padding ignored
    assert out["recentSum"].tolist() == [[2.0, 4.0], [0.0, 0.0]]
    assert out["weighted"].tolist() == [[1.5, 1.0], [0.0, 0.0]]  # (3*[2,0] + 1*[0,4]) / 4; pad weight ignored
    loss = sum(v.sum() for v in out.values())
    loss.backward()
    assert layer.tables["movie"].weight.grad[0].abs().sum() == 0  # padding row gets no gradient


def test_stacking_layer_slices_cover_the_vector():
    s = StackingLayer({"a": 2, "b": 3}, ["x", "y"])
    assert s.out_dim == 7
    assert s.feature_slices == {"a": slice(0, 2), "b": slice(2, 5), "x": slice(5, 6), "y": slice(6, 7)}
    out = s({"b": torch.full((1, 3), 2.0), "a": torch.ones(1, 2)}, torch.tensor([[7.0, 8.0]]))
    assert out.tolist() == [[1, 1, 2, 2, 2, 7, 8]]


def test_mlp_shapes_and_blocks():
    res = MLP(10, ModelConfig(mlp="residual", width=8, hidden=(4, 4), dropout=0.0, norm="layer"))
    assert res(torch.zeros(3, 10)).shape == (3, 8) and res.out_dim == 8
    assert sum(isinstance(b, ResidualUnit) for b in res.blocks) == 2
    paper = MLP(10, ModelConfig(mlp="residual", width=0, hidden=(16,), dropout=0.0))
    assert paper.out_dim == 10 and isinstance(paper.blocks[0], ResidualUnit)  # units on the stacked width
    plain = MLP(10, ModelConfig(mlp="plain", hidden=(128, 128), norm="batch"))
    assert plain(torch.zeros(4, 10)).shape == (4, 128)
    assert [type(b).__name__ for b in plain.blocks] == ["Linear", "ReLU", "BatchNorm1d", "Dropout"] * 2


def test_scoring_layer_is_one_logit():
    layer = ScoringLayer(3)
    with torch.no_grad():
        layer.linear.weight.copy_(torch.tensor([[1.0, -1.0, 2.0]]))
        layer.linear.bias.fill_(0.5)
    assert layer(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])).tolist() == [2.5, 0.5]


@pytest.fixture
def fitted():
    table = sample_table(200, seed=0)
    enc = Encoder(small_spec()).fit(table)
    torch.manual_seed(0)
    model = DeepCrossing(small_spec(), ModelConfig(width=16, hidden=(8,), dropout=0.0), enc.cardinalities)
    return table, enc, model.eval()


def test_deep_crossing_forward_and_slices(fitted):
    table, enc, model = fitted
    batch = enc.transform(table)
    logits = model(batch)
    assert logits.shape == (200,) and torch.isfinite(logits).all()
    slices = model.feature_slices
    assert list(slices)[-3:] == ["userAvgRating", "movieAvgRating", "movieRatingCount"]
    assert slices["movieId"] == slice(4, 10)  # after userId (dim 4)
    assert max(s.stop for s in slices.values()) == model.stacking.out_dim
    # the serving split: first layer = sum of per-side partial products (user vs item slices)
    stacked = model.stacking(model.embedding(batch), batch.dense)
    first = model.mlp.blocks[0]
    parts = {side: torch.zeros(200, first.out_features) for side in ("user", "item", "context")}
    for f in small_spec().features:
        s = slices[f.name]
        parts[f.side] += stacked[:, s] @ first.weight[:, s].T
    torch.testing.assert_close(parts["user"] + parts["item"] + parts["context"] + first.bias, first(stacked))


def test_unseen_ids_on_cpu_never_index_out_of_range(fitted):
    _, enc, model = fitted
    unseen = sample_table(50, seed=9, n_users=10_000, n_movies=10_000)
    unseen = unseen.set_column(unseen.column_names.index("movieTag"), "movieTag",
                               pa.array([f"new{i}" for i in range(50)]))
    logits = model(enc.transform(unseen))  # CPU: an out-of-range row would raise IndexError
    assert logits.shape == (50,) and torch.isfinite(logits).all()
