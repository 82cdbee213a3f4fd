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
(or no C compiler) keeps the torch path below. :class:`FeatureLookup` goes one step further: all tables,
whatever their widths, in one forward call straight from the batch's id tensors (no concatenation of ids or
weights, no offsets, no output split): the embedding layer's training forward 426 -> 267 us a step, the same
vectors and gradients.

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


def bag_weights(keep: Tensor, weights: Tensor | None, mean: bool) -> Tensor:
    """(B, L) weights of a bag's ids from ``keep`` (B, L) (0 on padding, else 1): times its value weights
    ``weights`` (``weights_from``), divided by their sum for ``mean`` pooling (out of place: ONNX export traces
    it).

    Example:
        >>> bag_weights(torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[2.0, 6.0, 5.0]]), mean=True)
        tensor([[0.2500, 0.7500, 0.0000]])
    """
    w = keep if weights is None else keep * weights
    return w / w.sum(dim=1, keepdim=True).clamp_min(1e-12) if mean else w


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
        return (None, None, None, None, None, *_table_grads(summed, ctx.table_shapes, ctx.sparse))


def _table_grads(summed: Sequence[tuple[Tensor, Tensor]], shapes: Sequence[torch.Size], sparse: bool) -> list[Tensor]:
    """Each table's gradient from its distinct ascending rows and their summed gradient rows: a coalesced COO
    tensor (``sparse``) or those rows in a zero table."""
    if sparse:
        return [torch.sparse_coo_tensor(rows.unsqueeze(0), part, shape, is_coalesced=True, check_invariants=False)
                for (rows, part), shape in zip(summed, shapes)]
    return [part.new_zeros(shape).index_copy_(0, rows, part) for (rows, part), shape in zip(summed, shapes)]


class FeatureLookup(torch.autograd.Function):
    """The training lookup of every feature of every table in one fused C call (CPU float32, the kernels built):
    :func:`~deepcrossing.model.kernels.feature_forward` writes each feature's pooled vector into its columns of
    one (n, width) block and computes the ids' weights itself (padding 0, mean pooling 1 / count) unless given;
    backward is one :func:`~deepcrossing.model.kernels.feature_backward`. The vectors and table gradients are
    :class:`BagLookup`'s bit for bit (the same fused multiply-adds, duplicates summed in ``index_add_``'s
    order), without its per-step concatenations of ids and weights, offsets and output split.

    Args (of ``apply``):
        layout: the :class:`~deepcrossing.model.kernels.FeatureLayout` of the features and tables.
        ids: per feature (n,) or (n, L_f) int64 ids, contiguous.
        given: per feature None or (n, L_f) weights of its ids (a bag's ``weights_from``), contiguous.
        sparse: the gradients' layout (as :class:`BagLookup`'s).
        *weights: (R_t, D_t) the tables.

    Returns:
        (n, width) the pooled vectors, feature f in columns ``[at_f, at_f + D_f)``.
    """

    @staticmethod
    def forward(ctx: Any, layout: kernels.FeatureLayout, ids: tuple[Tensor, ...], given: tuple[Tensor | None, ...],
                sparse: bool, *weights: Tensor) -> Tensor:
        out, per_id = kernels.feature_forward(layout, weights, ids, given)
        ctx.layout, ctx.sparse, ctx.table_shapes = layout, sparse, [w.shape for w in weights]
        ctx.save_for_backward(per_id, *ids)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        per_id, *ids = ctx.saved_tensors
        summed = kernels.feature_backward(ctx.layout, ids, per_id, grad)    # a column slice read in place
        return (None, None, None, None, *_table_grads(summed, ctx.table_shapes, ctx.sparse))


def feature_lookup(layout: kernels.FeatureLayout, weights: Sequence[Tensor], ids: Sequence[Tensor],
                   given: Sequence[Tensor | None], sparse: bool) -> Tensor:
    """:class:`FeatureLookup` (its ``apply``, typed): tables (R_t, D_t), ids (n, L_f) each -> (n, width)."""
    out: Tensor = FeatureLookup.apply(layout, tuple(ids), tuple(given), sparse, *weights)  # type: ignore[no-untyped-call]
    return out


def merge_views(parts: list[Tensor]) -> list[Tensor]:
    """``parts`` (each (B, D_i)) with their leading run of column views that tile one (B, W) tensor (the views
    :class:`FeatureLookup`'s block is split into) replaced by that tensor, so ``torch.cat(merge_views(parts), 1)``
    equals ``torch.cat(parts, 1)`` with one input for those features, whose gradient then is a column slice of
    the concatenation's (no split backward, no copy). Anything else is returned as it is.

    Example:
        >>> block = torch.zeros(2, 3)
        >>> [tuple(t.shape) for t in merge_views([*block.split([1, 2], dim=1), torch.ones(2, 1)])]
        [(2, 3), (2, 1)]
    """
    base = parts[0]._base if parts else None
    if base is None or base.dim() != 2:
        return parts
    col, offset = 0, base.storage_offset()
    for i, part in enumerate(parts):
        if (part._base is not base or part.dim() != 2 or part.stride() != base.stride()
                or part.shape[0] != base.shape[0] or part.storage_offset() != offset + col * base.stride(1)):
            return parts
        col += part.shape[1]
        if col == base.shape[1]:
            return [base, *parts[i + 1:]]
    return parts


def bag_lookup(weights: Sequence[Tensor], ids: Sequence[Tensor], per_id: Tensor, offsets: Tensor, bag_of: Tensor,
               sparse: bool) -> Tensor:
    """:class:`BagLookup` (its ``apply``, typed): tables (R_t, D), ids (n, c_t) each, (N,), (M,), (N,) -> (M, D)."""
    out: Tensor = BagLookup.apply(tuple(ids), per_id, offsets, bag_of, sparse, *weights)  # type: ignore[no-untyped-call]
    return out


__all__ = ["BagLookup", "FeatureLookup", "bag_lookup", "bag_weights", "feature_lookup", "merge_views", "unique_rows"]
