"""fuse(): K models of one spec -> one DeepCrossing whose logit is the members' mean; its first-layer split."""

from __future__ import annotations

import pytest
import torch
from dc_synthetic import numeric_spec, sample_table, small_spec

from deepcrossing.config import Feature, FeatureSpec, ModelConfig
from deepcrossing.encoding import Encoder
from deepcrossing.errors import InputError
from deepcrossing.model import DeepCrossing, ResidualUnit
from deepcrossing.model.ensemble import check_fusable, fuse, stacked_layout

SPECS = {
    "small": small_spec,       # ids, shared tables (movie, genre), weighted bags, hashed, buckets, dense
    "numeric": numeric_spec,   # ple (raw and Linear+ReLU), ple_tree, periodic (raw and with dim), dense
    # no shared stacked column (no dense, no raw ple): a residual MLP without projection can be fused
    "no_shared": lambda: FeatureSpec((
        Feature("movieId", "categorical", "item", table="movie", dim=3),
        Feature("userRecentPositives", "multi_hot", "user", table="movie", max_len=5, pooling="sum"),
        Feature("userGenreCounts", "multi_hot", "user", weights_from="values", dim=2),
        Feature("movieAvgRating", "numeric", "item", transform="periodic", n_frequencies=2, sigma=0.5),
        Feature("userAvgRating", "numeric", "user", transform="ple", n_buckets=4, dim=3))),
}
MLPS = {
    "plain": {"mlp": "plain", "hidden": (16, 8)},
    "residual": {"mlp": "residual", "hidden": (12, 10), "width": 16},
}


@pytest.fixture(scope="module")
def data():
    table = sample_table(300, seed=2)
    out = {}
    for name, spec in SPECS.items():
        encoder = Encoder(spec()).fit(table)
        out[name] = (encoder, encoder.transform(table))
    return out


def members_of(spec, config, encoder, batch, k):
    """K models from seeds 0..K-1; batch norm's running statistics moved away from (0, 1) by train passes."""
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        model = DeepCrossing(spec, config, encoder.cardinalities)
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(batch)
        models.append(model.eval())
    return models


