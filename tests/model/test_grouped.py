"""Grouped layers (ModelConfig.groups, GroupedLinear): a fused K-seed ensemble computes its layers after the first
block-wise (K x one member's multiply-adds, not K^2) and equals the dense block-diagonal model; K = 1 unchanged."""

from __future__ import annotations

import json

import pytest
import torch
from dc_synthetic import small_spec
from safetensors.torch import load_file
from test_fuse import MLPS, data, members_of  # noqa: F401  (data: the module-scoped fixture)
from torch import nn

from deepcrossing.config import ModelConfig, TrainConfig
from deepcrossing.errors import InputError
from deepcrossing.model.ensemble import fuse, fused_config, ungroup
from deepcrossing.model.layers import GroupedLinear
from deepcrossing.training import artifact


def test_grouped_linear_is_the_block_diagonal_linear():
    torch.manual_seed(0)
    layer = GroupedLinear(6, 4, groups=2)
    assert layer.weight.shape == (2, 2, 3) and layer.bias.shape == (2, 2)
    dense = nn.Linear(6, 4)
    with torch.no_grad():
        dense.weight.copy_(layer.dense_weight())
        dense.bias.copy_(layer.bias.flatten())
    assert dense.weight[:2, 3:].abs().sum() == 0 and dense.weight[2:, :3].abs().sum() == 0
    x = torch.tensor([[1.0, -2.0, 0.5, 3.0, 0.0, -1.0], [0.25, 1.0, 2.0, -0.5, 4.0, 1.5], [0.0] * 6])
    torch.testing.assert_close(layer(x), dense(x), atol=1e-6, rtol=0)
    # block 0 sees only x[:, :3]: by hand, row 0
    expected = x[0, :3] @ layer.weight[0].T + layer.bias[0]
    torch.testing.assert_close(layer(x)[0, :2], expected.detach(), atol=1e-6, rtol=0)
    # gradients: the grouped weight's block k is the dense gradient's diagonal block k
    layer(x).pow(2).sum().backward()
    dense(x).pow(2).sum().backward()
    assert layer.weight.grad is not None and dense.weight.grad is not None and layer.bias.grad is not None
    torch.testing.assert_close(layer.weight.grad[1], dense.weight.grad[2:, 3:], atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.bias.grad.flatten(), dense.bias.grad, atol=1e-5, rtol=0)
    assert layer(torch.zeros(0, 6)).shape == (0, 4)                          # an empty batch
    with pytest.raises(ValueError, match="do not divide"):
        GroupedLinear(6, 5, groups=2)


CASES = [(mlp, norm, k) for mlp in MLPS for norm in ("none", "batch") for k in (2, 3)]


@pytest.mark.parametrize(("mlp", "norm", "k"), CASES)
def test_grouped_forward_equals_dense_block_diagonal_forward(data, mlp, norm, k):  # noqa: F811
    encoder, batch = data["small"]
    config = ModelConfig(**MLPS[mlp], norm=norm, dropout=0.0, embedding_dropout=0.0)
    members = members_of(small_spec(), config, encoder, batch, k)
    fused = fuse(members)
    dense = ungroup(fused)
    assert fused.config.groups == k and dense.config.groups is None
    grouped = [m for m in fused.mlp.modules() if isinstance(m, GroupedLinear)]
    assert len(grouped) == (1 if mlp == "plain" else 4)                      # every layer after the first
    assert not any(isinstance(m, GroupedLinear) for m in dense.modules())
    assert isinstance(fused.mlp.first_linear, nn.Linear)                     # the serving split's layer
    with torch.no_grad():
        got = fused(batch)
        torch.testing.assert_close(got, dense(batch), atol=1e-5, rtol=0)
        torch.testing.assert_close(got, torch.stack([m(batch) for m in members]).mean(dim=0), atol=1e-5, rtol=0)
    # multiply-adds per sample after the first layer: K x one member's (the dense form: K^2 x)
    def macs(model):
        later = [m for m in model.mlp.modules() if isinstance(m, (nn.Linear, GroupedLinear))][1:]
        return sum(m.weight.numel() for m in later)
    assert macs(fused) == k * macs(members[0]) and macs(dense) == k * k * macs(members[0])
    # training mode: batch statistics per channel, the same running statistics, the same gradients per block
    fused.train(), dense.train()
    loss_g, loss_d = fused(batch).pow(2).mean(), dense(batch).pow(2).mean()
    torch.testing.assert_close(loss_g, loss_d, atol=1e-5, rtol=1e-5)
    loss_g.backward(), loss_d.backward()
    dense_modules = dict(dense.named_modules())
    for name, module in fused.named_modules():
        if isinstance(module, GroupedLinear):
            twin = dense_modules[name]
            o, i = module.weight.shape[1:]
            for b in range(k):
                block = twin.weight.grad[b * o:(b + 1) * o, b * i:(b + 1) * i]
                torch.testing.assert_close(module.weight.grad[b], block, atol=1e-5, rtol=1e-4)
        if isinstance(module, nn.BatchNorm1d):
            torch.testing.assert_close(module.running_var, dense_modules[name].running_var, atol=1e-5, rtol=0)


