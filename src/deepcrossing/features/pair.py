"""The user x movie ("pair") columns computed from records: one vectorised definition for samples and service.

The sample SQL (:func:`~deepcrossing.features.sql.feature_sql`) defines the pair columns
(:data:`~deepcrossing.features.columns.PAIR_SIDE`) for the samples; the service computes them at request
time for a user and a batch of candidate movies with :func:`pair_features`, from the online user record
(``userGenreCounts``, ``userGenreRatingSums``, ``userGenreRatingCounts``) and the candidates' genre
occurrence matrix (:func:`genre_occurrences`). ``assemble`` computes the samples' ``userGenreCosine`` with
the same :func:`cosine_of` (tests/features/test_pair.py checks the served values against the SQL at ``t_end``):

* ``userGenreCosine = (c . g) / (|c| |g|)``: ``c`` the user's positive-genre counts, ``g`` the movie's 0/1
  genre vector (a genre listed twice counts once); NULL when either is all zero;
* ``userGenreAvgRating = sum_j o_j S_j / sum_j o_j N_j``: ``o_j`` the times genre j is listed for the movie,
  ``S_j`` / ``N_j`` the sum / number of the user's earlier non-NULL ratings of movies of genre j; NULL when
  the denominator is 0.

Example:
    >>> import numpy as np, pyarrow as pa
    >>> names = ["Action", "Drama"]
    >>> occ = genre_occurrences(pa.array([["Drama"], ["Action", "Drama"], []]), pa.array(names))
    >>> user = {"userGenreCounts": {"Drama": 3, "Action": 4}, "userGenreRatingSums": {"Drama": 9.0},
    ...         "userGenreRatingCounts": {"Drama": 2}}
    >>> out = pair_features(user, occ, names)
    >>> out["userGenreCosine"].to_pylist(), out["userGenreAvgRating"].to_pylist()
    ([0.6, 0.9899494936611665, None], [4.5, 4.5, None])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PAIR_INPUTS = ("userGenreCounts", "userGenreRatingSums", "userGenreRatingCounts")
"""The user-record columns :func:`pair_features` reads."""
GENRE_PAIR = ("userGenreCosine", "userGenreAvgRating")
"""The pair columns :func:`pair_features` computes (the genre ones; ``userItemCFScore`` is
:func:`deepcrossing.features.itemcf.itemcf_scores`')."""


def genre_names(movie_genres: pa.Array | pa.ChunkedArray) -> tuple[str, ...]:
    """The sorted distinct genres of a ``list<string>`` column (NULL lists and elements left out): the
    vocabulary of :func:`genre_occurrences` over those movies.

    Example:
        >>> genre_names(pa.array([["B", "A"], None, ["B", None]]))
        ('A', 'B')
    """
    return tuple(sorted({g for row in movie_genres.to_pylist() for g in (row or ()) if g is not None}))


def genre_occurrences(movie_genres: pa.Array | pa.ChunkedArray, names: pa.Array) -> np.ndarray:
    """(B, G) int64: how often each vocabulary genre is listed for each row's movie (genres outside ``names``
    and NULL elements are ignored; a NULL list is no genre).

    Args:
        movie_genres: (B,) ``list<string>``.
        names: (G,) the genre vocabulary.

    Example:
        >>> genre_occurrences(pa.array([["B", "B"], None, ["A", "Z"]]), pa.array(["A", "B"])).tolist()
        [[0, 2], [0, 0], [1, 0]]
    """
    if isinstance(movie_genres, pa.ChunkedArray):
        movie_genres = movie_genres.combine_chunks()
    rows = len(movie_genres)
    occ = np.zeros((rows, len(names)), np.int64)
    if rows and len(names):
        flat = movie_genres.flatten()
        parent = np.asarray(pc.list_parent_indices(movie_genres))
        index = pc.index_in(flat, value_set=names).to_numpy(zero_copy_only=False).astype(np.float64)
        known = ~np.isnan(index)
        cells = parent[known].astype(np.int64) * len(names) + index[known].astype(np.int64)
        occ = np.bincount(cells, minlength=rows * len(names)).astype(np.int64).reshape(rows, len(names))
    return occ


def cosine_of(dot: np.ndarray, user_sq: np.ndarray, movie_k: np.ndarray) -> pa.Array:
    """``dot / (sqrt(user_sq) * sqrt(movie_k))`` as float64, NULL where either norm is 0 (the one formula of
    ``userGenreCosine``; integer inputs, so every engine and the service get the same bits).

    Example:
        >>> cosine_of(np.array([4, 0]), np.array([25, 0]), np.array([1, 1])).to_pylist()
        [0.8, None]
    """
    norm_user = np.sqrt(np.asarray(user_sq).astype(np.float64))
    norm_movie = np.sqrt(np.asarray(movie_k).astype(np.float64))
    norm_user, norm_movie = np.broadcast_arrays(norm_user, norm_movie)
    valid = (norm_user > 0) & (norm_movie > 0)
    cosine = np.divide(np.asarray(dot).astype(np.float64), norm_user * norm_movie,
                       out=np.zeros(valid.shape), where=valid)
    return pa.array(cosine, pa.float64(), mask=~valid)


def _as_dict(value: Any) -> dict[str, Any]:
    """A map value as a record or an Arrow row gives it: a dict, a list of (key, value) pairs, or None."""
    if not value:
        return {}
    return dict(value) if not isinstance(value, dict) else value


def user_vectors(user: Mapping[str, Any], names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The user's (G,) positive-genre counts, rating sums and rating counts over ``names``, and the squared
    norm of all the counts (genres outside ``names`` included; within one store version there are none).

    Example:
        >>> user_vectors({"userGenreCounts": [("B", 2)]}, ["A", "B"])[0].tolist()
        [0, 2]
    """
    counts, sums, ns = (_as_dict(user.get(c)) for c in PAIR_INPUTS)
    c = np.array([int(counts.get(g) or 0) for g in names], np.int64)
    s = np.array([float(sums.get(g) or 0.0) for g in names], np.float64)
    n = np.array([int(ns.get(g) or 0) for g in names], np.int64)
    user_sq = sum(int(v) * int(v) for v in counts.values() if v)
    return c, s, n, user_sq


def pair_values(vectors: tuple[np.ndarray, np.ndarray, np.ndarray, int], occ: np.ndarray,
                onehot: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The two pair columns as (B,) float64 arrays, NaN where the sample SQL gives NULL (the serving hot path:
    no Arrow; :func:`pair_features` is the same with nulls).

    Args:
        vectors: :func:`user_vectors` of the user over ``occ``'s vocabulary.
        occ: (B, G) :func:`genre_occurrences` of the movies.
        onehot: ``(occ > 0)`` as int64, when already computed.

    Returns:
        ``(userGenreCosine, userGenreAvgRating)``.
    """
    c, s, n, user_sq = vectors
    onehot = (occ > 0).astype(np.int64) if onehot is None else onehot
    movie_k = onehot.sum(axis=1)
    valid = (user_sq > 0) & (movie_k > 0)
    norms = math.sqrt(float(user_sq)) * np.sqrt(movie_k.astype(np.float64))
    cosine = np.divide((onehot @ c).astype(np.float64), norms, out=np.full(len(occ), np.nan), where=valid)
    denominator = occ @ n
    avg = np.divide(occ.astype(np.float64) @ s, denominator.astype(np.float64), out=np.full(len(occ), np.nan),
                    where=denominator > 0)
    return cosine, avg


def pair_features(user: Mapping[str, Any], occ: np.ndarray, names: Sequence[str],
                  vectors: tuple[np.ndarray, np.ndarray, np.ndarray, int] | None = None) -> dict[str, pa.Array]:
    """The pair columns of one user against a batch of movies, NULL where the sample SQL gives NULL.

    Args:
        user: the user's online record (:data:`PAIR_INPUTS`; missing or empty maps: a user with no history).
        occ: (B, G) :func:`genre_occurrences` of the movies (an unknown movie: a zero row).
        names: (G,) the vocabulary of ``occ``'s columns.
        vectors: :func:`user_vectors` of ``user`` when already computed (read instead of ``user``).

    Returns:
        ``{"userGenreCosine": (B,) float64, "userGenreAvgRating": (B,) float64}`` (Arrow, with nulls).
    """
    cosine, avg = pair_values(vectors if vectors is not None else user_vectors(user, names), occ)
    return {"userGenreCosine": pa.array(cosine, pa.float64(), from_pandas=True),
            "userGenreAvgRating": pa.array(avg, pa.float64(), from_pandas=True)}
