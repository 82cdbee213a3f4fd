"""The training lookup of the embedding tables: weighted bags of ids, a gradient with one row per distinct id.

:class:`~deepcrossing.model.layers.EmbeddingLayer` looks all features of a table up together, and in training
all tables of one width together. It goes through :class:`BagLookup`, which computes the same vectors as its
gather-and-pool path with fewer, larger operations (one ``embedding_bag`` forward; in backward one gather and
one ``index_add``) and hands the optimizer a gradient whose duplicate ids are already summed: sparse, a
coalesced COO tensor (ascending distinct rows, which :class:`~deepcrossing.training.optim.RowSparseAdam` uses
without sorting again); dense, those rows in a zero table. At ``benchmarks/throughput.py``'s setting (1 thread,
batch 1024, 4 tables) it replaces ``embedding_sparse_backward`` + the optimizer's sort of every looked-up id
(11k for the movie table) with one distinct-id pass in forward (a marked mask for tables not much larger than
the batch): ~8% of a training step; looking the 4 tables (all of width 10) up in one call instead of four:
another ~4% (interleaved A/B in one process, samples per CPU second, shared loaded machine).

On CPU float32 tensors the lookup runs as two fused C calls (:mod:`deepcrossing.model.kernels`): forward pools
straight from the tables (no distinct-id pass), backward finds each table's distinct rows (a bitmap) and sums
their gradient rows in id order; the same vectors (``embedding_bag``'s fused multiply-adds) and gradients
(``index_add_``'s order), bit for bit. In the training loop (1 thread, batch 1024, steps alternating the two
paths, thread time, load 2.5): forward 417 -> 186 us, backward 476 -> 249 us per step. ``DEEPCROSSING_KERNELS=0``
(or no C compiler) keeps the torch path below.

Shapes: N = ids (padding included, weight 0), M = output bags, U = distinct ids, R = table rows, D = width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from deepcrossing.model import kernels


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
    """``out[m] = sum_i per_id[i] * weights[t_i][ids[i]]`` over the ids ``i`` of bag ``m`` (``bag_of[i] == m``),
    for the features of one or several tables of one width D looked up at once.

    ``ids`` holds one (n, c_t) matrix per table (its features side by side); the ids of sample ``s`` are
    those of ``ids[0][s]``, then ``ids[1][s]``, ... (the matrices side by side, flattened row by row), and
    ``per_id``, ``offsets`` and ``bag_of`` follow that order. A single-valued feature is a bag of one id with
    weight 1 (its vector, exactly); padding weighs 0. Forward finds each table's distinct ids once, gathers
    them into one (U, D) matrix and pools every bag of every table with one ``embedding_bag``; backward gathers
    each id's bag gradient, scales it by ``per_id`` and sums the duplicates with one ``index_add_`` into
    (U, D), then hands each table its slice. So a step costs one lookup per width, not one per table (at
    ``benchmarks/throughput.py``'s setting: 4 tables of width 10, one call each). Each table's gradient is
    sparse (``sparse=True``: coalesced COO over its ascending distinct rows) or dense; rows whose ids all
    weigh 0 (padding) get a zero gradient row. The sums run in the per-table order, so the vectors and
    gradients are those of one lookup per table, bit for bit. With the fused kernels (CPU float32, see the
    module) forward is one :func:`~deepcrossing.model.kernels.bag_forward` and backward one
    :func:`~deepcrossing.model.kernels.bag_backward`, with the same results.

    Args (of ``apply``):
        ids: tuple of (n, c_t) int64 rows of table t.
        per_id: (N,) weights of the ids (N = n sum c_t, the order above), same dtype as the tables (no gradient).
        offsets: (M,) int64 index of each bag's first id (ascending).
        bag_of: (N,) int64 bag of each id (consistent with ``offsets``).
        sparse: the gradients' layout.
        *weights: (R_t, D) the tables, one per ``ids`` matrix.

    Returns:
        (M, D) pooled vectors.

    Example:
        >>> w = torch.arange(8.0).view(4, 2).requires_grad_()
        >>> ids, per_id = torch.tensor([[3, 1, 3]]), torch.tensor([1.0, 0.5, 0.5])
        >>> out = BagLookup.apply((ids,), per_id, torch.tensor([0, 1]), torch.tensor([0, 1, 1]), True, w)
        >>> out.tolist()
        [[6.0, 7.0], [4.0, 5.0]]
        >>> out.sum().backward(); w.grad._indices().tolist(), w.grad._values().tolist()
        ([[1, 3]], [[0.5, 0.5], [1.5, 1.5]])
    """

    @staticmethod
    def forward(ctx: Any, ids: tuple[Tensor, ...], per_id: Tensor, offsets: Tensor, bag_of: Tensor, sparse: bool,
                *weights: Tensor) -> Tensor:
        ctx.table_shapes, ctx.sparse = [w.shape for w in weights], sparse
        ctx.fused = kernels.available() and kernels.fits([*weights, per_id], [*ids, bag_of])
        if ctx.fused:  # one C call; backward finds the distinct rows itself
            ctx.save_for_backward(per_id, bag_of, *ids)
            return kernels.bag_forward(weights, ids, per_id, bag_of, len(offsets))
        rows, inverses, first = [], [], 0
        for weight, table_ids in zip(weights, ids, strict=True):
            distinct_rows, inverse = unique_rows(table_ids.reshape(-1), weight.shape[0])   # (U_t,), (n c_t,)
            rows.append(distinct_rows)
            inverses.append(inverse.view(table_ids.shape) + first if first else inverse.view(table_ids.shape))
            first += len(distinct_rows)
        inverse = inverses[0] if len(inverses) == 1 else torch.cat(inverses, dim=1)       # (n, sum c_t)
        gathered = [w.index_select(0, r) for w, r in zip(weights, rows)]                    # (U_t, D) each
        distinct = gathered[0] if len(gathered) == 1 else torch.cat(gathered)               # (U, D)
        # torch.embedding_bag: F.embedding_bag's op without its Python checks (mode 0 = sum)
        out = torch.embedding_bag(distinct, inverse.view(-1), offsets, False, 0, False, per_id)[0]      # (M, D)
        ctx.save_for_backward(inverse, per_id, bag_of, *rows)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        if ctx.fused:
            per_id, bag_of, *ids = ctx.saved_tensors
            summed = kernels.bag_backward([s[0] for s in ctx.table_shapes], ids, per_id, bag_of, grad.contiguous())
        else:
            inverse, per_id, bag_of, *rows = ctx.saved_tensors
            per_id_grad = grad.index_select(0, bag_of).mul_(per_id.unsqueeze(1))          # (N, D)
            values = per_id_grad.new_zeros((sum(len(r) for r in rows), grad.shape[1]))     # (U, D)
            values.index_add_(0, inverse.view(-1), per_id_grad)
            summed = list(zip(rows, torch.split(values, [len(r) for r in rows])))
        grads: list[Tensor | None] = [None] * 5
        for (table_rows, part), shape in zip(summed, ctx.table_shapes):
            if ctx.sparse:
                grads.append(torch.sparse_coo_tensor(table_rows.unsqueeze(0), part, shape, is_coalesced=True,
                                                     check_invariants=False))
            else:
                grads.append(part.new_zeros(shape).index_copy_(0, table_rows, part))
        return tuple(grads)


def bag_lookup(weights: Sequence[Tensor], ids: Sequence[Tensor], per_id: Tensor, offsets: Tensor, bag_of: Tensor,
               sparse: bool) -> Tensor:
    """:class:`BagLookup` (its ``apply``, typed): tables (R_t, D), ids (n, c_t) each, (N,), (M,), (N,) -> (M, D)."""
    out: Tensor = BagLookup.apply(tuple(ids), per_id, offsets, bag_of, sparse, *weights)  # type: ignore[no-untyped-call]
    return out


__all__ = ["BagLookup", "bag_lookup", "unique_rows"]