def test_grouped_members_fuse_into_k_times_their_groups(data):  # noqa: F811
    encoder, batch = data["small"]
    members = members_of(small_spec(), ModelConfig(hidden=(8, 6), width=4, groups=2, norm="batch"), encoder,
                         batch, 3)
    fused = fuse(members)
    assert fused.config.groups == 6 and fused.config.width == 12
    with torch.no_grad():
        torch.testing.assert_close(fused(batch), torch.stack([m(batch) for m in members]).mean(dim=0),
                                   atol=1e-5, rtol=0)


def test_groups_are_validated_by_the_config():
    with pytest.raises(InputError, match="multiple") as info:
        ModelConfig(hidden=(8, 6), width=12, groups=4)
    assert info.value.field == "groups"
    with pytest.raises(InputError, match="multiple"):
        ModelConfig(mlp="residual", hidden=(6,), width=0, groups=3)      # no projection: nothing to split
    with pytest.raises(InputError, match="groups"):
        ModelConfig(groups=1)                                            # one group is written as no groups
    assert ModelConfig(mlp="plain", hidden=(6, 3), groups=3).width == 128  # plain ignores width
    assert "groups" not in ModelConfig().to_dict()
    assert ModelConfig.from_dict({"hidden": [6], "width": 6, "groups": 3}).groups == 3
    with pytest.raises(InputError, match="members") as info:
        fused_config(ModelConfig(hidden=(8,), width=8), 65)               # at most 64 groups
    assert info.value.field == "model.groups"
    assert fused_config(ModelConfig(hidden=(8,), width=0), 3).groups is None  # the dense fallback
    assert fused_config(ModelConfig(hidden=(8,)), 1) == ModelConfig(hidden=(8,))


def test_one_member_writes_todays_files(data, tmp_path):  # noqa: F811
    encoder, batch = data["small"]
    [member] = members_of(small_spec(), ModelConfig(norm="batch"), encoder, batch, 1)
    fused = fuse([member])
    assert fused.config == member.config and fused.config.groups is None
    for name, model in (("member", member), ("fused", fused)):
        artifact.save(tmp_path / name, model, encoder, TrainConfig())
    assert (tmp_path / "member" / "model.safetensors").read_bytes() == \
        (tmp_path / "fused" / "model.safetensors").read_bytes()
    manifests = [json.loads((tmp_path / name / "manifest.json").read_text()) for name in ("member", "fused")]
    for manifest in manifests:  # (fuse writes every table's dim explicitly into the spec, as it always did)
        assert manifest["format_version"] == artifact.FORMAT_VERSION == 1 and "groups" not in manifest["model_config"]
        manifest.pop("spec")
    assert manifests[0] == manifests[1]


def test_grouped_folder_round_trip_and_an_old_dense_fused_folder(data, tmp_path):  # noqa: F811
    encoder, batch = data["small"]
    fused = fuse(members_of(small_spec(), ModelConfig(hidden=(8,), width=6, norm="batch"), encoder, batch, 3))
    artifact.save(tmp_path / "grouped", fused, encoder, TrainConfig())
    manifest = json.loads((tmp_path / "grouped" / "manifest.json").read_text())
    assert manifest["format_version"] == artifact.GROUPED_FORMAT_VERSION == 2
    assert manifest["model_config"]["groups"] == 3
    weights = load_file(str(tmp_path / "grouped" / "model.safetensors"))
    assert weights["mlp.blocks.3.linear1.weight"].shape == (3, 8, 6)         # blocks, not (24, 18)
    loaded = artifact.load(tmp_path / "grouped")
    assert loaded.model.config.groups == 3
    with torch.no_grad():
        expected = fused(batch)
        torch.testing.assert_close(loaded.logits(batch), expected, atol=1e-6, rtol=0)
    # a fused folder written before groups (dense block-diagonal layers, format 1) still loads and scores alike
    artifact.save(tmp_path / "dense", ungroup(fused), encoder, TrainConfig())
    old = artifact.load(tmp_path / "dense")
    assert old.manifest["format_version"] == 1 and old.model.config.groups is None
    torch.testing.assert_close(old.logits(batch), expected, atol=1e-5, rtol=0)
    # a newer format is refused by name
    manifest["format_version"] = 3
    (tmp_path / "grouped" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="format_version 3 is not supported") as info:
        artifact.load(tmp_path / "grouped")
    assert info.value.field == "format_version"
