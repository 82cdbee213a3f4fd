"""RowSparseAdam must give torch.optim.SparseAdam's weights and state (up to float summation order)."""

import copy

import torch

from deepcrossing.training.optim import RowSparseAdam


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
