"""Offline evaluation of candidate retrieval: Recall@K and coverage@K of recall channels (pure functions).

A **channel** maps a user's point-in-time state (as of the test period's start) to a ranked list of movie ids,
best first, leaving out every movie the user rated before the test period. The channels here are built only
from what was known before the test start (:mod:`deepcrossing.training.retrieval_data` reads the samples
folder), so the test period's ratings cannot leak into them.

* :func:`popularity_channel`: most rated before the test start, then best average, then smaller id (the order
  of ``features.online``'s candidate list);
* :func:`trending_channel`: most rated in a recent window before the test start, or by a time-decayed rating
  score (``features.online.trending_sql``; all-time popularity ranks the catalogue's old head first, while
  new users ask for recent movies);
* :func:`genre_channel`: the movies of the user's top genres (over their positive history), by popularity;
* :func:`emb_channel`: cosine between the movie's unit item vector and the mean of the unit vectors of the
  user's recent positives (:class:`~deepcrossing.training.emb_vectors.EmbVectors`' rule, the ``model=emb``
  recall of the SparrowRecSys-compatible service); popularity for a user with no positives;
* :func:`vector_channel`: a vector recall model (:class:`~deepcrossing.training.vectors.ItemVectors`:
  two-tower, item2vec) as served: the user's vector against every movie's vector (dot or cosine);
  popularity for a user whose vector is zero ("no opinion");
* :func:`merge_channels`: round-robin over channels, first occurrence kept (quotas chosen on validation:
  :mod:`deepcrossing.training.retrieval_merge`).

Example:
    >>> ranked = [np.array([1, 2, 3]), np.array([4, 5, 6])]
    >>> relevant = [np.array([3, 9]), np.array([], dtype=np.int64)]
    >>> r = recall_at_ks(ranked, relevant, (1, 3))
    >>> r.recall, r.n_users, r.n_skipped
    ({1: 0.0, 3: 0.5}, 1, 1)
    >>> coverage_at_ks(ranked, (1, 3), catalogue_size=12)
    {1: 0.16666666666666666, 3: 0.5}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from deepcrossing.errors import InputError
from deepcrossing.training.emb_vectors import EmbVectors

IdArray = NDArray[np.int64]
DEFAULT_KS = (50, 100, 200, 800)

__all__ = ["DEFAULT_KS", "Channel", "Prior", "RecallResult", "UserState", "cosine_order",
           "coverage_at_ks", "emb_channel", "genre_channel", "merge_channels", "parse_ks", "popularity_channel",
           "recall_at_ks", "sorted_contains", "top_positions", "trending_channel", "vector_channel"]


def parse_ks(text: str) -> tuple[int, ...]:
    """``"50,100"`` -> ``(50, 100)``: positive integers, sorted, duplicates dropped.

    Raises:
        InputError: anything else (the message quotes at most 40 characters).

    Example:
        >>> parse_ks("200, 50,50")
        (50, 200)
    """
    try:
        ks = tuple(sorted({int(x) for x in text.split(",")}))
    except ValueError:
        raise InputError(f"must be positive integers like 50,100,200,800, not {text[:40]!r}") from None
    if not ks or ks[0] < 1:
        raise InputError(f"must be positive integers like 50,100,200,800, not {text[:40]!r}")
    return ks


# ---------------------------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class RecallResult:
    """Recall@K of a channel.

    Attributes:
        recall: K -> mean over evaluated users of |top K ∩ relevant| / |relevant|.
        n_users: users evaluated (at least one relevant movie).
        n_skipped: users skipped because they have no relevant movie.
    """

    recall: dict[int, float]
    n_users: int
    n_skipped: int


def recall_at_ks(ranked: Sequence[NDArray[np.int64]], relevant: Sequence[NDArray[np.int64]],
                 ks: Sequence[int]) -> RecallResult:
    """Per-user Recall@K, averaged over users, for every K of ``ks`` at once.

    Edge cases: a user with no relevant movie is skipped (not counted as 0 or 1) and counted in
    ``n_skipped``; when no user is left every recall is NaN. A ranked list shorter than K counts what it
    has. Ids repeated in a ranked list count once (the first time).

    Args:
        ranked: per user, (L_u,) movie ids, best first.
        relevant: per user (same order), (R_u,) distinct relevant movie ids.
        ks: cut-offs (each >= 1).

    Returns:
        A :class:`RecallResult`.
    """
    if len(ranked) != len(relevant):
        raise InputError(f"recall needs one ranked list per user: {len(ranked)} lists, {len(relevant)} users")
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise InputError(f"every K must be >= 1, not {ks}")
    hits: dict[int, list[float]] = {k: [] for k in ks}
    skipped = 0
    for items, rel in zip(ranked, relevant, strict=True):
        rel = np.unique(np.asarray(rel, dtype=np.int64))
        if rel.size == 0:
            skipped += 1
            continue
        items = np.asarray(items, dtype=np.int64)
        _, first = np.unique(items, return_index=True)
        is_first = np.zeros(items.size, dtype=bool)
        is_first[first] = True
        cum = np.cumsum(np.isin(items, rel) & is_first)             # (L_u,) hits within the first i + 1
        for k in ks:
            got = cum[min(k, items.size) - 1] if items.size else 0
            hits[k].append(float(got) / rel.size)
    n = sum(1 for rel in relevant if np.asarray(rel).size)
    return RecallResult({k: float(np.mean(v)) if v else float("nan") for k, v in hits.items()}, n, skipped)


def coverage_at_ks(ranked: Sequence[NDArray[np.int64]], ks: Sequence[int], catalogue_size: int) -> dict[int, float]:
    """Catalogue coverage@K: distinct movies in any user's top K / ``catalogue_size`` (0 for an empty catalogue).

    Example:
        >>> coverage_at_ks([np.array([1, 2]), np.array([2, 3])], (1, 2), catalogue_size=4)
        {1: 0.5, 2: 0.75}
    """
    out = {}
    for k in ks:
        tops = [np.asarray(r, dtype=np.int64)[:k] for r in ranked]
        distinct = np.unique(np.concatenate(tops)).size if tops else 0
        out[int(k)] = distinct / catalogue_size if catalogue_size > 0 else 0.0
    return out


# --------------------------------------------------------------------------------------------- channels


@dataclass(frozen=True)
class UserState:
    """A user as of the test start (only ratings with ``timestamp < test_start``).

    Attributes:
        user_id: the user.
        rated: (R,) sorted distinct movies they rated (excluded from every channel).
        recent_positives: (P,) their latest positive movies, most recent first (at most ``recent_n``).
        top_genres: genres over their positive history, count desc then name.
    """

    user_id: int
    rated: IdArray
    recent_positives: IdArray
    top_genres: tuple[str, ...]


@dataclass(frozen=True)
class Prior:
    """What was known at the test start, for every channel.

    Attributes:
        popular: (M,) every catalogue movie, popularity order (rating count desc, average desc with unrated
            last, id asc).
        genres: genre -> (M,) bool mask over ``popular``: the movie carries the genre.
        trending: (M,) every catalogue movie, by rating count in a recent window before the start (then the
            same tie rules); empty: not computed (the trending channel is then popularity).
    """

    popular: IdArray
    genres: Mapping[str, NDArray[np.bool_]] = field(default_factory=dict)
    trending: IdArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


Channel = Callable[[UserState, int], IdArray]


def sorted_contains(haystack: NDArray[Any], needles: NDArray[Any]) -> NDArray[np.bool_]:
    """``np.isin(needles, haystack)`` by binary search (no sort of both arrays per request: 20x faster for a
    user with thousands of ratings); ``haystack`` is sorted (a store record's ``rated``,
    :attr:`UserState.rated`), sorted here otherwise.

    Example:
        >>> sorted_contains(np.array([2, 5, 9]), np.array([9, 1, 5, 10])).tolist()
        [True, False, True, False]
    """
    if len(haystack) == 0:
        return np.zeros(len(needles), dtype=bool)
    if len(haystack) > 1 and (haystack[1:] < haystack[:-1]).any():
        haystack = np.sort(haystack)
    pos = np.minimum(np.searchsorted(haystack, needles), len(haystack) - 1)
    found: NDArray[np.bool_] = haystack[pos] == needles
    return found


def top_positions(values: NDArray[Any], k: int) -> NDArray[np.int64]:
    """Positions of the ``k`` (<= len) largest of ``values``, largest first, ties by smaller position (also at
    the ``k``-th place): a partition, then a sort of those ``k`` alone (an index's exact search, a fusion's head).

    Example:
        >>> top_positions(np.array([0.5, 0.9, 0.5, 0.1, 0.5], dtype=np.float32), 3).tolist()
        [1, 0, 2]
    """
    if k < len(values):
        kth = values[np.argpartition(-values, k - 1)[k - 1]]          # the k-th largest value
        above = np.flatnonzero(values > kth)
        tied = np.flatnonzero(values == kth)[: k - len(above)]        # at the k-th place: the smaller positions
        top = np.concatenate([above, tied])
    else:
        top = np.arange(len(values))
    ordered: NDArray[np.int64] = top[np.lexsort((top, -values[top]))].astype(np.int64)
    return ordered


def _unrated(order: IdArray, rated: IdArray, n: int) -> IdArray:
    """The first ``n`` of ``order`` that are not in ``rated`` (sorted)."""
    head = order[: n + len(rated)]   # enough: at most len(rated) of them are rated (ids are distinct)
    return head[~sorted_contains(rated, head)][:n]


def popularity_channel(prior: Prior) -> Channel:
    """The most popular movies the user has not rated.

    Example:
        >>> pop = popularity_channel(Prior(np.array([5, 7, 3, 1])))
        >>> pop(UserState(1, np.array([7]), np.array([], dtype=np.int64), ()), 2).tolist()
        [5, 3]
    """

    def recall(user: UserState, n: int) -> IdArray:
        return _unrated(prior.popular, user.rated, n)

    return recall


def trending_channel(prior: Prior) -> Channel:
    """The most rated movies of the recent window (``Prior.trending``) the user has not rated: what new users
    ask for, since the catalogue's all-time head is old.

    Example:
        >>> ch = trending_channel(Prior(np.array([5, 7, 3]), trending=np.array([3, 7, 5])))
        >>> ch(UserState(1, np.array([7]), np.array([], dtype=np.int64), ()), 2).tolist()
        [3, 5]
    """
    order = prior.trending if prior.trending.size else prior.popular

    def recall(user: UserState, n: int) -> IdArray:
        return _unrated(order, user.rated, n)

    return recall


def genre_channel(prior: Prior, top_n: int = 3) -> Channel:
    """The popular movies of the user's ``top_n`` genres (a movie with any of them), unrated, by popularity;
    a user with no positive history (no genre) gets :func:`popularity_channel`'s list, as ``emb`` does.

    Example:
        >>> prior = Prior(np.array([5, 7, 3]), {"Drama": np.array([True, False, True]),
        ...                                       "Comedy": np.array([False, True, False])})
        >>> user = UserState(1, np.array([5]), np.array([5]), ("Drama",))
        >>> genre_channel(prior)(user, 10).tolist()
        [3]
        >>> genre_channel(prior)(UserState(2, np.array([7]), np.array([], dtype=np.int64), ()), 10).tolist()
        [5, 3]
    """

    def recall(user: UserState, n: int) -> IdArray:
        masks = [prior.genres[g] for g in user.top_genres[:top_n] if g in prior.genres]
        if not masks:
            return _unrated(prior.popular, user.rated, n)
        return _unrated(prior.popular[np.logical_or.reduce(masks)], user.rated, n)

    return recall


def emb_channel(prior: Prior, movie_ids: IdArray, unit: NDArray[np.float32]) -> Channel:
    """Embedding recall as the service's ``model=emb``: cosine between each movie's unit vector and the mean
    of the unit vectors of the user's recent positives, ties by smaller id; movies without a vector are not
    recalled; a user with no positive that has a vector gets :func:`popularity_channel`'s list.

    Args:
        prior: for the fallback order.
        movie_ids: (V,) movies that have a vector.
        unit: (V, H) their L2-normalized item vectors.

    Example:
        >>> unit = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
        >>> ch = emb_channel(Prior(np.array([1, 2, 3])), np.array([1, 2, 3]), unit)
        >>> ch(UserState(9, np.array([2]), np.array([2]), ()), 5).tolist()
        [3, 1]
    """
    emb = EmbVectors.from_unit(movie_ids, unit)          # the user-vector rule of the service's emb channel
    fallback = popularity_channel(prior)

    def recall(user: UserState, n: int) -> IdArray:
        query = emb.user_vector(user.recent_positives.tolist())
        if query is None:
            return fallback(user, n)
        return _unrated(cosine_order(emb.unit_, emb.ids_, query), user.rated, n)

    return recall


def cosine_order(unit: NDArray[np.float32], ids: IdArray, query: NDArray[np.float32]) -> IdArray:
    """``ids`` by descending ``unit @ query`` (cosine, for unit rows; an inner product for others), ties by
    smaller id: the ranking of every offline vector channel and of the service's exact ``model=emb`` recall.

    Args:
        unit: (N, H) unit item vectors; ids: (N,) their movie ids; query: (H,) the user vector.

    Example:
        >>> cosine_order(np.array([[1, 0], [0, 1], [1, 0]], dtype=np.float32), np.array([7, 8, 5]),
        ...              np.array([1, 0], dtype=np.float32)).tolist()
        [5, 7, 8]
    """
    import torch  # the product as the service's exact search computes it (serving.ann): the same float32
    # kernel, so offline and served lists agree even where two movies' scores differ by a rounding
    sims = torch.mv(torch.from_numpy(np.ascontiguousarray(unit, np.float32)),
                    torch.from_numpy(np.ascontiguousarray(query, np.float32))).numpy()       # (N,)
    return ids[np.lexsort((ids, -sims))]


def merge_channels(channels: Sequence[Channel]) -> Channel:
    """Round-robin merge: the 1st of each channel, then the 2nd of each, ..., each movie once (rated movies
    are already left out by the channels). Each channel is asked for ``n`` movies.

    Example:
        >>> a = popularity_channel(Prior(np.array([1, 2, 3])))
        >>> b = popularity_channel(Prior(np.array([2, 4, 1])))
        >>> merge_channels([a, b])(UserState(1, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), ()),
        ...                        4).tolist()
        [1, 2, 4, 3]
    """

    def recall(user: UserState, n: int) -> IdArray:
        lists = [np.asarray(ch(user, n), dtype=np.int64) for ch in channels]
        width = max((x.size for x in lists), default=0)
        grid = np.full((width, len(lists)), -1, dtype=np.int64)  # (L, C): row i = the i-th of every channel
        valid = np.zeros((width, len(lists)), dtype=bool)
        for j, x in enumerate(lists):
            grid[: x.size, j] = x
            valid[: x.size, j] = True
        flat = grid.ravel()[valid.ravel()]
        _, first = np.unique(flat, return_index=True)
        return flat[np.sort(first)][:n]

    return recall


def vector_channel(prior: Prior, movie_ids: IdArray, items: NDArray[np.float32],
                   users: Mapping[int, NDArray[np.float32]], metric: str = "dot") -> Channel:
    """Recall by vectors: movies by descending ``items @ user`` (rows normalized first for ``cosine``), ties
    by smaller id, rated ones left out; zero item rows are never recalled; a user with no vector or a zero
    vector gets :func:`popularity_channel`'s list.

    Args:
        prior: for the fallback order.
        movie_ids: (V,) movies; items: (V, D) their vectors (``ItemVectors.item_vectors``).
        users: user id -> (D,) vector (``ItemVectors.user_vectors``, one row per user).
        metric: ``dot`` or ``cosine``.

    Example:
        >>> items = np.array([[1, 0], [0, 2], [0, 0]], dtype=np.float32)
        >>> ch = vector_channel(Prior(np.array([3, 2, 1])), np.array([1, 2, 3]), items,
        ...                     {7: np.array([1, 1], dtype=np.float32), 8: np.zeros(2, dtype=np.float32)})
        >>> none = np.zeros(0, dtype=np.int64)
        >>> ch(UserState(7, none, none, ()), 5).tolist(), ch(UserState(8, none, none, ()), 2).tolist()
        ([2, 1], [3, 2])
    """
    items = np.asarray(items, dtype=np.float32)
    known = np.abs(items).sum(axis=1) > 0
    ids, items = np.asarray(movie_ids, dtype=np.int64)[known], items[known]
    if metric == "cosine":
        items = items / np.linalg.norm(items, axis=1, keepdims=True)
    fallback = popularity_channel(prior)

    def recall(user: UserState, n: int) -> IdArray:
        vec = users.get(user.user_id)
        if vec is None or not np.any(vec):
            return fallback(user, n)
        return _unrated(cosine_order(items, ids, np.asarray(vec, dtype=np.float32)), user.rated, n)

    return recall
