"""Merging recall channels by quotas, and choosing the quotas on the validation split (pure, numpy only).

:func:`weighted_merge` keys the movie at rank r of channel c by ``(r + 1) / w_c`` (equal weights: the
round-robin of :func:`~deepcrossing.training.retrieval.merge_channels`); :func:`choose_merge` picks the
weights with the best validation Recall@K over a small grid.

Example:
    >>> from deepcrossing.training.retrieval import Prior, UserState, popularity_channel
    >>> none = np.zeros(0, dtype=np.int64)
    >>> a, b = popularity_channel(Prior(np.array([1, 2]))), popularity_channel(Prior(np.array([3, 4])))
    >>> weighted_merge([a, b], [1, 2])(UserState(1, none, none, ()), 3).tolist()
    [3, 1, 4]
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from deepcrossing.errors import InputError
from deepcrossing.training.retrieval import Channel, IdArray, UserState

__all__ = ["choose_merge", "merge_lists", "weighted_merge"]


def merge_lists(lists: Sequence[IdArray], weights: Sequence[float], n: int) -> tuple[IdArray, NDArray[np.int64]]:
    """The quota rule itself, on ranked lists: the id at rank r (0-based) of list c gets the key
    ``(r + 1) / weights[c]`` (each weight > 0); ids by ascending key (ties: earlier list first), each once,
    the first ``n``. The one implementation of the merge, offline (:func:`weighted_merge`) and in the service
    (:func:`deepcrossing.serving.recall.merged_rows`).

    Returns:
        ((L,) the merged ids, (L,) for each the index of the list that gave it first).

    Example:
        >>> ids, src = merge_lists([np.array([1, 2, 3]), np.array([2, 9])], [1.0, 2.0], 4)
        >>> ids.tolist(), src.tolist()
        ([2, 1, 9, 3], [1, 0, 1, 0])
    """
    if not lists:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    keys = np.concatenate([(np.arange(len(x)) + 1) / float(w) for x, w in zip(lists, weights, strict=True)])
    source = np.concatenate([np.full(len(x), j, dtype=np.int64) for j, x in enumerate(lists)])
    flat = np.concatenate([np.asarray(x, dtype=np.int64) for x in lists])
    order = np.lexsort((source, keys))
    flat, source = flat[order], source[order]
    _, first = np.unique(flat, return_index=True)
    first = np.sort(first)[:n]
    return flat[first], source[first]


def weighted_merge(channels: Sequence[Channel], weights: Sequence[float]) -> Channel:
    """Merge by quotas: the movie at rank r (0-based) of channel c gets the key ``(r + 1) / weights[c]``;
    movies by ascending key (ties: earlier channel first), each once. Equal weights are
    :func:`merge_channels`'s round-robin; a weight of 0 leaves the channel out; weights 2:1 take two
    movies of the first channel for one of the second.

    Example:
        >>> from deepcrossing.training.retrieval import Prior, popularity_channel
        >>> a = popularity_channel(Prior(np.array([1, 2, 3, 4])))
        >>> b = popularity_channel(Prior(np.array([9, 8, 7])))
        >>> none = np.zeros(0, dtype=np.int64)
        >>> weighted_merge([a, b], [2, 1])(UserState(1, none, none, ()), 6).tolist()
        [1, 2, 9, 3, 4, 8]
    """
    if len(channels) != len(weights) or not any(w > 0 for w in weights):
        raise InputError(f"weighted_merge needs one weight per channel, some > 0: {list(weights)}")
    used = [(ch, float(w)) for ch, w in zip(channels, weights, strict=True) if w > 0]

    def recall(user: UserState, n: int) -> IdArray:
        ids, _ = merge_lists([np.asarray(ch(user, n), dtype=np.int64) for ch, _ in used], [w for _, w in used], n)
        return ids

    return recall


def choose_merge(users: Sequence[UserState], relevant: Sequence[IdArray], channels: Mapping[str, Channel],
                 k: int = 100, grid: Sequence[float] = (0, 1, 2, 4)) -> tuple[dict[str, float], float]:
    """The :func:`weighted_merge` weights (each from ``grid``, not all 0) with the best mean Recall@``k``
    over ``users`` (use the VALIDATION split: the weights are then fixed for the test), each channel asked
    once per user; ties go to the earlier weights in grid order.

    Returns:
        (channel -> weight, the best Recall@k).

    Example:
        >>> from deepcrossing.training.retrieval import Prior, popularity_channel
        >>> none = np.zeros(0, dtype=np.int64)
        >>> good = popularity_channel(Prior(np.array([3, 1, 2])))
        >>> bad = popularity_channel(Prior(np.array([1, 2, 3])))
        >>> choose_merge([UserState(1, none, none, ())], [np.array([3])], {"bad": bad, "good": good}, k=1)
        ({'bad': 0.0, 'good': 1.0}, 1.0)
    """
    names = list(channels)
    scored = [(u, np.unique(np.asarray(r, dtype=np.int64))) for u, r in zip(users, relevant, strict=True)
              if np.asarray(r).size]                          # users without a relevant movie are skipped
    lists = {name: {u.user_id: np.asarray(ch(u, k), dtype=np.int64) for u, _ in scored}
             for name, ch in channels.items()}

    def cached(name: str) -> Channel:
        return lambda user, n: lists[name][user.user_id][:n]

    best: tuple[dict[str, float], float] = (dict.fromkeys(names, 1.0), -1.0)
    for weights in itertools.product(grid, repeat=len(names)):
        if not any(w > 0 for w in weights):
            continue
        merged = weighted_merge([cached(n) for n in names], weights)
        # the merged list holds distinct movies: Recall@k = |top k & relevant| / |relevant|, as recall_at_ks
        hits = [np.isin(merged(u, k), rel).sum() / rel.size for u, rel in scored]
        score = float(np.mean(hits)) if hits else -1.0
        if score > best[1]:
            best = ({n: float(w) for n, w in zip(names, weights, strict=True)}, score)
    return best
