"""Rank candidates for one user in one batched forward pass (no HTTP here).

The first layer of the MLP sees the stacked vector ``x = [x_user | x_item | x_ctx]`` (columns by feature,
:attr:`StackingLayer.feature_slices`), so its pre-activation splits exactly::

    W x + b = W x_item + (W x_user_ctx + b)
              '-- per movie, once per model load and publish --'  '-- once per request --'

:class:`Scorer` computes ``P_item = X_item W^T`` for every movie of a store version once
(:meth:`Scorer.items`), the user's part once per request (:meth:`Scorer.user`), and per candidate only an
add and the rest of the network (:meth:`Scorer.fast`). If the first block is a :class:`ResidualUnit` the
stacked vector itself is needed again for the skip connection; it is rebuilt as ``X_item[c] + x_user``
(disjoint columns, zeros elsewhere). :meth:`Scorer.plain` is the full forward pass of the model on a joined
table, the reference the fast path is tested against.

Shapes: M movies, S stacked width, H first-layer width, n candidates.

Example:
    >>> scorer = Scorer(deepcrossing.load("model"))                 # doctest: +SKIP
    >>> items = scorer.items(movie_table)               # once per publish / model load  # doctest: +SKIP
    >>> logits = scorer.fast(scorer.user(user_table), items, rows)   # (n,)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor, nn

from deepcrossing.errors import DeepCrossingError


CHUNK = 512  # rows per pass of the per-candidate network when ranking many candidates


@dataclass(frozen=True)
class ItemPart:
    """Movie-side partial results of one store version.

    Attributes:
        x: (M, S) stacked vectors with only the item-side columns filled (zeros elsewhere).
        p: (M, H) ``x @ W^T``: the item share of the first layer's pre-activation.
    """

    x: Tensor
    p: Tensor


@dataclass(frozen=True)
class UserPart:
    """Per-request partial results: (S,) user/context columns of the stacked vector, (H,) ``W x + b``."""

    x: Tensor
    p: Tensor


def _find(model: nn.Module, cls_name: str) -> nn.Module:
    for module in model.modules():
        if type(module).__name__ == cls_name:
            return module
    raise DeepCrossingError(f"the model has no {cls_name}; the serving fast path needs the Deep Crossing layers")


class Scorer:
    """Scores (user, movie) pairs with a loaded model; fast split-first-layer path and plain reference.

    Args:
        loaded: what :func:`deepcrossing.load` returns (``.model``, ``.encoder``, ``.spec``).
        backend: ``torch``, or ``onnx`` to run the per-candidate rest of the network (everything after the
            first layer's pre-activation) in ONNX Runtime (the ``onnx`` extra); measured by
            benchmarks/serve.py.
    """

    def __init__(self, loaded: Any, backend: str = "torch") -> None:
        if backend not in ("torch", "onnx"):
            raise DeepCrossingError(f"scorer backend must be torch or onnx, not {backend!r}")
        self.loaded = loaded
        self.backend = backend
        self.model = loaded.model.eval()
        self.encoder = loaded.encoder
        self.spec = loaded.spec
        self.embedding = _find(self.model, "EmbeddingLayer")
        self.stacking = _find(self.model, "StackingLayer")
        self.mlp = _find(self.model, "MLP")
        self.scoring = _find(self.model, "ScoringLayer")
        self.columns = tuple(self.spec.columns() if callable(getattr(self.spec, "columns", None))
                             else (f.name for f in self.spec.features))
        self.item_columns = tuple(f.name for f in self.spec.features if f.side == "item")
        self.request_columns = tuple(f.name for f in self.spec.features if f.side != "item")
        width = self.stacking.out_dim
        mask = torch.zeros(width, dtype=torch.bool)
        for name in self.item_columns:
            mask[self.stacking.feature_slices[name]] = True
        self.item_mask = mask                                     # (S,) True on item-side columns
        first = self.mlp.blocks[0]
        if isinstance(first, nn.Linear):
            self.residual = False
            self.first = first
        elif type(first).__name__ == "ResidualUnit":
            self.residual = True
            self.first = first.linear1
            self.skip_out = first.linear2
        else:
            raise DeepCrossingError(f"the first MLP block is a {type(first).__name__}; the fast path splits a "
                                    "Linear or a ResidualUnit")
        # Dropout is the identity in eval mode: skip its call overhead per request.
        self.rest = [b for b in self.mlp.blocks[1:] if not isinstance(b, nn.Dropout)]
        self.tail = _Tail(self)
        self._ort = _onnx_session(self.tail, self.first.out_features, width) if backend == "onnx" else None

    # ---- shared pieces ----
    @torch.inference_mode()
    def stacked(self, table: pa.Table, only: tuple[str, ...] | None = None) -> Tensor:
        """(B, S) stacked vectors of a table holding every spec column (or the ``only`` ones; the other
        features' columns then hold padding and are masked by the callers)."""
        batch = self.encoder.transform(table, only=only)
        return self.stacking(self.embedding(batch), batch.dense)

    @torch.inference_mode()
    def items(self, table: pa.Table) -> ItemPart:
        """Item-side partials of every row of ``table`` (a movie table: the item-side columns are read)."""
        x = self.stacked(table, self.item_columns).masked_fill(~self.item_mask, 0.0).contiguous()   # (M, S)
        return ItemPart(x=x, p=x @ self.first.weight.T)                                              # (M, H)

    @torch.inference_mode()
    def user(self, table: pa.Table) -> UserPart:
        """User/context partial of a one-row table (a user table: the request-side columns are read)."""
        x = self.stacked(table, self.request_columns)[0].masked_fill(self.item_mask, 0.0)           # (S,)
        return UserPart(x=x, p=self.first.weight @ x + self.first.bias)                              # (H,)

    @torch.inference_mode()
    def fast(self, user: UserPart, items: ItemPart, rows: Tensor | np.ndarray) -> Tensor:
        """(n,) logits of the user against movies ``rows`` of ``items``: one batched pass.

        Args:
            user: from :meth:`user`.
            items: from :meth:`items`.
            rows: (n,) int64 row indices into ``items``.
        """
        rows = torch.as_tensor(rows, dtype=torch.long)
        if len(rows) > 2 * CHUNK:  # large candidate sets: cache-sized chunks (measured ~2x faster at 5,000)
            return torch.cat([self.fast(user, items, rows[i:i + CHUNK]) for i in range(0, len(rows), CHUNK)])
        pre = items.p.index_select(0, rows) + user.p                            # (n, H) pre-activation
        x = items.x.index_select(0, rows) + user.x if self.residual else pre[:, :0]  # (n, S) for the skip
        if self._ort is not None:
            feeds = {"pre": pre.numpy(), "x": x.numpy()} if self.residual else {"pre": pre.numpy()}
            return torch.from_numpy(self._ort.run(None, feeds)[0])
        return self.tail(pre, x)

    @torch.inference_mode()
    def plain(self, table: pa.Table) -> Tensor:
        """(B,) logits by the model's own full forward pass over a joined user x movie table."""
        return self.model(self.encoder.transform(table))


class _Tail(nn.Module):
    """Everything after the first layer's pre-activation: (n, H) pre, (n, S) x -> (n,) logits."""

    def __init__(self, scorer: Scorer) -> None:
        super().__init__()
        self.residual = scorer.residual
        self.skip_out = scorer.skip_out if scorer.residual else None
        self.rest = nn.ModuleList(scorer.rest)
        self.scoring = scorer.scoring

    def forward(self, pre: Tensor, x: Tensor) -> Tensor:
        h = pre
        if self.skip_out is not None:
            h = torch.relu(x + self.skip_out(torch.relu(pre)))
        for block in self.rest:
            h = block(h)
        return self.scoring(h)


def _onnx_session(tail: nn.Module, hidden: int, width: int):
    """Export the tail to ONNX in memory and open a one-thread ONNX Runtime session on it."""
    import io
    import warnings

    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise DeepCrossingError("the onnx scorer backend needs onnxruntime: pip install 'deepcrossing[onnx]'") \
            from exc
    residual = getattr(tail, "residual", False)
    args = (torch.zeros(8, hidden), torch.zeros(8, width if residual else 0))
    names = ["pre", "x"] if residual else ["pre"]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if residual:
            module = tail
        else:
            class _PreOnly(nn.Module):
                def __init__(self) -> None:
                    super().__init__()
                    self.tail = tail

                def forward(self, pre: Tensor) -> Tensor:
                    return self.tail(pre, pre[:, :0])

            module, args = _PreOnly(), args[:1]
        torch.onnx.export(module.eval(), args, buffer, input_names=names, output_names=["logits"],
                          dynamic_axes={n: {0: "n"} for n in names} | {"logits": {0: "n"}}, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])


def join_user_movies(user_table: pa.Table, movie_table: pa.Table) -> pa.Table:
    """One row per movie of ``movie_table`` with the single row of ``user_table`` repeated beside it."""
    repeated = user_table.take(pa.array(np.zeros(movie_table.num_rows, dtype=np.int64)))
    columns = {name: movie_table.column(name) for name in movie_table.column_names}
    for name in repeated.column_names:
        if name not in columns:
            columns[name] = repeated.column(name)
    return pa.table(columns)
