"""Rank candidates for one user in one batched forward pass (no HTTP here).

The first layer of the MLP sees the stacked vector ``x = [x_user | x_item | x_ctx]`` (columns by feature,
:attr:`StackingLayer.feature_slices`), so its pre-activation splits exactly (the algebra is the model's:
:meth:`DeepCrossing.first_layer_split` and :meth:`DeepCrossing.head_from_first_layer`)::

    W x + b = W x_item + (W x_user_ctx + b)
              '-- per movie, once per model load and publish --'  '-- once per request --'

:class:`Scorer` computes ``P_item = X_item W^T`` for every movie of a store version once
(:meth:`Scorer.items`), the user's part once per request (:meth:`Scorer.user`), and per candidate only an
add and the rest of the network (:meth:`Scorer.fast`). If the first block is a :class:`ResidualUnit` the
stacked vector itself is needed again for the skip connection; it is rebuilt as ``X_item[c] + x_user``
(disjoint columns, zeros elsewhere). :meth:`Scorer.plain` is the full forward pass of the model on a joined
table, the reference the fast path is tested against.

A model with user x movie features (:data:`~deepcrossing.features.columns.PAIR_SIDE`, any spec side) has a
third part, per candidate: ``pre = P_item[c] + p_user + x_pair(c) W_pair^T``, where ``x_pair(c)`` are the
stacked vector's pair columns only, from :func:`~deepcrossing.features.pair.pair_features` (the user record
against the candidates' genre occurrences, :attr:`ItemPart.occ`; ``userItemCFScore`` from the user's stored
history against the version's co-occurrence lists, :attr:`ItemPart.itemcf`, by
:func:`~deepcrossing.features.itemcf.neighbour_scores`) encoded by the model's own transforms. A model without
them does exactly the work it did before.

Shapes: M movies, S stacked width, H first-layer width, n candidates.

Example (``deepcrossing.load(model_dir)`` gives ``loaded``; here a tiny untrained model):
    >>> import types
    >>> from deepcrossing.config import Feature, FeatureSpec, ModelConfig
    >>> from deepcrossing.encoding import Encoder
    >>> spec = FeatureSpec((Feature("movieId", "categorical", "item", dim=4),
    ...                     Feature("userAvgRating", "numeric", "user", transform="standardize")))
    >>> encoder = Encoder(spec).fit(pa.table({"movieId": [1, 2, 3], "userAvgRating": [3.0, 4.0, 2.5]}))
    >>> model = DeepCrossing(spec, ModelConfig(hidden=(8,), width=6), encoder.cardinalities)
    >>> scorer = Scorer(types.SimpleNamespace(model=model, encoder=encoder, spec=spec))
    >>> movies = pa.table({"movieId": [1, 2, 3]})
    >>> items = scorer.items(movies)                                      # once per publish / model load
    >>> user = scorer.user(pa.table({"userAvgRating": [3.5]}))           # once per request
    >>> logits = scorer.fast(user, items, np.array([2, 0]))               # (n,)
    >>> joined = join_user_movies(pa.table({"userAvgRating": [3.5]}), movies.take([2, 0]))
    >>> torch.allclose(logits, scorer.plain(joined), atol=1e-6)
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor, nn

from deepcrossing.encoding.numeric import is_dense, is_numeric_embedding
from deepcrossing.errors import DeepCrossingError
from deepcrossing.features.columns import PAIR_SIDE, SERVED_PAIR
from deepcrossing.features.itemcf import UserNeighbours, itemcf_scores, neighbour_scores, user_neighbours
from deepcrossing.features.pair import GENRE_PAIR, PAIR_INPUTS, genre_names, genre_occurrences, pair_features, \
    pair_values, user_vectors
from deepcrossing.model.deep_crossing import DeepCrossing
from deepcrossing.serving.itemcf import ItemCF, history_arrays

CHUNK = 512  # rows per pass of the per-candidate network when ranking many candidates
ITEMCF = "userItemCFScore"


@dataclass(frozen=True)
class ItemPart:
    """Movie-side partial results of one store version.

    Attributes:
        x: (M, S) stacked vectors with only the item-side columns filled (zeros elsewhere).
        p: (M, H) ``x @ W^T``: the item share of the first layer's pre-activation.
        occ: (M, G) genre occurrences of each movie (:func:`~deepcrossing.features.pair.genre_occurrences`)
            over ``genre_names``; ``None`` for a model without pair features.
        onehot: (M, G) int64 ``occ > 0`` (``None`` likewise).
        genre_names: (G,) the sorted genres of these movies (the store version's vocabulary).
        movie_ids: (M,) int64 ids of the rows, for a model reading ``userItemCFScore`` (else ``None``).
        itemcf: the version's co-occurrence lists for ``userItemCFScore`` (``None``: the model does not read it,
            or no data was given: the score is then NULL for every candidate).
    """

    x: Tensor
    p: Tensor
    occ: np.ndarray | None = None
    onehot: np.ndarray | None = None
    genre_names: tuple[str, ...] = ()
    movie_ids: np.ndarray | None = None
    itemcf: ItemCF | None = None


@dataclass(frozen=True)
class UserPart:
    """Per-request partial results: (S,) user/context columns of the stacked vector, (H,) ``W x + b``, and for
    a model with pair features the record's :data:`~deepcrossing.features.pair.PAIR_INPUTS` (else ``None``);
    for one reading ``userItemCFScore`` the record's history as ``(movies, ratings)`` arrays (most recent first;
    ``None``: no history). ``vectors`` / ``neighbours`` memoise the per-user pair inputs per store version
    (genre vocabulary / :class:`ItemCF`)."""

    x: Tensor
    p: Tensor
    pair: dict[str, Any] | None = None
    vectors: dict[tuple[str, ...], Any] = field(default_factory=dict, repr=False, compare=False)
    history: tuple[np.ndarray, np.ndarray] | None = None
    neighbours: dict[ItemCF, UserNeighbours] = field(default_factory=dict, repr=False, compare=False)


class Scorer:
    """Scores (user, movie) pairs with a loaded model; fast split-first-layer path and plain reference.

    The split itself is the model's (:meth:`DeepCrossing.first_layer_split`,
    :meth:`DeepCrossing.head_from_first_layer`); the scorer encodes tables and caches the partials.

    Args:
        loaded: what :func:`deepcrossing.load` returns (``.model`` a :class:`DeepCrossing`, ``.encoder``,
            ``.spec``).
        backend: ``torch``, or ``onnx`` to run the per-candidate rest of the network (everything after the
            first layer's pre-activation) in ONNX Runtime (the ``onnx`` extra); measured by
            benchmarks/serve.py.

    Raises:
        DeepCrossingError: an unknown backend, a model that is not a DeepCrossing, or one reading a user x
            movie column the service cannot compute (not in :data:`~deepcrossing.features.columns.SERVED_PAIR`).
    """

    def __init__(self, loaded: Any, backend: str = "torch") -> None:
        if backend not in ("torch", "onnx"):
            raise DeepCrossingError(f"scorer backend must be torch or onnx, not {backend!r}")
        if not isinstance(loaded.model, DeepCrossing):
            raise DeepCrossingError(f"the serving fast path needs a DeepCrossing model, not a "
                                    f"{type(loaded.model).__name__}")
        self.loaded = loaded
        self.backend = backend
        self.model: DeepCrossing = loaded.model.eval()
        self.encoder = loaded.encoder
        self.spec = loaded.spec
        self.columns = tuple(self.spec.columns() if callable(getattr(self.spec, "columns", None))
                             else (f.name for f in self.spec.features))
        self.pair_columns = tuple(f.name for f in self.spec.features if f.name in PAIR_SIDE)
        self.reads_genre_pair = any(name in GENRE_PAIR for name in self.pair_columns)
        self.reads_itemcf = ITEMCF in self.pair_columns
        unserved = [name for name in self.pair_columns if name not in SERVED_PAIR]
        if unserved:
            raise DeepCrossingError(f"the model reads {', '.join(unserved)}: user x movie column(s) the service "
                                    f"cannot compute yet (served: {', '.join(SERVED_PAIR)})")
        self.item_columns = tuple(f.name for f in self.spec.features
                                  if f.side == "item" and f.name not in self.pair_columns)
        self.request_columns = tuple(f.name for f in self.spec.features
                                     if f.side != "item" and f.name not in self.pair_columns)
        self.split = self.model.first_layer_split()
        self.residual = self.split.needs_stacked
        self.item_mask = self.split.item_mask                    # (S,) True on item-side columns
        self._pair_setup()
        self._ort = (_onnx_session(_Tail(self.model), self.split.weight.shape[0], self.split.item_mask.shape[0],
                                   self.residual) if backend == "onnx" else None)

    # ---- shared pieces ----
    @torch.inference_mode()
    def stacked(self, table: pa.Table, only: tuple[str, ...] | None = None) -> Tensor:
        """(B, S) stacked vectors of a table holding every spec column (or the ``only`` ones; the other
        features' columns then hold padding and are masked by the callers)."""
        return self.model.stack(self.encoder.transform(table, only=only))

    @torch.inference_mode()
    def items(self, table: pa.Table, itemcf: ItemCF | None = None) -> ItemPart:
        """Item-side partials of every row of ``table`` (a movie table: the item-side columns are read; with
        pair features also ``movieGenres``, and ``movieId`` for ``userItemCFScore``, whose co-occurrence lists
        are ``itemcf``: the store version's, :func:`~deepcrossing.serving.itemcf.load_itemcf`)."""
        stacked = self.stacked(table, self.item_columns)
        if self.pair_idx is not None:
            stacked = stacked.masked_fill(self.pair_mask, 0.0)
        x, p = self.split.item_partial(stacked)   # (M, S), (M, H)
        if self.pair_idx is None:
            return ItemPart(x=x, p=p)
        ids = np.asarray(table.column("movieId").fill_null(-1), np.int64) if self.reads_itemcf else None
        part = ItemPart(x=x, p=p, movie_ids=ids, itemcf=itemcf if self.reads_itemcf else None)
        if not self.reads_genre_pair:
            return part
        genres = table.column("movieGenres") if "movieGenres" in table.column_names else \
            pa.nulls(table.num_rows, pa.list_(pa.string()))
        names = genre_names(genres)
        occ = genre_occurrences(genres, pa.array(names, pa.string()))
        return replace(part, occ=occ, onehot=(occ > 0).astype(np.int64), genre_names=names)

    @torch.inference_mode()
    def user(self, table: pa.Table, history: list[list[Any]] | None = None) -> UserPart:
        """User/context partial of a one-row table (a user table: the request-side columns are read; with pair
        features also the record's :data:`~deepcrossing.features.pair.PAIR_INPUTS`, missing ones empty, and
        for ``userItemCFScore`` the record's ``history``: ``[[movie_id, rating, timestamp], ...]``, most
        recent first; ``None``: a user with no history)."""
        stacked = self.stacked(table, self.request_columns)[0]
        if self.pair_idx is None:
            x, p = self.split.request_partial(stacked)  # (S,), (H,)
            return UserPart(x=x, p=p)
        x, p = self.split.request_partial(stacked.masked_fill(self.pair_mask, 0.0))
        row = table.slice(0, 1).select([c for c in PAIR_INPUTS if table.schema.get_field_index(c) >= 0]).to_pylist()
        return UserPart(x=x, p=p, pair=row[0] if row else {},
                        history=history_arrays(history) if self.reads_itemcf else None)

    # ---- the pair part: x_pair(c) W_pair^T per candidate ----
    def _pair_setup(self) -> None:
        """Column indexes, weights and encoders of the pair features (``pair_idx`` None: the model has none)."""
        self.pair_idx: Tensor | None = None
        if not self.pair_columns:
            return
        slices = self.model.feature_slices
        order = sorted(self.pair_columns, key=lambda name: slices[name].start)
        self._pair_order = tuple(order)
        self.pair_idx = torch.cat([torch.arange(slices[n].start, slices[n].stop) for n in order])  # (P,)
        self.pair_mask = torch.zeros(self.item_mask.shape[0], dtype=torch.bool)
        self.pair_mask[self.pair_idx] = True
        self.item_mask = self.item_mask & ~self.pair_mask
        self.pair_weight = self.split.weight.detach()[:, self.pair_idx].T.contiguous()   # (P, H)
        features = {f.name: f for f in self.spec.features}
        # dense columns are copied from Batch.dense, numeric embeddings run their own module; anything else
        # (a bucketed or embedded pair column) goes through the whole stacking, masked (slower, still exact)
        self._pair_ways = {n: "dense" if is_dense(features[n]) else
                           "numeric" if is_numeric_embedding(features[n]) else "stack" for n in order}

    def _pair_inputs(self, user: UserPart, items: ItemPart, rows: Tensor) -> dict[str, np.ndarray]:
        """{pair column: (n,) float64, NaN for NULL} of the user against movies ``rows`` of ``items``."""
        out = self._genre_pair(user, items, rows) if self.reads_genre_pair else {}
        if self.reads_itemcf:
            out[ITEMCF] = self._itemcf(user, items, rows)
        return out

    def _itemcf(self, user: UserPart, items: ItemPart, rows: Tensor) -> np.ndarray:
        """(n,) ``userItemCFScore`` of the user against movies ``rows`` (NaN: NULL; no data, a cold user, an
        unknown movie or one without neighbours among the history)."""
        if items.itemcf is None or items.movie_ids is None or user.history is None:
            return np.full(len(rows), np.nan)
        neighbours = user.neighbours.get(items.itemcf)
        if neighbours is None:   # once per (user part, store version)
            neighbours = user.neighbours.setdefault(items.itemcf, user_neighbours(
                *user.history, items.itemcf.table, items.itemcf.history))
        return neighbour_scores(neighbours, items.movie_ids[rows.numpy()])

    def _genre_pair(self, user: UserPart, items: ItemPart, rows: Tensor) -> dict[str, np.ndarray]:
        names = items.genre_names
        vectors = user.vectors.get(names)
        if vectors is None:   # once per (user part, store version's vocabulary)
            vectors = user.vectors.setdefault(names, user_vectors(user.pair or {}, names))
        if items.occ is None or items.onehot is None:
            occ = onehot = np.zeros((len(rows), 0), np.int64)
        else:
            index = rows.numpy()
            occ, onehot = items.occ[index], items.onehot[index]
        cosine, avg = pair_values(vectors, occ, onehot)
        return {"userGenreCosine": cosine, "userGenreAvgRating": avg}

    def pair_table(self, user: UserPart, items: ItemPart, rows: Tensor) -> pa.Table:
        """The pair columns of the user against movies ``rows`` of ``items`` (n rows, Arrow, with nulls)."""
        values = self._pair_inputs(user, items, rows)
        return pa.table({name: pa.array(values[name], pa.float64(), from_pandas=True) for name in self.pair_columns})

    def _pair_x(self, user: UserPart, items: ItemPart, rows: Tensor) -> Tensor:
        """(n, P) the stacked vector's pair columns (``pair_idx`` order) for movies ``rows``: the encoder's
        fitted transforms on the values (NaN is NULL to them, imputed as in training), then the model's
        numeric embedding modules."""
        if "stack" in self._pair_ways.values():
            batch = self.encoder.transform(self.pair_table(user, items, rows), only=self.pair_columns)
            return self.model.stack(batch)[:, self.pair_idx]
        values = self._pair_inputs(user, items, rows)
        n, parts = len(rows), []
        for name in self._pair_order:
            if self._pair_ways[name] == "dense":
                parts.append(torch.from_numpy(self.encoder.normalizers_[name].transform(values[name])).view(n, 1))
            else:
                encoded = np.asarray(self.encoder.numeric_[name].transform(values[name]), dtype=np.float32)
                parts.append(self.model.numeric.embeddings[name](torch.from_numpy(encoded.reshape(n, -1))))
        return torch.cat(parts, dim=1)

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
        if self.pair_idx is not None:
            x_pair = self._pair_x(user, items, rows)                             # (n, P)
            pre = pre.addmm_(x_pair, self.pair_weight)
            if self.residual:
                x[:, self.pair_idx] = x_pair
        if self._ort is not None:
            feeds = {"pre": pre.numpy(), "x": x.numpy()} if self.residual else {"pre": pre.numpy()}
            return torch.from_numpy(self._ort.run(None, feeds)[0])
        return self.model.head_from_first_layer(pre, x)

    @torch.inference_mode()
    def plain(self, table: pa.Table) -> Tensor:
        """(B,) logits by the model's own full forward pass over a joined user x movie table."""
        out: Tensor = self.model(self.encoder.transform(table))
        return out


class _Tail(nn.Module):
    """Everything after the first layer's pre-activation, as a module (for the ONNX export):
    (n, H) pre, (n, S) x -> (n,) logits, by :meth:`DeepCrossing.head_from_first_layer`."""

    def __init__(self, model: DeepCrossing) -> None:
        super().__init__()
        self.model = model

    def forward(self, pre: Tensor, x: Tensor) -> Tensor:
        return self.model.head_from_first_layer(pre, x)


class _PreOnly(nn.Module):
    """The tail of a model whose first block has no skip connection: (n, H) pre -> (n,) logits."""

    def __init__(self, tail: _Tail) -> None:
        super().__init__()
        self.tail = tail

    def forward(self, pre: Tensor) -> Tensor:
        logits: Tensor = self.tail(pre, pre[:, :0])
        return logits


def _onnx_session(tail: _Tail, hidden: int, width: int, residual: bool) -> Any:
    """Export the tail to ONNX in memory and open a one-thread ONNX Runtime session on it."""
    import io
    import warnings

    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise DeepCrossingError("the onnx scorer backend needs onnxruntime: pip install 'deepcrossing[onnx]'") \
            from exc
    names = ["pre", "x"] if residual else ["pre"]
    module: nn.Module = tail if residual else _PreOnly(tail)
    args: tuple[Tensor, ...] = (torch.zeros(8, hidden), torch.zeros(8, width)) if residual else \
        (torch.zeros(8, hidden),)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, buffer,  # type: ignore[arg-type]  # a file-like object works
                          input_names=names, output_names=["logits"],
                          dynamic_axes={n: {0: "n"} for n in names} | {"logits": {0: "n"}}, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])


