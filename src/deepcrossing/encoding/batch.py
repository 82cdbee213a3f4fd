"""Batch: the one typed container between samples and the model (torchrec's ``Batch(dense, sparse, labels)``).

Multi-valued features are stored as padded id matrices ``(B, L)`` with 0 = padding (the
``EmbeddingBag(padding_idx=0)`` convention) plus optional per-value weights ``(B, L)``: slicing a minibatch
is then one ``index_select`` per tensor, with no offsets to recompute.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Batch:
    """Encoded samples.

    Attributes:
        dense: (B, n_dense) float32 standardized numerics, in spec order.
        sparse: feature name -> (B,) int64 table rows of a single-valued feature.
        bags: feature name -> (B, L) int64 table rows of a multi-valued feature, 0 = padding.
        bag_weights: feature name -> (B, L) float32 per-value weights (only features with ``weights_from``).
        labels: (B,) float32 0/1 labels (zeros when the samples have no label column).
        numeric: feature name -> (B, W) float32 input of a numeric embedding (``ple``/``ple_tree``: the
            piecewise-linear encoding, W = n_buckets; ``periodic``: the standardized value, W = 1).

    Example:
        >>> b = Batch(torch.zeros(4, 1), {"movieId": torch.arange(4)}, {}, {}, torch.ones(4))
        >>> len(b.take(torch.tensor([3, 1]))), b.take(torch.tensor([3, 1])).sparse["movieId"].tolist()
        (2, [3, 1])
    """

    dense: Tensor
    sparse: dict[str, Tensor] = field(default_factory=dict)
    bags: dict[str, Tensor] = field(default_factory=dict)
    bag_weights: dict[str, Tensor] = field(default_factory=dict)
    labels: Tensor | None = None
    numeric: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.dense.shape[0])

    def _map(self, fn: Callable[[Tensor], Tensor]) -> Batch:
        return Batch(
            dense=fn(self.dense),
            sparse={k: fn(v) for k, v in self.sparse.items()},
            bags={k: fn(v) for k, v in self.bags.items()},
            bag_weights={k: fn(v) for k, v in self.bag_weights.items()},
            labels=None if self.labels is None else fn(self.labels),
            numeric={k: fn(v) for k, v in self.numeric.items()},
        )

    def to(self, device: str | torch.device, non_blocking: bool = False) -> Batch:
        """The same batch on ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def take(self, index: Tensor) -> Batch:
        """Rows ``index`` ((b,) int64) of every tensor: a minibatch of a pre-encoded batch."""
        return self._map(lambda t: t.index_select(0, index))

    def _tensors(self) -> list[Tensor]:
        return [self.dense, *self.sparse.values(), *self.bags.values(), *self.bag_weights.values(),
                *([] if self.labels is None else [self.labels]), *self.numeric.values()]

    def alloc(self, rows: int) -> Batch:
        """Uninitialised tensors of ``rows`` rows, shaped and typed like this batch's (filled by :meth:`put`).

        Example:
            >>> b = Batch(torch.ones(2, 3), labels=torch.ones(2))
            >>> big = b.alloc(4); big.put(0, b); big.put(2, b); big.dense.sum().item(), len(big)
            (12.0, 4)
        """
        return self._map(lambda t: t.new_empty((rows, *t.shape[1:])))

    def put(self, start: int, part: Batch) -> None:
        """Copy ``part`` (same features and widths) into rows ``start:start + len(part)``."""
        for dst, src in zip(self._tensors(), part._tensors(), strict=True):
            dst[start:start + len(part)].copy_(src)

    @staticmethod
    def cat(parts: list[Batch]) -> Batch:
        """The rows of ``parts`` (same features and widths) in order, in one new batch (one part: itself)."""
        if len(parts) == 1:
            return parts[0]
        out = parts[0].alloc(sum(len(p) for p in parts))
        start = 0
        for p in parts:
            out.put(start, p)
            start += len(p)
        return out

    def slice(self, start: int, stop: int) -> Batch:
        """Rows ``start:stop`` (views, no copy)."""
        return self._map(lambda t: t[start:stop])
