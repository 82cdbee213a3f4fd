"""The contract between a recall model and the service: item vectors and user vectors in one space.

A recall channel that works by vectors (Deep Crossing's own movie partials ``emb``, the two-tower model,
item2vec) is an :class:`ItemVectors`. ``publish`` asks it for the vector of every movie of a store version
and builds the ANN index over them; a request asks it for the user's vector and searches that index. The
offline evaluation (``training/retrieval.py``) uses the very same two calls, so a channel measured offline is
the channel served.

Both calls take Arrow tables in the samples schema (``features/columns.py``): movie-side columns for items,
user-side columns (``userRecentPositives``, ``userGenreCounts``, the numeric stats, ...) for users. A cold
user (no earlier rating: empty lists, zero counts, null averages) gets a vector too, never an error; a
channel that has nothing to say for a user returns a zero row, and the caller falls back to another
channel.

Example:
    >>> import numpy as np
    >>> class Fixed:                       # the smallest ItemVectors: one 2-d vector per movie, cosine
    ...     name, metric = "fixed", "cosine"
    ...     def item_vectors(self, movies): return np.eye(2, dtype=np.float32)[: movies.num_rows]
    ...     def user_vectors(self, users): return np.ones((users.num_rows, 2), dtype=np.float32)
    >>> isinstance(Fixed(), ItemVectors)
    True
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

Metric = Literal["dot", "cosine"]

__all__ = ["ItemVectors", "Metric"]


@runtime_checkable
class ItemVectors(Protocol):
    """A vector recall channel.

    Attributes:
        name: the channel's name in responses and reports (``"two_tower"``, ``"item2vec"``, ``"emb"``).
        metric: ``"dot"`` (inner product as is) or ``"cosine"`` (rows are compared after L2 normalization).
    """

    name: str
    metric: Metric

    def item_vectors(self, movies: pa.Table) -> NDArray[np.float32]:
        """(N, d) float32 vectors, row i for ``movies`` row i (a table with ``movieId`` and the movie-side
        columns). A movie the channel does not know gets a zero row (it is then never recalled)."""
        ...

    def user_vectors(self, users: pa.Table) -> NDArray[np.float32]:
        """(B, d) float32 vectors, row i for ``users`` row i (``userId`` and the user-side columns). A row
        of zeros means "no opinion": the caller uses another channel for that user."""
        ...
