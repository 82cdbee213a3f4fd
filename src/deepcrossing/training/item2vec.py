"""Item2vec (Barkan and Koenigstein, 2016; what SparrowRecSys teaches): word2vec skip-gram over each user's
time-ordered positive sequence, with gensim. A movie's vector is its word vector; a user's vector is the
mean of the unit vectors of their recent positives (``userRecentPositives``), a zero row for a user with
none (the caller falls back to another channel).

Example:
    >>> model = fit_item2vec([[1, 2, 3], [2, 3, 4], [1, 3]], Item2VecConfig(dim=4, epochs=2))
    >>> import pyarrow as pa
    >>> items = model.item_vectors(pa.table({"movieId": [3, 99]}))
    >>> items.shape, bool(items[1].any())
    ((2, 4), False)
    >>> users = pa.table({"userId": [1, 2], "userRecentPositives": [[2, 1], []]})
    >>> vecs = model.user_vectors(users)
    >>> bool(vecs[0].any()), bool(vecs[1].any())
    (True, False)
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray
from pydantic import Field

from deepcrossing.duck import connection, sql_str
from deepcrossing.strict import StrictConfig, strict_config
from deepcrossing.training.vectors import Metric

__all__ = ["Item2Vec", "Item2VecConfig", "fit_item2vec", "positive_sequences"]


@strict_config
class Item2VecConfig(StrictConfig):
    """gensim ``Word2Vec`` settings (skip-gram, negative sampling).

    Defaults chosen on ml-latest-small's validation split (Recall@100; item2vec fitted on train): window 5,
    5 negatives, 10 epochs 0.171 (7 s for two fits) vs window 20, 10 negatives, 20 epochs 0.170 (33 s per
    fit); pooling the 3 most recent positives 0.182 vs 10: 0.171.

    Args:
        dim: vector width. window: context width on each side. epochs: passes. negative: negatives per
        pair. min_count: movies with fewer positives get no vector. sample: down-sampling of frequent
        movies. recent_n: recent positives pooled into a user vector. seed: gensim's seed (with one worker
        the vectors are reproducible).
    """

    dim: Annotated[int, Field(ge=2, le=1024)] = 64
    window: Annotated[int, Field(ge=1, le=1000)] = 5
    epochs: Annotated[int, Field(ge=1, le=1000)] = 10
    negative: Annotated[int, Field(ge=1, le=100)] = 5
    min_count: Annotated[int, Field(ge=1)] = 1
    sample: Annotated[float, Field(ge=0.0, le=1.0)] = 1e-3
    recent_n: Annotated[int, Field(ge=1, le=1000)] = 3
    seed: int = 0


def positive_sequences(files: Sequence[str | Path], before: int) -> list[list[int]]:
    """Each user's positives (``label = 1``) with ``timestamp < before``, oldest first (ties by movie id), as
    lists of movie ids, users by id (one DuckDB query over the sample files)."""
    query = (f"SELECT userId, list(movieId ORDER BY timestamp, movieId) AS seq FROM read_parquet("
             f"[{', '.join(sql_str(f) for f in files)}], union_by_name = true) WHERE label = 1 AND timestamp < "
             f"{int(before)} GROUP BY userId ORDER BY userId")
    with connection() as con:
        rows = con.sql(query).fetchall()
    return [[int(m) for m in seq] for _, seq in rows]


class Item2Vec:
    """Item2vec vectors as an :class:`~deepcrossing.training.vectors.ItemVectors` (``cosine``).

    Args:
        movie_ids: (V,) movies with a vector; vectors: (V, D) their word vectors.
        config: how they were trained; its ``recent_n``: how many of ``userRecentPositives`` (most recent
            first) make a user vector.
    """

    name: str = "item2vec"
    metric: Metric = "cosine"
    user_columns: tuple[str, ...] = ("userRecentPositives",)   # what user_vectors reads

    def __init__(self, movie_ids: NDArray[np.int64], vectors: NDArray[np.float32], config: Item2VecConfig) -> None:
        order = np.argsort(movie_ids, kind="stable")
        self.movie_ids = np.asarray(movie_ids, dtype=np.int64)[order]      # (V,) sorted, for searchsorted
        self.vectors = np.asarray(vectors, dtype=np.float32)[order]        # (V, D)
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        self.unit = np.where(norms > 0, self.vectors / np.maximum(norms, 1e-12), 0.0).astype(np.float32)
        self.config = config
        self.recent_n = config.recent_n

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def _rows(self, ids: NDArray[np.int64]) -> tuple[NDArray[np.intp], NDArray[np.bool_]]:
        """(rows into the sorted tables, found mask) of ``ids``."""
        if self.movie_ids.size == 0:
            return np.zeros(ids.size, dtype=np.intp), np.zeros(ids.size, dtype=bool)
        pos = np.minimum(np.searchsorted(self.movie_ids, ids), self.movie_ids.size - 1)
        return pos, self.movie_ids[pos] == ids

    def item_vectors(self, movies: pa.Table) -> NDArray[np.float32]:
        """(N, D) unit vectors of ``movies``'s ``movieId`` column; zero rows for unknown movies."""
        ids = np.asarray(movies.column("movieId").fill_null(-1).to_numpy(), dtype=np.int64)
        pos, found = self._rows(ids)
        out = np.zeros((ids.size, self.dim), dtype=np.float32)
        out[found] = self.unit[pos[found]]
        return out

    def user_vectors(self, users: pa.Table) -> NDArray[np.float32]:
        """(B, D): mean of the unit vectors of each user's first ``recent_n`` known ``userRecentPositives``."""
        col = users.column("userRecentPositives").combine_chunks()
        col = pc.list_slice(col.fill_null(pa.scalar([], col.type)), 0, self.recent_n)
        lengths = np.asarray(pc.list_value_length(col).to_numpy(zero_copy_only=False), dtype=np.int64)
        flat = np.asarray(pc.list_flatten(col).fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
        pos, found = self._rows(flat)
        owner = np.repeat(np.arange(len(lengths)), lengths)[found]
        out = np.zeros((len(lengths), self.dim), dtype=np.float32)
        np.add.at(out, owner, self.unit[pos[found]])
        counts = np.bincount(owner, minlength=len(lengths)).astype(np.float32)
        return (out / np.maximum(counts, 1.0)[:, None]).astype(np.float32)


def _stable_hash(word: str) -> int:
    """gensim's seed hash of a word; Python's ``hash`` changes with PYTHONHASHSEED between runs."""
    return zlib.crc32(word.encode())


def fit_item2vec(sequences: Sequence[Sequence[int]], config: Item2VecConfig) -> Item2Vec:
    """Train gensim 4's skip-gram ``Word2Vec`` (one worker, seeded, a stable word hash: reproducible across
    runs) on the sequences of movie ids.

    Args:
        sequences: per user, movie ids oldest first (:func:`positive_sequences`).
        config: the settings.

    Returns:
        An :class:`Item2Vec` with a vector per movie seen at least ``min_count`` times (none for no data).
    """
    from gensim.models import Word2Vec

    sentences = [[str(m) for m in seq] for seq in sequences if len(seq) > 0]
    if not sentences:
        return Item2Vec(np.zeros(0, dtype=np.int64), np.zeros((0, config.dim), dtype=np.float32), config)
    w2v = Word2Vec(sentences, vector_size=config.dim, window=config.window, min_count=config.min_count, sg=1,
                   negative=config.negative, sample=config.sample, epochs=config.epochs, seed=config.seed,
                   workers=1, hashfxn=_stable_hash)
    ids = np.array([int(w) for w in w2v.wv.index_to_key], dtype=np.int64)
    return Item2Vec(ids, np.asarray(w2v.wv.vectors, dtype=np.float32), config)