CASES = [(s, m, n) for s in ("small", "numeric") for m in MLPS for n in ("none", "batch")] + \
        [("no_shared", "residual_noproj", "none"), ("no_shared", "residual_noproj", "batch")]


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize(("spec_name", "mlp", "norm"), CASES)
def test_fused_logit_is_the_mean_of_the_members(data, spec_name, mlp, norm, k):
    encoder, batch = data[spec_name]
    shape = MLPS.get(mlp, {"mlp": "residual", "hidden": (12,), "width": 0})
    config = ModelConfig(**shape, norm=norm, dropout=0.3, embedding_dropout=0.2)
    members = members_of(SPECS[spec_name](), config, encoder, batch, k)
    rng = torch.get_rng_state()
    fused = fuse(members)
    assert torch.equal(torch.get_rng_state(), rng)                        # fuse draws nothing
    assert type(fused) is DeepCrossing and not fused.training
    assert fused.config.hidden == tuple(k * h for h in config.hidden) and fused.config.width == k * config.width
    assert fused.stacking.out_dim > members[0].stacking.out_dim
    with torch.no_grad():
        mean = torch.stack([m(batch) for m in members]).mean(dim=0)
        got = fused(batch)
    torch.testing.assert_close(got, mean, atol=1e-5, rtol=0)
    assert mean.std() > 1e-3 and (members[0](batch) - members[1](batch)).abs().max() > 1e-3  # members differ
    # a rebuilt model of the fused spec/config takes the fused weights exactly (what model files do); its
    # output may differ by float rounding only (the GEMM's blocking depends on where the buffers lie)
    rebuilt = DeepCrossing(fused.spec, fused.config, encoder.cardinalities).eval()
    rebuilt.load_state_dict(fused.state_dict(), strict=True)
    torch.testing.assert_close(rebuilt(batch), got, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize(("spec_name", "mlp"), [("small", "plain"), ("numeric", "residual"),
                                                ("no_shared", "residual_noproj")])
def test_fused_first_layer_split_equals_forward(data, spec_name, mlp):
    """The serving split (item partial + request partial, then the head) of the fused model is its forward."""
    encoder, batch = data[spec_name]
    shape = MLPS.get(mlp, {"mlp": "residual", "hidden": (12,), "width": 0})
    fused = fuse(members_of(SPECS[spec_name](), ModelConfig(**shape, norm="batch"), encoder, batch, 3))
    split = fused.first_layer_split()
    assert split.needs_stacked == isinstance(fused.mlp.blocks[0], ResidualUnit) == (mlp == "residual_noproj")
    stacked = fused.stack(batch)
    item_x, item_p = split.item_partial(stacked)
    user_x, user_p = split.request_partial(stacked[7])
    logits = fused.head_from_first_layer(item_p + user_p, item_x + user_x if split.needs_stacked else item_p[:, :0])
    rebuilt = torch.where(split.item_mask, stacked, stacked[7])         # row 7's user with every item
    torch.testing.assert_close(logits, fused.scoring(fused.mlp(rebuilt)), atol=1e-5, rtol=0)


def test_stacked_layout_interleaves_members_per_feature(data):
    """Member m's stacked columns: its slice of each table feature, the shared dense columns for all."""
    encoder, batch = data["small"]
    spec = small_spec()
    members = members_of(spec, ModelConfig(mlp="plain", hidden=(4,)), encoder, batch, 2)
    fused = fuse(members)
    layout = stacked_layout(spec, members[0], fused, 2)
    user = fused.feature_slices["userId"]                                    # dim 4 -> 8
    assert (user.start, user.stop) == (0, 8)
    assert layout[0][:4].tolist() == [0, 1, 2, 3] and layout[1][:4].tolist() == [4, 5, 6, 7]
    dense = fused.feature_slices["userAvgRating"].start
    assert dense in layout[0].tolist() and dense in layout[1].tolist()       # shared
    assert len(layout[0]) == len(layout[1]) == members[0].stacking.out_dim
    with torch.no_grad():                                                    # the map itself, on real values
        for m, member in enumerate(members):
            torch.testing.assert_close(fused.stack(batch)[:, layout[m]], member.stack(batch), atol=1e-6, rtol=0)


def test_one_member_is_the_member(data):
    encoder, batch = data["numeric"]
    [member] = members_of(numeric_spec(), ModelConfig(norm="batch"), encoder, batch, 1)
    fused = fuse([member])
    assert fused.config == member.config
    torch.testing.assert_close(fused(batch), member(batch), atol=1e-6, rtol=0)


def test_layer_norm_and_shared_skip_are_refused(data):
    encoder, batch = data["small"]
    with pytest.raises(InputError, match="norm = 'layer'") as info:
        fuse(members_of(small_spec(), ModelConfig(norm="layer"), encoder, batch, 2))
    assert info.value.field == "model.norm"
    with pytest.raises(InputError, match="width = 0") as info:
        check_fusable(ModelConfig(mlp="residual", width=0), small_spec())
    assert info.value.field == "model.width" and "userAvgRating" in info.value.message
    check_fusable(ModelConfig(mlp="plain", norm="batch"), small_spec())     # fine


def test_members_must_agree(data):
    encoder, batch = data["small"]
    a = members_of(small_spec(), ModelConfig(mlp="plain", hidden=(8,)), encoder, batch, 1)
    b = members_of(small_spec(), ModelConfig(mlp="plain", hidden=(6,)), encoder, batch, 1)
    with pytest.raises(InputError, match="member 1 differs"):
        fuse(a + b)
    with pytest.raises(InputError, match="at least one"):
        fuse([])


def test_too_wide_a_fusion_names_the_feature():
    spec = FeatureSpec((Feature("movieId", "categorical", "item", dim=600),))
    members = [DeepCrossing(spec, ModelConfig(hidden=(4,), width=4), {"movieId": 5}) for _ in range(2)]
    with pytest.raises(InputError, match="movieId") as info:
        fuse(members)
    assert info.value.field == "features[0].dim"
