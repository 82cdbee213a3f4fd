"""Numeric embeddings, trainable half: the periodic formula, shapes, seeding, and the first-layer split with
numeric embeddings on both sides."""

from __future__ import annotations

import math

import pytest
import torch
from dc_synthetic import numeric_spec, sample_table

from deepcrossing.config import Feature, FeatureSpec, ModelConfig
from deepcrossing.encoding import Encoder
from deepcrossing.model import DeepCrossing, DeepCrossingTrain
from deepcrossing.model.numeric import NumericEmbeddingLayer, Periodic


def test_periodic_formula_and_shapes():
    p = Periodic(2, 1.0)
    with torch.no_grad():
        p.frequencies.copy_(torch.tensor([0.25, -1.0]))
    x = torch.tensor([[0.0], [1.0], [0.5]])
    out = p(x)
    assert out.shape == (3, 4)
    expected = [[math.sin(2 * math.pi * c * v) for c in (0.25, -1.0)] + [math.cos(2 * math.pi * c * v) for c in
                                                                         (0.25, -1.0)] for v in (0.0, 1.0, 0.5)]
    torch.testing.assert_close(out, torch.tensor(expected), atol=1e-6, rtol=0)


def test_periodic_frequencies_follow_sigma_and_the_seed():
    torch.manual_seed(3)
    a = Periodic(4000, 0.05)
    torch.manual_seed(3)
    b = Periodic(4000, 0.05)
    torch.manual_seed(4)
    c = Periodic(4000, 0.05)
    assert torch.equal(a.frequencies, b.frequencies) and not torch.equal(a.frequencies, c.frequencies)
    assert abs(float(a.frequencies.detach().std()) - 0.05) < 0.005
    assert a.frequencies.requires_grad


def test_layer_widths_raw_and_linear_relu():
    spec = FeatureSpec((Feature("a", "numeric", transform="ple", n_buckets=6),
                        Feature("b", "numeric", transform="ple_tree", n_buckets=5, dim=7),
                        Feature("c", "numeric", transform="periodic", n_frequencies=3),
                        Feature("d", "numeric", transform="periodic", n_frequencies=3, dim=2),
                        Feature("e", "numeric", transform="standardize")))
    layer = NumericEmbeddingLayer(spec)
    assert layer.dims == {"a": 6, "b": 7, "c": 6, "d": 2}
    x = {"a": torch.rand(5, 6), "b": torch.rand(5, 5), "c": torch.randn(5, 1), "d": torch.randn(5, 1)}
    out = layer(x)
    assert torch.equal(out["a"], x["a"])                         # no dim: the raw encoding
    assert (out["b"] >= 0).all() and (out["d"] >= 0).all()       # Linear + ReLU
    assert {k: v.shape[1] for k, v in out.items()} == layer.dims


@pytest.fixture(scope="module")
def encoded():
    table = sample_table(300, seed=2)
    encoder = Encoder(numeric_spec()).fit(table)
    return encoder, encoder.transform(table)


@pytest.mark.parametrize("mlp", [{"mlp": "residual", "hidden": (12,), "width": 0},
                                 {"mlp": "plain", "hidden": (16, 8)}])
def test_first_layer_split_with_numeric_embeddings(encoded, mlp):
    encoder, batch = encoded
    torch.manual_seed(0)
    model = DeepCrossing(numeric_spec(), ModelConfig(**mlp, embedding_dropout=0.2), encoder.cardinalities).eval()
    slices = model.feature_slices
    assert slices["userAvgRating"].stop - slices["userAvgRating"].start == 3
    assert slices["movieRatingCount"].stop - slices["movieRatingCount"].start == 5
    split = model.first_layer_split()
    for name, item in [("movieAvgRating", True), ("movieRatingCount", True), ("userAvgRating", False),
                       ("userRatingCount", False)]:
        assert bool(split.item_mask[slices[name]].all()) == item and bool(split.item_mask[slices[name]].any()) == item
    stacked = model.stack(batch)
    item_x, item_p = split.item_partial(stacked)
    user_x, user_p = split.request_partial(stacked[7])
    logits = model.head_from_first_layer(item_p + user_p, item_x + user_x if split.needs_stacked else item_p[:, :0])
    rebuilt = torch.where(split.item_mask, stacked, stacked[7])
    torch.testing.assert_close(logits, model.scoring(model.mlp(rebuilt)), atol=1e-5, rtol=0)
    # the user's stacked columns depend only on the user's columns, the movie's only on the movie's
    user_side = encoder.transform(sample_table(300, seed=2), only={"userAvgRating", "userRatingCount",
                                                                   "userGenreCounts", "userId"})
    torch.testing.assert_close(split.request_partial(model.stack(user_side)[7])[1], user_p)
    assert model(batch).std() > 1e-4


def test_training_step_reaches_numeric_parameters(encoded):
    encoder, batch = encoded
    torch.manual_seed(0)
    model = DeepCrossing(numeric_spec(), ModelConfig(embedding_l2=1e-2), encoder.cardinalities)
    wrapper = DeepCrossingTrain(model)
    objective, loss = wrapper(batch)
    objective.backward()
    for name in ("movieAvgRating", "userRatingCount"):
        assert model.numeric.embeddings[name][0].frequencies.grad.abs().sum() > 0
    assert model.numeric.embeddings["userAvgRating"][0].linear.weight.grad.abs().sum() > 0
    groups = wrapper.parameter_groups()
    numeric = {id(p) for p in model.numeric.parameters()}
    assert numeric <= {id(p) for p in groups.dense}               # not embedding tables: no row-sparse Adam
    # the penalty covers the table lookups only
    penalty = 1e-2 * sum(e.pow(2).sum(dim=1) for e in model.embedding(batch).values()).mean()
    torch.testing.assert_close(objective.detach() - loss, penalty.detach(), atol=1e-6, rtol=1e-4)
