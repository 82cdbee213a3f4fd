"""RowSparseAdam must give torch.optim.SparseAdam's weights and state (up to float summation order)."""

import copy
import os
import shutil

import pytest
import torch

from deepcrossing.model import kernels
from deepcrossing.training.optim import RowSparseAdam, _row_adam


def test_row_sparse_adam_equals_sparse_adam() -> None:
    torch.manual_seed(0)
    ref = torch.nn.Embedding(50, 4, padding_idx=0, sparse=True)
    fast = copy.deepcopy(ref)
    initial = ref.weight.detach().clone()
    ref_opt = torch.optim.SparseAdam(ref.parameters(), lr=1e-2)
    fast_opt = RowSparseAdam(fast.parameters(), lr=1e-2)
    for _ in range(15):
        ids = torch.randint(0, 50, (64, 3))       # repeated rows and padding rows in every step
        target = torch.randn(64, 3, 4)
        for emb, opt in ((ref, ref_opt), (fast, fast_opt)):
            opt.zero_grad()
            ((emb(ids) - target) ** 2).sum().backward()
            opt.step()
    torch.testing.assert_close(fast.weight, ref.weight, rtol=1e-5, atol=1e-6)
    assert (fast.weight - initial).abs().max() > 1e-3   # it did train
    a, b = ref_opt.state_dict()["state"][0], fast_opt.state_dict()["state"][0]
    assert a["step"] == b["step"] == 15
    torch.testing.assert_close(b["exp_avg"], a["exp_avg"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b["exp_avg_sq"], a["exp_avg_sq"], rtol=1e-4, atol=1e-6)
    untouched = (a["exp_avg_sq"] == 0).all(dim=1)      # rows never looked up (and padding) are never moved
    assert untouched[0] and torch.equal(fast.weight[untouched], initial[untouched])
    # the state dicts are interchangeable (checkpoints written by either load into the other)
    fast_opt.load_state_dict(ref_opt.state_dict())


def test_row_sparse_adam_rejects_dense_gradients() -> None:
    w = torch.nn.Parameter(torch.zeros(3, 2))
    w.grad = torch.ones(3, 2)
    try:
        RowSparseAdam([w]).step()
    except RuntimeError as exc:
        assert "dense gradients" in str(exc)
    else:
        raise AssertionError("a dense gradient must be rejected")


needs_kernels = pytest.mark.skipif(shutil.which(os.environ.get("CC") or "cc") is None, reason="no C compiler")


@needs_kernels
def test_fused_row_adam_equals_the_torch_update():
    g = torch.Generator().manual_seed(0)
    shapes = [(300, 6), (5, 6), (40, 3)]                     # tables of two widths in one call
    params = [torch.randn(s, generator=g) for s in shapes]
    moments = [(torch.rand(s, generator=g), torch.rand(s, generator=g) * 1e-3) for s in shapes]
    rows = [torch.randperm(s[0], generator=g)[: s[0] // 2].sort().values for s in shapes]
    rows[1] = rows[1][:0]                                    # a table without rows this step
    values = [torch.randn(len(r), s[1], generator=g) for r, s in zip(rows, shapes)]
    steps, hyper = [-1e-2 * 0.7, -1e-2, -3e-3], (0.9, 0.999, 1e-8)
    fused = [[t.clone() for t in params], [m.clone() for m, _ in moments], [v.clone() for _, v in moments]]
    plain = [[t.clone() for t in params], [m.clone() for m, _ in moments], [v.clone() for _, v in moments]]
    kernels.row_adam(fused[0], rows, values, fused[1], fused[2], steps, hyper)
    _row_adam(plain[0], rows, values, plain[1], plain[2], steps, hyper)
    for a, b in zip(fused[1] + fused[2], plain[1] + plain[2]):
        assert torch.equal(a, b)                             # the moments: bit-equal
    for a, b in zip(fused[0], plain[0]):
        # sqrtf is correctly rounded, torch's vectorized sqrt is not (1 ulp on ~20% of floats)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert [torch.equal(a, before) for a, before in zip(fused[0], params)] == [False, True, False]
    with pytest.raises(IndexError, match="out of range"):
        kernels.row_adam(fused[0][:1], [torch.tensor([300])], values[:1], fused[1][:1], fused[2][:1], steps[:1],
                         hyper)


@needs_kernels
def test_a_trainer_run_with_and_without_the_kernels_gives_the_same_weights(monkeypatch):
    from dc_synthetic import sample_table, small_spec

    from deepcrossing.config import ModelConfig, TrainConfig
    from deepcrossing.encoding import Encoder
    from deepcrossing.model import DeepCrossing, DeepCrossingTrain
    from deepcrossing.training.trainer import Trainer

    train, valid = sample_table(600, seed=0), sample_table(200, seed=1)
    enc = Encoder(small_spec()).fit(train)
    train_batch, valid_batch = enc.transform(train), enc.transform(valid)
    weights = []
    for switch in ("1", "0"):
        monkeypatch.setenv("DEEPCROSSING_KERNELS", switch)
        assert kernels.available() == (switch == "1")
        torch.manual_seed(0)
        model = DeepCrossing(small_spec(), ModelConfig(width=16, hidden=(8,), dropout=0.0), enc.cardinalities,
                             sparse=True)
        config = TrainConfig(epochs=2, batch_size=64, lr=1e-2, patience=0, optimizer="sparse_adam")
        Trainer(DeepCrossingTrain(model), config, "cpu").fit(train_batch, valid_batch)
        weights.append(model.state_dict())
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=1e-5, atol=1e-5, msg=name)


@needs_kernels
def test_fused_row_adam_reports_rows_that_do_not_ascend_and_updates_nothing():
    params, m, v = [torch.randn(10, 2)], [torch.zeros(10, 2)], [torch.zeros(10, 2)]
    before = [t.clone() for t in (*params, *m, *v)]
    ok, unsorted = torch.tensor([1, 4]), torch.tensor([3, 3])               # a duplicate: not ascending
    found = kernels.row_adam(params * 2, [ok, unsorted], [torch.ones(2, 2)] * 2, m * 2, v * 2, [-0.1, -0.1],
                             (0.9, 0.999, 1e-8))
    assert found == 1 and all(torch.equal(a, b) for a, b in zip((*params, *m, *v), before))
    assert kernels.row_adam(params, [ok], [torch.ones(2, 2)], m, v, [-0.1], (0.9, 0.999, 1e-8)) is None
    assert not torch.equal(params[0], before[0])


@needs_kernels
@pytest.mark.parametrize("maximize", [False, True])
def test_row_sparse_adam_on_uncoalesced_gradients_is_the_same_with_and_without_the_kernels(monkeypatch, maximize):
    """nn.Embedding(sparse=True) gradients (duplicate rows, any order): the fused path sums them (the kernel
    reports the table) as the torch path does; moments bit-equal, weights within 1 ulp, at every step. The
    weights are made equal again before each step: an ulp apart, they would give gradients an ulp apart (the
    update's vector arithmetic may round differently on another CPU), and the moments would drift with them."""
    torch.manual_seed(0)
    tables = {switch: torch.nn.Embedding(40, 3, sparse=True) for switch in ("1", "0")}
    opts = {switch: RowSparseAdam(t.parameters(), lr=1e-2, maximize=maximize) for switch, t in tables.items()}
    for step in range(5):
        tables["0"].load_state_dict(tables["1"].state_dict())
        ids = torch.randint(0, 40, (32, 4), generator=torch.Generator().manual_seed(step))
        for switch in ("1", "0"):
            monkeypatch.setenv("DEEPCROSSING_KERNELS", switch)
            opts[switch].zero_grad()
            tables[switch](ids).pow(2).sum().backward()
            assert not tables[switch].weight.grad.is_coalesced()
            opts[switch].step()
        a, b = opts["1"].state_dict()["state"][0], opts["0"].state_dict()["state"][0]
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
        torch.testing.assert_close(tables["1"].weight, tables["0"].weight, rtol=1e-6, atol=1e-7)
