"""The model's first-layer split equals its forward pass; the training wrapper's loss, penalty and groups."""

from __future__ import annotations

import pytest
import torch
from dc_synthetic import sample_table, small_spec

from deepcrossing.config import ModelConfig
from deepcrossing.encoding import Encoder
from deepcrossing.model import DeepCrossing, DeepCrossingTrain, ResidualUnit


@pytest.fixture(scope="module")
def encoded():
    table = sample_table(300, seed=2)
    encoder = Encoder(small_spec()).fit(table)
    return encoder, encoder.transform(table)


MLPS = {
    "residual": {"mlp": "residual", "hidden": (12, 10), "width": 16},
    "residual_noproj": {"mlp": "residual", "hidden": (12,), "width": 0},
    "plain": {"mlp": "plain", "hidden": (16, 8)},
}


@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
@pytest.mark.parametrize("mlp", list(MLPS))
def test_first_layer_split_equals_forward(encoded, mlp, norm):
    encoder, batch = encoded
    torch.manual_seed(0)
    config = ModelConfig(**MLPS[mlp], norm=norm, dropout=0.3, embedding_dropout=0.2)
    model = DeepCrossing(small_spec(), config, encoder.cardinalities)
    model.train()
    with torch.no_grad():
        model(batch)  # batch norm: running statistics away from (0, 1), so eval mode really uses them
    model.eval()
    split = model.first_layer_split()
    assert split.needs_stacked == (mlp == "residual_noproj")
    assert isinstance(model.mlp.blocks[0], ResidualUnit) == split.needs_stacked
    stacked = model.stack(batch)                                        # (B, S)
    item_x, item_p = split.item_partial(stacked)                        # as for every movie of a store
    # one request row at a time, as the service does: row 7's user side against every row's item side
    user_x, user_p = split.request_partial(stacked[7])
    assert not (item_x != 0).logical_and(user_x != 0).any()            # disjoint columns
    assert split.item_mask.any() and not split.item_mask.all()
    logits = model.head_from_first_layer(item_p + user_p, item_x + user_x if split.needs_stacked
                                         else item_p[:, :0])
    rebuilt = torch.where(split.item_mask, stacked, stacked[7])         # row 7's user with every item
    expected = model.scoring(model.mlp(rebuilt))
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    # and on the batch itself (every row its own user): the split gives the plain forward pass
    whole_x, whole_p = split.item_partial(stacked)
    req = stacked.masked_fill(split.item_mask, 0.0)
    pre = whole_p + req @ split.weight.T + split.bias
    torch.testing.assert_close(model.head_from_first_layer(pre, whole_x + req), model(batch), atol=1e-5, rtol=0)
    assert model(batch).std() > 1e-4


@pytest.mark.parametrize("l2", [0.0, 1e-2])
def test_train_module_loss_and_penalty(encoded, l2):
    encoder, batch = encoded
    torch.manual_seed(0)
    model = DeepCrossing(small_spec(), ModelConfig(embedding_l2=l2, dropout=0.0, embedding_dropout=0.0),
                         encoder.cardinalities).eval()
    objective, loss = DeepCrossingTrain(model)(batch)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.labels)
    torch.testing.assert_close(loss, bce)
    assert not loss.requires_grad and objective.requires_grad
    embedded = model.embedding(batch)
    penalty = l2 * sum(e.pow(2).sum(dim=1) for e in embedded.values()).mean()
    torch.testing.assert_close(objective, bce + penalty)
    assert (objective > loss) == (l2 > 0)


@pytest.mark.parametrize("sparse", [False, True])
def test_train_module_parameter_groups(encoded, sparse):
    encoder, _ = encoded
    model = DeepCrossing(small_spec(), ModelConfig(), encoder.cardinalities, sparse=sparse)
    groups = DeepCrossingTrain(model).parameter_groups()
    tables = [m.weight for m in model.embedding.tables.values()]
    assert [id(p) for p in groups.embedding] == [id(p) for p in tables]
    assert {id(p) for p in groups.dense} == {id(p) for p in model.parameters()} - {id(p) for p in tables}
    assert [id(p) for p in [*groups.embedding, *groups.dense]] == [id(p) for p in model.parameters()]
    assert groups.sparse_gradients == sparse
    model.mlp.requires_grad_(False)
    frozen = DeepCrossingTrain(model).parameter_groups()
    assert len(frozen.dense) == len(list(model.scoring.parameters()))
