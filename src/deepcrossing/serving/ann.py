"""The vector index of a recall channel: exact search (one matrix product) or an HNSW graph (hnswlib), built at publish.

Why hnswlib (``benchmarks/ann.py``, ml-latest-small's 9.7k movies and 100,000 x 64 clustered vectors, one
query on one thread, on a loaded 2-core machine): of the three maintained HNSW libraries (faiss-cpu 1.15
``IndexHNSWFlat``, hnswlib 0.8, usearch 2.26) it answered fastest at the same recall (100k, k=100..800: p50
0.8-1.6 ms vs faiss 1.0-2.4 and usearch 1.6-6.9; recall@100 0.989 with ``ef`` = 400) and built no slower; it
serializes through its own binary format (no pickle). Exact search (one matrix product, through torch: see
:meth:`VectorIndex.exact`) answers 9.7k movies in 0.3-0.4 ms with recall 1.0 and nothing to build or store,
and 100k in 1.6-2.3 ms: so a catalogue under :data:`EXACT_BELOW` vectors is searched exactly, and the graph
serves beyond, where the matrix product grows with the catalogue.
Exact search stays the reference the graph is tested against.

The index's bytes (``to_blobs``: ``npy`` files written with ``allow_pickle=False`` and hnswlib's own file)
are stored in the store version (:meth:`FeatureStore.publish`'s ``blobs``) with their SHA-256 in the meta.

Example:
    >>> rng = np.random.default_rng(0)
    >>> vectors = rng.normal(size=(50, 8)).astype(np.float32)
    >>> index = VectorIndex.build(np.arange(50) + 100, vectors, "cosine")
    >>> index.kind, index.search(vectors[3], 1).tolist()
    ('exact', [3])
    >>> again = VectorIndex.from_blobs(index.to_blobs())
    >>> bool((again.vectors == index.vectors).all())
    True
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from deepcrossing.errors import InputError
from deepcrossing.training.retrieval import top_positions

__all__ = ["EF_SEARCH", "EXACT_BELOW", "VectorIndex"]

EXACT_BELOW = 100_000   # vectors; below this the index is exact search (measured in benchmarks/ann.py)
EF_SEARCH = 400         # hnswlib ef: recall@100 0.989 on the clustered 100k benchmark set
M, EF_CONSTRUCTION = 32, 200


def _npy(array: NDArray[Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _from_npy(data: bytes, what: str) -> NDArray[Any]:
    try:
        array: NDArray[Any] = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"the stored {what} cannot be read ({exc})", field=what) from None
    return array


@dataclass(frozen=True)
class VectorIndex:
    """Item vectors and how they are searched.

    Attributes:
        ids: (N,) int64 movie ids.
        vectors: (N, d) float32 item vectors (L2-normalized when the metric is cosine; zero rows are
            movies the channel does not know: never returned).
        graph: the hnswlib graph over the non-zero rows (labels = row positions), or ``None``: exact search.
    """

    ids: NDArray[np.int64]
    vectors: NDArray[np.float32]
    graph: Any = None
    known: NDArray[np.bool_] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # (N,) the rows the channel knows (non-zero), once per index, not per request
        object.__setattr__(self, "known", np.abs(self.vectors).sum(axis=1) > 0)

    @property
    def kind(self) -> str:
        """``"hnsw"`` or ``"exact"``."""
        return "exact" if self.graph is None else "hnsw"

    @classmethod
    def build(cls, ids: NDArray[Any], vectors: NDArray[Any], metric: str, *,
              exact_below: int = EXACT_BELOW) -> VectorIndex:
        """Normalize (cosine) and index ``vectors``; a graph only for ``exact_below`` vectors or more.

        Args:
            ids: (N,) movie ids; vectors: (N, d) their vectors; metric: ``dot`` or ``cosine``.
            exact_below: catalogues smaller than this are searched exactly.
        """
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(ids):
            raise InputError(f"item vectors must be (N, d) with one row per id: {vectors.shape} for {len(ids)} ids")
        if metric not in ("dot", "cosine"):
            raise InputError(f"metric must be dot or cosine, not {metric!r}", field="metric")
        if metric == "cosine":
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
        graph = None
        if len(ids) >= exact_below and len(ids) > 0:
            import hnswlib

            known = np.flatnonzero(np.abs(vectors).sum(axis=1) > 0)
            graph = hnswlib.Index(space="ip", dim=vectors.shape[1])
            graph.init_index(max_elements=max(len(known), 1), ef_construction=EF_CONSTRUCTION, M=M, random_seed=0)
            if len(known):
                graph.add_items(vectors[known], known)
            graph.set_ef(EF_SEARCH)
        return cls(ids, vectors, graph)

    def search(self, query: NDArray[np.float32], k: int) -> NDArray[np.int64]:
        """Row positions of the ``k`` best vectors for ``query`` ((d,)), best first (fewer when the index has
        fewer known rows)."""
        if self.graph is None:
            return self.exact(query, k)
        k = min(k, self.graph.get_current_count())
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        self.graph.set_ef(max(EF_SEARCH, k))   # ef >= k; per call (ef is the graph's, calls are short)
        labels, _ = self.graph.knn_query(query[None], k=k, num_threads=1)
        found: NDArray[np.int64] = np.asarray(labels[0], dtype=np.int64)
        return found

    def exact(self, query: NDArray[np.float32], k: int) -> NDArray[np.int64]:
        """The reference: one matrix product, the ``k`` best rows by similarity, ties by smaller row (also at
        the ``k``-th place); zero rows never returned.

        The product runs through torch (``torch.mv``), on the intra-op threads the caller set (the service:
        one): numpy's OpenBLAS would start its own threads, whose spinning after each call slowed the ranking
        that follows by 10x on a loaded 2-core machine (measured: 39 vs 3.4 ms per request). The selection is
        numpy's ``argpartition`` on the product's buffer (no copy): 7x cheaper than ``torch.topk`` over 9.7k
        rows (0.07 vs 0.5 ms) and deterministic at the ``k``-th place, where ``topk`` keeps any of the tied rows.
        """
        k = min(k, len(self.vectors))
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        sims: NDArray[np.float32] = torch.mv(torch.from_numpy(self.vectors),
                                             torch.from_numpy(np.ascontiguousarray(query, np.float32))).numpy()
        top = top_positions(sims, k)
        found: NDArray[np.int64] = top[self.known[top]]
        return found

    def to_blobs(self) -> dict[str, bytes]:
        """``ids.npy``, ``vectors.npy`` and (with a graph) ``hnsw.bin``: what the store version keeps."""
        blobs = {"ids.npy": _npy(self.ids), "vectors.npy": _npy(self.vectors)}
        if self.graph is not None:
            with tempfile.TemporaryDirectory(prefix="deepcrossing-ann-") as folder:
                path = os.path.join(folder, "hnsw.bin")
                self.graph.save_index(path)
                with open(path, "rb") as f:
                    blobs["hnsw.bin"] = f.read()
        return blobs

    @classmethod
    def from_blobs(cls, blobs: Mapping[str, bytes]) -> VectorIndex:
        """Inverse of :meth:`to_blobs` (the bytes are checked against the meta's SHA-256 before this)."""
        ids = _from_npy(blobs["ids.npy"], "ids.npy").astype(np.int64)
        vectors = _from_npy(blobs["vectors.npy"], "vectors.npy").astype(np.float32)
        if vectors.ndim != 2 or len(vectors) != len(ids):
            raise InputError(f"stored vectors {vectors.shape} do not match {len(ids)} ids", field="vectors.npy")
        graph = None
        if "hnsw.bin" in blobs:
            import hnswlib

            graph = hnswlib.Index(space="ip", dim=vectors.shape[1])
            with tempfile.TemporaryDirectory(prefix="deepcrossing-ann-") as folder:
                path = os.path.join(folder, "hnsw.bin")
                with open(path, "wb") as f:
                    f.write(blobs["hnsw.bin"])
                try:
                    graph.load_index(path, max_elements=max(len(ids), 1))
                except RuntimeError as exc:
                    raise InputError(f"the stored hnsw graph cannot be read ({exc})", field="hnsw.bin") from None
            graph.set_ef(EF_SEARCH)
        return cls(ids, vectors, graph)
