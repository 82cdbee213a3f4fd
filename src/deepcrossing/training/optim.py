"""Optimizers and learning-rate schedules of the Trainer.

:func:`make_optimizers` turns the training wrapper's :class:`~deepcrossing.model.train_module.ParameterGroups`
into optimizers (fused Adam/AdamW with their own weight decay for the embedding tables, or Adam for the dense
part plus :class:`RowSparseAdam` for tables with sparse gradients); :func:`lr_at` is the schedule.

Example:
    >>> from deepcrossing.config import TrainConfig
    >>> lr_at(TrainConfig(epochs=2, lr=1.0, lr_schedule="cosine"), epoch=1, step=0, steps=2)
    0.5
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from deepcrossing.config import TrainConfig
from deepcrossing.model import kernels
from deepcrossing.model.train_module import ParameterGroups


class RowSparseAdam(torch.optim.SparseAdam):
    """``torch.optim.SparseAdam`` with the same arithmetic on dense row ops.

    torch's SparseAdam coalesces the gradient (sort + reduce of every looked-up row) and updates the moments
    and the weights through ``sparse_mask`` and sparse ``add_`` calls. Here the duplicate rows are summed by
    ``torch.unique(return_inverse=True)`` + ``index_add_`` (2x faster than ``coalesce`` for the batch's
    11k movie-table rows, 2-4x for small tables), and with unique rows ``t.sparse_mask(g)`` is
    ``t.index_select(0, rows)`` and ``t.add_(sparse(rows, u))`` is ``t.index_add_(0, rows, u)``. The update
    is SparseAdam's formula in its order of operations; only the summation order of duplicate gradient rows
    differs (float rounding, ~1e-7 relative; deterministic). A gradient whose rows are already ascending and
    distinct (the embedding layer's lookups sum duplicates in backward) skips the ``unique`` (one O(nnz)
    comparison checks it). State and state_dict are SparseAdam's
    (checkpoints unchanged).
    On CPU float32 tables the update is one fused C call for all tables
    (:func:`~deepcrossing.model.kernels.row_adam`: m, v and p per element in SparseAdam's order, rows
    prefetched): the moments bit-equal to the torch path, the weights within 1 ulp (its ``sqrtf`` is correctly
    rounded, torch's vectorized ``sqrt`` is not on ~20% of floats). In the training loop (1 thread, batch 1024,
    steps alternating, thread time, load 2.5) the step takes 224 us instead of 484; ``DEEPCROSSING_KERNELS=0``
    keeps the ``_foreach`` path. There the kernel also makes the ascending check (the lookups' gradients pass it;
    AccumulateGrad drops their ``is_coalesced`` flag, so the O(nnz) torch comparison ran on every table every
    step) and reports a table that fails it, summed then: 174 -> 116 us a step in the training loop.
    Gradients must be row-sparse (``nn.Embedding(sparse=True)``: indices ``(1, nnz)``, values ``(nnz, D)``).
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            eps, lr, maximize = group["eps"], group["lr"], group.get("maximize", False)
            params, rows, values, exp_avgs, exp_avg_sqs, step_sizes = [], [], [], [], [], []
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if not grad.is_sparse:
                    raise RuntimeError("SparseAdam does not support dense gradients, please consider Adam instead")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                step = state["step"] = state["step"] + 1
                value = grad._values()
                if value.numel() == 0:
                    continue
                params.append(p)
                rows.append(grad._indices()[0])
                values.append(-value if maximize else value)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                step_sizes.append(-lr * math.sqrt(1 - beta2**step) / (1 - beta1**step))
            if not params:
                continue
            hyper = (beta1, beta2, eps)
            if kernels.available() and kernels.fits([*params, *values, *exp_avgs, *exp_avg_sqs], rows):
                # the kernel checks that each table's rows ascend (the lookups' do, though AccumulateGrad drops the
                # is_coalesced flag): a table's whose do not are summed first (nothing updated), then it runs again
                while (t := kernels.row_adam(params, rows, values, exp_avgs, exp_avg_sqs, step_sizes,
                                             hyper)) is not None:
                    rows[t], values[t] = _distinct(rows[t], values[t])
                continue
            for t, (index, value) in enumerate(zip(rows, values)):
                if not bool((index[1:] > index[:-1]).all()):  # ascending: already distinct
                    rows[t], values[t] = _distinct(index, value)
            _row_adam(params, rows, values, exp_avgs, exp_avg_sqs, step_sizes, hyper)
        return loss