def join_user_movies(user_table: pa.Table, movie_table: pa.Table, pair: bool = True, *,
                     history: list[list[Any]] | None = None, itemcf: ItemCF | None = None) -> pa.Table:
    """One row per movie of ``movie_table`` with the single row of ``user_table`` repeated beside it; with
    ``pair`` (and a ``movieGenres`` column) also the pair columns (:func:`~deepcrossing.features.pair.
    pair_features` of the user row against each movie's genres: the plain path's own computation, vocabulary
    from these movies alone), unless the tables already hold them; with ``itemcf`` also ``userItemCFScore``
    of the user's ``history`` (the record's) against each ``movieId`` (:func:`~deepcrossing.features.itemcf.
    itemcf_scores`, directly)."""
    repeated = user_table.take(pa.array(np.zeros(movie_table.num_rows, dtype=np.int64)))
    columns = {name: movie_table.column(name) for name in movie_table.column_names}
    for name in repeated.column_names:
        if name not in columns:
            columns[name] = repeated.column(name)
    if pair and itemcf is not None and ITEMCF not in columns:
        ids = np.asarray(movie_table.column("movieId").fill_null(-1), np.int64)
        scores = itemcf_scores(*history_arrays(history), ids, itemcf.table, itemcf.history)
        columns[ITEMCF] = pa.array(scores, pa.float64(), from_pandas=True)
    if pair and "movieGenres" in columns and not any(c in columns for c in GENRE_PAIR):
        genres = movie_table.column("movieGenres")
        names = genre_names(genres)
        record = user_table.slice(0, 1).select([c for c in PAIR_INPUTS if c in user_table.column_names])
        values = pair_features((record.to_pylist() or [{}])[0],
                               genre_occurrences(genres, pa.array(names, pa.string())), names)
        columns.update(values)
    return pa.table(columns)
