"""Deep Crossing's own vector recall channel, ``emb``, as an :class:`~deepcrossing.training.vectors.ItemVectors`.

Item vector: the movie-side partial product of the first MLP layer (``x_item W^T``, what the service
precomputes for ranking, :attr:`Snapshot.unit`), L2-normalized. User vector: the mean of the unit vectors of
the user's recent positive movies (``userRecentPositives``), SparrowRecSys's pooled item embeddings; zero for
a user with none (cold start: the caller falls back to another channel). The offline evaluation
(``training.retrieval_data``), ``publish`` (the index of a store version) and the service all use this class.

Example:
    >>> emb = EmbVectors.from_unit(np.array([5, 9]), np.array([[1, 0], [0.6, 0.8]], dtype=np.float32))
    >>> users = pa.table({"userRecentPositives": [[9, 5], [], [42]]})
    >>> emb.user_vectors(users).astype(float).round(2).tolist()
    [[0.8, 0.4], [0.0, 0.0], [0.0, 0.0]]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch
from numpy.typing import NDArray

from deepcrossing.errors import InputError
from deepcrossing.training.vectors import Metric

if TYPE_CHECKING:
    from deepcrossing.training.artifact import LoadedModel

__all__ = ["EmbVectors"]


class EmbVectors:
    """The ``emb`` channel (see the module docstring). Fitted scikit-learn style: :meth:`fit` computes the
    unit vectors of a movie table (``ids_``, ``unit_``), which :meth:`user_vectors` pools.

    Args:
        loaded: the model (``deepcrossing.load``); ``None`` with :meth:`from_unit` (vectors given).
    """

    name = "emb"
    metric: Metric = "cosine"
    user_columns: tuple[str, ...] = ("userRecentPositives",)   # what user_vectors reads

    def __init__(self, loaded: LoadedModel | None = None) -> None:
        self.loaded = loaded

    @classmethod
    def from_unit(cls, ids: NDArray[Any], unit: NDArray[Any]) -> EmbVectors:
        """An already fitted channel over (N,) ``ids`` and their (N, H) unit vectors (the service's)."""
        emb = cls()
        emb._set(np.asarray(ids, dtype=np.int64), np.asarray(unit, dtype=np.float32))
        return emb

    def _set(self, ids: NDArray[np.int64], unit: NDArray[np.float32]) -> None:
        self.ids_, self.unit_ = ids, unit
        self.row_of_ = {int(m): i for i, m in enumerate(ids.tolist())}

    def fit(self, movies: pa.Table) -> EmbVectors:
        """Compute the unit vectors of every row of ``movies`` (``movieId`` + movie-side columns)."""
        self._set(np.asarray(movies.column("movieId").to_numpy(), dtype=np.int64), self.item_vectors(movies))
        return self

    @torch.inference_mode()
    def item_vectors(self, movies: pa.Table) -> NDArray[np.float32]:
        """(N, H) unit vectors of ``movies``: from the model's features when it has one, else by ``movieId``
        from the fitted vectors (zero rows for movies it does not know)."""
        if self.loaded is None:
            out = np.zeros((movies.num_rows, self._fitted().shape[1]), dtype=np.float32)
            rows = [self.row_of_.get(int(m), -1) for m in movies.column("movieId").to_pylist()]
            known = np.array([r >= 0 for r in rows], dtype=bool)
            out[known] = self.unit_[[r for r in rows if r >= 0]]
            return out
        model = self.loaded.model.eval()
        item_columns = tuple(f.name for f in self.loaded.spec.features if f.side == "item")
        stacked = model.stack(self.loaded.encoder.transform(movies, only=item_columns))   # (N, S)
        _, p = model.first_layer_split().item_partial(stacked)                              # (N, H)
        unit: NDArray[np.float32] = torch.nn.functional.normalize(p, dim=1).numpy().astype(np.float32)
        return unit

    def _fitted(self) -> NDArray[np.float32]:
        unit = getattr(self, "unit_", None)
        if unit is None:
            raise InputError("EmbVectors is not fitted: call fit(movies) first")
        return unit  # type: ignore[no-any-return]

    def user_vector(self, positives: Iterable[int] | None) -> NDArray[np.float32] | None:
        """(H,) the mean of the unit vectors of ``positives`` that have one; ``None`` when none has."""
        unit = self._fitted()
        rows = [r for r in (self.row_of_.get(int(m), -1) for m in positives or ()) if r >= 0]
        if not rows:
            return None
        vector: NDArray[np.float32] = unit[rows].mean(axis=0)
        return vector

    def user_vectors(self, users: pa.Table) -> NDArray[np.float32]:
        """(B, H): per user, :meth:`user_vector` of ``userRecentPositives`` (zeros when none is known)."""
        unit = self._fitted()
        out = np.zeros((users.num_rows, unit.shape[1]), dtype=np.float32)
        for i, positives in enumerate(users.column("userRecentPositives").to_pylist()):
            vector = self.user_vector(positives)
            if vector is not None:
                out[i] = vector
        return out
