"""ANN library choice for the recall index: faiss-cpu vs hnswlib vs usearch vs exact (numpy) search.

Two vector sets, both L2-normalized and searched by inner product (= cosine), as the service's vector
channels are:

* ``movielens``: 64-d vectors of ml-latest-small's ~9.7k movies (truncated SVD of the user x movie positive
  matrix: structured like learned item vectors; a trained model's partials are not needed to time an index);
* ``synthetic``: 100,000 x 64 vectors drawn around 1,000 random centres (clustered, as item vectors are).

Queries are user vectors as the service forms them (mean of 10 random item vectors, normalized), one at a
time on one thread (a request searches once). For each library: build time, query p50/p99 for k = 100, 400,
800 (``ef`` = max(k, 400): HNSW needs ef >= k), and recall@100 against exact search. Usage::

    python benchmarks/ann.py            # ~1-2 minutes
    python benchmarks/ann.py --quick    # fewer queries, 30k synthetic vectors
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KS = (100, 400, 800)


def movielens_vectors(dim: int = 64) -> np.ndarray:
    """(M, dim) unit vectors of ml-latest-small's movies from a truncated SVD of the positive matrix."""
    import pandas as pd
    import scipy.sparse as sp
    from sklearn.decomposition import TruncatedSVD

    path = ROOT.parent / "shared" / "data" / "ml-latest-small"
    ratings = pd.read_csv(next(path.rglob("ratings.csv")))
    movies = pd.read_csv(next(path.rglob("movies.csv")))
    col = {m: i for i, m in enumerate(movies.movieId)}
    users = ratings.userId.astype("category").cat.codes.to_numpy()
    items = ratings.movieId.map(col).to_numpy()
    matrix = sp.csr_matrix(((ratings.rating >= 3.5).astype(np.float32) + 0.01, (items, users)),
                           shape=(len(col), users.max() + 1))
    vectors = TruncatedSVD(dim, random_state=0).fit_transform(matrix).astype(np.float32)
    vectors += np.random.default_rng(0).normal(0, 1e-3, vectors.shape).astype(np.float32)  # unrated movies
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def synthetic_vectors(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 1000, n)] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def queries(vectors: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = vectors[rng.integers(0, len(vectors), (n, 10))].mean(axis=1)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


class Exact:
    name = "exact (serving.ann, torch)"

    def __init__(self, vectors: np.ndarray) -> None:
        from deepcrossing.serving.ann import VectorIndex

        self.index = VectorIndex.build(np.arange(len(vectors)), vectors, "dot", exact_below=len(vectors) + 1)

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        return self.index.exact(q, k)


class FaissFlat:
    name = "faiss IndexFlatIP"

    def __init__(self, vectors: np.ndarray) -> None:
        import faiss

        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        return self.index.search(q[None], k)[1][0]


class FaissHNSW:
    name = "faiss IndexHNSWFlat M=32"

    def __init__(self, vectors: np.ndarray) -> None:
        import faiss

        self.index = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = 200
        self.index.add(vectors)

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        self.index.hnsw.efSearch = max(k, 400)
        return self.index.search(q[None], k)[1][0]


class Hnswlib:
    name = "hnswlib M=32"

    def __init__(self, vectors: np.ndarray) -> None:
        import hnswlib

        self.index = hnswlib.Index(space="ip", dim=vectors.shape[1])
        self.index.init_index(max_elements=len(vectors), ef_construction=200, M=32, random_seed=0)
        self.index.add_items(vectors, np.arange(len(vectors)), num_threads=2)

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        self.index.set_ef(max(k, 400))
        return self.index.knn_query(q[None], k=k, num_threads=1)[0][0]


class Usearch:
    name = "usearch M=32 f32"

    def __init__(self, vectors: np.ndarray) -> None:
        from usearch.index import Index

        self.index = Index(ndim=vectors.shape[1], metric="ip", dtype="f32", connectivity=32,
                           expansion_add=200, expansion_search=200)
        self.index.add(np.arange(len(vectors)), vectors, threads=2)

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        self.index.expansion_search = max(k, 400)
        return self.index.search(q, k, threads=1).keys


def measure(name: str, vectors: np.ndarray, qs: np.ndarray) -> list[str]:
    truth = Exact(vectors)
    rows = []
    for cls in (Exact, FaissFlat, FaissHNSW, Hnswlib, Usearch):
        started = time.perf_counter()
        index = cls(vectors)
        build = time.perf_counter() - started
        cells = []
        for k in KS:
            times = []
            for q in qs:
                t = time.perf_counter()
                index.search(q, k)
                times.append(time.perf_counter() - t)
            p50, p99 = np.percentile(times, [50, 99]) * 1e3
            cells.append(f"{p50:6.3f}/{p99:6.3f}")
        recall = np.mean([np.intersect1d(index.search(q, 100), truth.search(q, 100)).size / 100 for q in qs])
        rows.append(f"| {name} {len(vectors):>7,} | {cls.name:<24} | {build:7.2f} | {' | '.join(cells)} | "
                    f"{recall:.4f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    import faiss
    import torch

    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    n_queries = 100 if args.quick else 300
    sets = [("movielens", movielens_vectors()),
            ("synthetic", synthetic_vectors(30_000 if args.quick else 100_000))]
    print(f"cores seen: {os.cpu_count()}; one query at a time, one thread; {n_queries} queries; times in ms")
    print("| set | library | build s | " + " | ".join(f"k={k} p50/p99" for k in KS) + " | recall@100 |")
    print("|---|---|---|" + "---|" * len(KS) + "---|")
    for name, vectors in sets:
        for row in measure(name, vectors, queries(vectors, n_queries)):
            print(row, flush=True)
    print("\nchoice: hnswlib (M=32, ef_construction=200, ef=max(k, 400)): the fastest build and queries of the "
          "three HNSW implementations at the same recall (>= 0.98 at 100k needs ef ~400), serialized through its "
          "own file format (no pickle). Exact search (serving.ann, one matrix product through torch) stays the "
          "reference and serves catalogues under EXACT_BELOW = 100,000 vectors: at ml-latest-small's size it "
          "answers in well under a millisecond with recall 1.0 and nothing to build or store; at 100k the graph "
          "is about twice as fast.")


if __name__ == "__main__":
    main()
