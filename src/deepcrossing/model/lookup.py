"""The training lookup of one embedding table: weighted bags of ids, a gradient with one row per distinct id.

:class:`~deepcrossing.model.layers.EmbeddingLayer` looks all features of a table up together. In training it
goes through :class:`BagLookup`, which computes the same vectors as its gather-and-pool path with fewer, larger
operations (one ``embedding_bag`` forward; in backward one gather and one ``index_add``) and hands the optimizer
a gradient whose duplicate ids are already summed: sparse, a coalesced COO tensor (ascending distinct rows,
which :class:`~deepcrossing.training.optim.RowSparseAdam` uses without sorting again); dense, those rows in a
zero table. At ``benchmarks/throughput.py``'s setting (1 thread, batch 1024, 4 tables) it replaces
``embedding_sparse_backward`` + the optimizer's sort of every looked-up id (11k for the movie table) with one
distinct-id pass in forward (a marked mask for tables not much larger than the batch): ~8% of a training step.

Shapes: N = ids (padding included, weight 0), M = output bags, U = distinct ids, R = table rows, D = width.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def unique_rows(ids: Tensor, rows: int) -> tuple[Tensor, Tensor]:
    """The distinct rows of ``ids`` (N,) int64 in ``[0, rows)``, ascending, and where each id is among them.

    ``torch.unique(ids, return_inverse=True)``, computed by marking a ``rows``-long mask when the table is not
    much larger than the batch (1 thread: sorting the movie table's 11k ids of a batch takes ~300 us, marking
    its 20k-row mask ~60 us; for a 100k-row table and 1k ids the sort is cheaper).

    Returns:
        (U,) the distinct ids, ascending; (N,) ``inverse`` with ``distinct[inverse] == ids``.

    Example:
        >>> unique_rows(torch.tensor([5, 1, 5, 2]), 6)
        (tensor([1, 2, 5]), tensor([2, 0, 2, 1]))
    """
    if rows > 16 * ids.numel():
        distinct, inverse = torch.unique(ids, return_inverse=True)
        return distinct, inverse
    mark = torch.zeros(rows, dtype=torch.bool, device=ids.device)
    mark.index_fill_(0, ids, True)                    # an id outside [0, rows) raises IndexError here
    distinct = mark.nonzero().view(-1)
    position = torch.empty(rows, dtype=torch.int64, device=ids.device)
    position.index_copy_(0, distinct, torch.arange(len(distinct), device=ids.device))
    return distinct, position.index_select(0, ids)


class BagLookup(torch.autograd.Function):
    """``out[m] = sum_i per_id[i] * weight[ids[i]]`` over the ids ``i`` of bag ``m`` (``bag_of[i] == m``).

    A single-valued feature is a bag of one id with weight 1 (its vector, exactly); padding weighs 0. Forward
    looks the distinct ids up once and pools them with ``embedding_bag``; backward gathers each id's bag
    gradient, scales it by ``per_id`` and sums the duplicates with one ``index_add_`` into (U, D). The table's
    gradient is sparse (``sparse=True``: coalesced COO over the ascending distinct rows) or dense; rows whose
    ids all weigh 0 (padding) get a zero gradient row.

    Args (of ``apply``):
        weight: (R, D) the table.
        ids: (N,) int64 table rows, bag after bag.
        per_id: (N,) weights of the ids, same dtype as ``weight`` (no gradient).
        offsets: (M,) int64 index in ``ids`` of each bag's first id (ascending).
        bag_of: (N,) int64 bag of each id (consistent with ``offsets``).
        sparse: the gradient's layout.

    Returns:
        (M, D) pooled vectors.

    Example:
        >>> w = torch.arange(8.0).view(4, 2).requires_grad_()
        >>> ids, per_id = torch.tensor([3, 1, 3]), torch.tensor([1.0, 0.5, 0.5])
        >>> out = BagLookup.apply(w, ids, per_id, torch.tensor([0, 1]), torch.tensor([0, 1, 1]), True)
        >>> out.tolist()
        [[6.0, 7.0], [4.0, 5.0]]
        >>> out.sum().backward(); w.grad._indices().tolist(), w.grad._values().tolist()
        ([[1, 3]], [[0.5, 0.5], [1.5, 1.5]])
    """

    @staticmethod
    def forward(ctx: Any, weight: Tensor, ids: Tensor, per_id: Tensor, offsets: Tensor, bag_of: Tensor,
                sparse: bool) -> Tensor:
        rows, inverse = unique_rows(ids, weight.shape[0])                       # (U,), (N,)
        distinct = weight.index_select(0, rows)                                 # (U, D)
        # torch.embedding_bag: F.embedding_bag's op without its Python checks (mode 0 = sum)
        out = torch.embedding_bag(distinct, inverse, offsets, False, 0, False, per_id)[0]      # (M, D)
        ctx.save_for_backward(rows, inverse, per_id, bag_of)
        ctx.table_shape, ctx.sparse = weight.shape, sparse
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None, None]:
        rows, inverse, per_id, bag_of = ctx.saved_tensors
        per_id_grad = grad.index_select(0, bag_of).mul_(per_id.unsqueeze(1))    # (N, D)
        summed = per_id_grad.new_zeros((len(rows), grad.shape[1])).index_add_(0, inverse, per_id_grad)  # (U, D)
        if ctx.sparse:
            table_grad = torch.sparse_coo_tensor(rows.unsqueeze(0), summed, ctx.table_shape, is_coalesced=True,
                                                 check_invariants=False)
        else:
            table_grad = summed.new_zeros(ctx.table_shape).index_copy_(0, rows, summed)
        return table_grad, None, None, None, None, None


def bag_lookup(weight: Tensor, ids: Tensor, per_id: Tensor, offsets: Tensor, bag_of: Tensor, sparse: bool) -> Tensor:
    """:class:`BagLookup` (its ``apply``, typed): (R, D), (N,), (N,), (M,), (N,) -> (M, D) pooled vectors."""
    out: Tensor = BagLookup.apply(weight, ids, per_id, offsets, bag_of, sparse)  # type: ignore[no-untyped-call]
    return out


__all__ = ["BagLookup", "bag_lookup", "unique_rows"]