def _distinct(index: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
    """A row-sparse gradient's ascending distinct rows (U,) and their summed value rows (U, D), ``index`` (nnz,)
    and ``value`` (nnz, D) in any order (``torch.unique`` + ``index_add_``: 2x faster than ``coalesce``)."""
    distinct, inverse = torch.unique(index, return_inverse=True)
    summed = value.new_zeros((len(distinct), *value.shape[1:]))
    summed.index_add_(0, inverse, value)
    return distinct, summed


def _row_adam(params: list[Tensor], rows: list[Tensor], values: list[Tensor], exp_avgs: list[Tensor],
              exp_avg_sqs: list[Tensor], step_sizes: list[float], hyper: tuple[float, float, float]) -> None:
    """SparseAdam's update of the distinct ``rows`` of every table, its arithmetic in its order; the
    elementwise part as ``torch._foreach_*`` calls over all tables at once (one call per operation, not one
    per table).

    Args:
        params, exp_avgs, exp_avg_sqs: (R_t, D) each table and its moments.
        rows: (U_t,) distinct rows; values: (U_t, D) their summed gradients.
        step_sizes: ``-lr * sqrt(1 - beta2^t) / (1 - beta1^t)`` per table.
        hyper: (beta1, beta2, eps).
    """
    beta1, beta2, eps = hyper
    # m[r] += (g - m[r]) (1 - beta1) as SparseAdam does, written as m[r] = m[r] + update: the rows are
    # distinct, so an index_copy_ of the sum stores what index_add_ would (bit for bit) without a scatter-add
    numers = [m.index_select(0, r) for m, r in zip(exp_avgs, rows)]                 # old, then new first moments
    exp_avg_updates = torch._foreach_sub(values, numers)
    torch._foreach_mul_(exp_avg_updates, 1 - beta1)
    torch._foreach_add_(numers, exp_avg_updates)
    for m, r, new in zip(exp_avgs, rows, numers):
        m.index_copy_(0, r, new)
    denoms = [v.index_select(0, r) for v, r in zip(exp_avg_sqs, rows)]             # old, then new second moments
    exp_avg_sq_updates = torch._foreach_pow(values, 2)
    torch._foreach_sub_(exp_avg_sq_updates, denoms)
    torch._foreach_mul_(exp_avg_sq_updates, 1 - beta2)
    torch._foreach_add_(denoms, exp_avg_sq_updates)
    for v, r, new in zip(exp_avg_sqs, rows, denoms):
        v.index_copy_(0, r, new)
    torch._foreach_sqrt_(denoms)
    torch._foreach_add_(denoms, eps)
    torch._foreach_div_(numers, denoms)
    torch._foreach_mul_(numers, step_sizes)
    for p, r, u in zip(params, rows, numers):
        p.index_add_(0, r, u)


def make_optimizers(groups: ParameterGroups, config: TrainConfig) -> list[torch.optim.Optimizer]:
    """The optimizers of one training run, stepped together.

    ``sparse_adam``: Adam over the dense parameters and, for tables with sparse gradients, RowSparseAdam over
    the tables (tables with dense gradients join the Adam). ``adam``/``adamw``: one fused optimizer with two
    groups, the dense parameters (``weight_decay``) then the tables (``embedding_weight_decay``).

    Args:
        groups: the training wrapper's parameter groups.
        config: lr, weight decays and the optimizer name.
    """
    c = config
    if c.optimizer == "sparse_adam":
        sparse = groups.embedding if groups.sparse_gradients else []
        dense = groups.dense if groups.sparse_gradients else [*groups.embedding, *groups.dense]
        opts: list[torch.optim.Optimizer] = [torch.optim.Adam(dense, lr=c.lr, weight_decay=c.weight_decay,
                                                              fused=True)]
        if sparse:
            opts.append(RowSparseAdam(sparse, lr=c.lr))
        return opts
    cls = torch.optim.AdamW if c.optimizer == "adamw" else torch.optim.Adam
    param_groups: list[dict[str, object]] = [{"params": groups.dense, "weight_decay": c.weight_decay}]
    if groups.embedding:
        param_groups.append({"params": groups.embedding, "weight_decay": c.embedding_weight_decay})
    # fused: one kernel per step instead of a pass over memory per Adam operation (4x faster on CPU for
    # tables of a million weights)
    return [cls(param_groups, lr=c.lr, fused=True)]


def lr_at(config: TrainConfig, epoch: int, step: int, steps: int) -> float:
    """Learning rate of step ``step`` (0-based) of epoch ``epoch`` (0-based), ``steps`` steps per epoch."""
    c = config
    if c.lr_schedule == "cosine":
        progress = (epoch * steps + step) / max(1, c.epochs * steps)
        return c.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if c.lr_schedule == "exponential":
        return float(c.lr * c.lr_decay ** epoch)
    return c.lr


def set_lr(optimizers: list[torch.optim.Optimizer], lr: float) -> None:
    """Set the learning rate of every group of every optimizer."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr


__all__ = ["RowSparseAdam", "lr_at", "make_optimizers", "set_lr"]
