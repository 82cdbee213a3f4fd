"""Merging recall channels by quotas, and choosing the quotas on the validation split (pure, numpy only).

:func:`weighted_merge` keys the movie at rank r of channel c by ``(r + 1) / w_c`` (equal weights: the
round-robin of :func:`~deepcrossing.training.retrieval.merge_channels`); :func:`choose_merge` picks the
weights over a small grid on the validation split: by Recall@K, or, given the ranking model as a ``Ranker``,
also measuring the end-to-end NDCG@10 of the merged candidates ranked by it (what the service shows).

Example:
    >>> from deepcrossing.training.retrieval import Prior, UserState, popularity_channel
    >>> none = np.zeros(0, dtype=np.int64)
    >>> a, b = popularity_channel(Prior(np.array([1, 2]))), popularity_channel(Prior(np.array([3, 4])))
    >>> weighted_merge([a, b], [1, 2])(UserState(1, none, none, ()), 3).tolist()
    [3, 1, 4]
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from deepcrossing.errors import InputError
from deepcrossing.training.retrieval import Channel, IdArray, UserState

__all__ = ["Ranker", "best_per_id", "choose_merge", "head_then_rest", "hits_ndcg", "merge_lists", "weight_grid",
           "weighted_merge"]

#: ``(user index, (C,) candidate ids) -> (C,) scores`` of the ranking model (higher first), e.g.
#: :func:`deepcrossing.training.retrieval_data.ranker`; a movie it cannot score gets ``-inf``.
Ranker = Callable[[int, "IdArray"], NDArray[np.float64]]


def best_per_id(inverse: NDArray[np.int64], values: NDArray[np.float64], lists: Sequence[int], lengths: Sequence[int],
                size: int) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Per id, the largest of its ``values`` and the list giving it; ties: the earlier list, and within a list
    the first position. ``inverse`` and ``values``: the lists ``lists`` (of ``lengths``) concatenated, each
    entry's id as ``np.unique(..., return_inverse=True)`` numbers them (``size`` ids).

    Example:
        >>> best, source = best_per_id(np.array([0, 1, 1, 0]), np.array([1.0, 2.0, 2.0, 3.0]), [4, 7], [2, 2], 2)
        >>> best.tolist(), source.tolist()
        ([3.0, 2.0], [7, 4])
    """
    best, source = np.full(size, -np.inf), np.zeros(size, dtype=np.int64)
    start = 0
    for j, length in zip(lists, lengths, strict=True):
        end = start + length
        at, value = inverse[start:end][::-1], values[start:end][::-1]   # reversed: the first position writes last
        better = value > best[at]
        best[at[better]], source[at[better]] = value[better], j
        start = end
    return best, source


def _merge(lists: Sequence[IdArray], weights: Sequence[float], n: int) -> tuple[IdArray, NDArray[np.int64]]:
    """:func:`merge_lists` without a head: one quota rule over the lists of weight > 0."""
    on = [j for j, w in enumerate(weights) if w > 0]
    if not on:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    flat = np.concatenate([np.asarray(lists[j], dtype=np.int64) for j in on])
    ids, inverse = np.unique(flat, return_inverse=True)
    keys = np.concatenate([(np.arange(len(lists[j])) + 1) / float(weights[j]) for j in on])
    best, source = best_per_id(inverse, -keys, on, [len(lists[j]) for j in on], ids.size)
    key = -best                     # per id its smallest key, ties: the earlier list (and within a list: first)
    if n < ids.size:                # the first n by (key, list): a partition, then a sort of those alone
        cut = np.partition(key, n - 1)[n - 1]
        below = np.flatnonzero(key < cut)
        tied = np.flatnonzero(key == cut)
        top = np.concatenate([below, tied[np.argsort(source[tied], kind="stable")][: n - below.size]])
    else:
        top = np.arange(ids.size)
    order = top[np.lexsort((source[top], key[top]))]
    return ids[order], source[order]


def merge_lists(lists: Sequence[IdArray], weights: Sequence[float], n: int, *, head: int = 0,
                head_weights: Sequence[float] | None = None) -> tuple[IdArray, NDArray[np.int64]]:
    """The quota rule itself, on ranked lists: the id at rank r (0-based) of list c gets the key
    ``(r + 1) / weights[c]`` (a weight of 0 leaves the list out); ids by ascending key (ties: earlier list
    first), each once, the first ``n``. With ``head_weights``, the first ``head`` ids are merged by them
    instead, and the rest by ``weights`` (each id once): the head is what Recall@head measures, the whole what
    the ranking model ranks. The one implementation of the merge, offline (:func:`weighted_merge`) and in the
    service (:func:`deepcrossing.serving.recall.merged_rows`).

    Returns:
        ((L,) the merged ids, (L,) for each the index of the list that gave it first).

    Example:
        >>> ids, src = merge_lists([np.array([1, 2, 3]), np.array([2, 9])], [1.0, 2.0], 4)
        >>> ids.tolist(), src.tolist()
        ([2, 1, 9, 3], [1, 0, 1, 0])
        >>> merge_lists([np.array([1, 2, 3]), np.array([2, 9])], [1.0, 0.0], 4, head=2,
        ...             head_weights=[0.0, 1.0])[0].tolist()
        [2, 9, 1, 3]
    """
    if len(lists) != len(weights) or (head_weights is not None and len(head_weights) != len(lists)):
        raise InputError(f"merge_lists needs one weight per list: {len(lists)} lists, weights {list(weights)}, "
                         f"head weights {head_weights}")
    if head_weights is None or head <= 0:
        return _merge(lists, weights, n)
    first, first_source = _merge(lists, head_weights, min(head, n))
    return head_then_rest((first, first_source), _merge(lists, weights, n), n)


def head_then_rest(head: tuple[IdArray, NDArray[np.int64]], rest: tuple[IdArray, NDArray[np.int64]], n: int
                   ) -> tuple[IdArray, NDArray[np.int64]]:
    """The ``(ids, sources)`` of ``head``, then those of ``rest`` not in it, the first ``n`` (a merge's head).

    Example:
        >>> ids, src = head_then_rest((np.array([5, 1]), np.array([0, 0])),
        ...                           (np.array([1, 7, 8]), np.array([1, 1, 1])), 3)
        >>> ids.tolist(), src.tolist()
        ([5, 1, 7], [0, 0, 1])
    """
    ids, source = np.concatenate([head[0], rest[0]]), np.concatenate([head[1], rest[1]])
    _, keep = np.unique(ids, return_index=True)
    keep = np.sort(keep)[:n]
    return ids[keep], source[keep]


def weighted_merge(channels: Sequence[Channel], weights: Sequence[float], *, head: int = 0,
                   head_weights: Sequence[float] | None = None) -> Channel:
    """Merge by quotas: the movie at rank r (0-based) of channel c gets the key ``(r + 1) / weights[c]``;
    movies by ascending key (ties: earlier channel first), each once. Equal weights are
    :func:`merge_channels`'s round-robin; a weight of 0 leaves the channel out; weights 2:1 take two
    movies of the first channel for one of the second. ``head``, ``head_weights``: the first ``head`` movies
    by other weights (:func:`merge_lists`).

    Example:
        >>> from deepcrossing.training.retrieval import Prior, popularity_channel
        >>> a = popularity_channel(Prior(np.array([1, 2, 3, 4])))
        >>> b = popularity_channel(Prior(np.array([9, 8, 7])))
        >>> none = np.zeros(0, dtype=np.int64)
        >>> weighted_merge([a, b], [2, 1])(UserState(1, none, none, ()), 6).tolist()
        [1, 2, 9, 3, 4, 8]
        >>> weighted_merge([a, b], [1, 0], head=2, head_weights=[0, 1])(UserState(1, none, none, ()), 4).tolist()
        [9, 8, 1, 2]
    """
    heads = list(head_weights) if head_weights is not None and head > 0 else [0.0] * len(weights)
    if len(channels) != len(weights) or len(heads) != len(weights) or not any(w > 0 for w in weights):
        raise InputError(f"weighted_merge needs one weight per channel, some > 0: {list(weights)}")
    used = [(ch, float(w), float(h)) for ch, w, h in zip(channels, weights, heads, strict=True) if w > 0 or h > 0]

    def recall(user: UserState, n: int) -> IdArray:
        lists = [np.asarray(ch(user, n), dtype=np.int64) for ch, _, _ in used]
        ids, _ = merge_lists(lists, [w for _, w, _ in used], n, head=head,
                             head_weights=[h for _, _, h in used] if head_weights is not None else None)
        return ids

    return recall


def weight_grid(names: Sequence[str], grid: Sequence[float]) -> list[tuple[float, ...]]:
    """The weight vectors of ``grid`` (not all 0), in grid order, one per ratio (2:2 merges as 1:1)."""
    seen, out = set(), []
    for weights in itertools.product(grid, repeat=len(names)):
        top = max(weights)
        ratio = tuple(round(w / top, 9) for w in weights) if top > 0 else None
        if ratio is not None and ratio not in seen:
            seen.add(ratio)
            out.append(tuple(float(w) for w in weights))
    return out


def hits_ndcg(hits: NDArray[np.bool_], n_relevant: int, k: int) -> float:
    """NDCG@k of one ranked list of hits (binary gains, at most ``k``) with ``n_relevant`` relevant movies in
    all (:func:`deepcrossing.metrics.ndcg_at_k`'s rule: the relevant movies not recalled count as misses)."""
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    return float((discount[:hits.size] * hits).sum() / discount[:min(n_relevant, k)].sum())


def choose_merge(users: Sequence[UserState], relevant: Sequence[IdArray], channels: Mapping[str, Channel],
                 k: int = 100, grid: Sequence[float] = (0, 1, 2, 4), *, rank: Ranker | None = None,
                 candidates: int = 800, top: int = 10, floor: float | None = None,
                 tail: Mapping[str, float] | None = None) -> tuple[dict[str, float], float]:
    """The :func:`weighted_merge` weights (each from ``grid``, not all 0) with the best mean Recall@``k``
    over ``users`` (use the VALIDATION split: the weights are then fixed for the test), each channel asked
    once per user; ties go to the earlier weights in grid order.

    With ``rank`` (the ranking model), each weighting is also measured end to end: NDCG@``top`` of the first
    ``candidates`` merged movies ranked by ``rank`` (each user's candidates are scored once, whatever the
    weights). Without ``floor``: the best NDCG (ties by Recall@``k``, then grid order). With ``floor`` (e.g.
    popularity-``candidates``'s NDCG, which popularity alone in the grid reaches): the best Recall@``k`` among
    the weights whose NDCG is at least ``floor``; if none is, the best NDCG.

    With ``tail`` (channel -> weight, e.g. the weights chosen with the floor), the grid's weights are the
    **head** weights instead: the merge is the first ``k`` movies by them, then the rest by ``tail``
    (:func:`merge_lists`' ``head``), judged by the same rules (Recall@``k`` is the head's; the NDCG is of the
    whole list's first ``candidates``, what the ranking model ranks).

    Returns:
        (channel -> weight, its Recall@k; with ``rank``, its NDCG@top).

    Example:
        >>> from deepcrossing.training.retrieval import Prior, popularity_channel
        >>> none = np.zeros(0, dtype=np.int64)
        >>> good = popularity_channel(Prior(np.array([3, 1, 2])))
        >>> bad = popularity_channel(Prior(np.array([1, 2, 3])))
        >>> choose_merge([UserState(1, none, none, ())], [np.array([3])], {"bad": bad, "good": good}, k=1)
        ({'bad': 0.0, 'good': 1.0}, 1.0)
        >>> by_id = lambda i, ids: -ids.astype(np.float64)          # a ranker that prefers low ids
        >>> choose_merge([UserState(1, none, none, ())], [np.array([1])], {"bad": bad, "good": good}, k=1,
        ...              rank=by_id, candidates=1, top=1)           # bad's first (1) ranks best
        ({'bad': 1.0, 'good': 0.0}, 1.0)
    """
    names = list(channels)
    used = [(i, u, np.unique(np.asarray(r, dtype=np.int64))) for i, (u, r) in enumerate(zip(users, relevant,
            strict=True)) if np.asarray(r).size]                  # users without a relevant movie are skipped
    n_relevant = [rel.size for _, _, rel in used]
    n = k if rank is None else max(k, candidates)
    lists = [[np.asarray(channels[name](u, n), dtype=np.int64) for name in names] for _, u, _ in used]
    scores: list[NDArray[np.float64]] = []
    if rank is not None:          # per user: the union of the lists, scored once; lists become its positions
        for j, (i, user, rel) in enumerate(used):
            union = np.unique(np.concatenate(lists[j])) if lists[j] else np.zeros(0, dtype=np.int64)
            scores.append(np.asarray(rank(i, union), dtype=np.float64))
            lists[j] = [np.searchsorted(union, x) for x in lists[j]]
            used[j] = (i, user, np.flatnonzero(np.isin(union, rel)))
    columns = weight_grid(names, grid)
    table = np.array(columns, dtype=np.float64).reshape(len(columns), len(names))
    tail_weights = None if tail is None else [float(tail.get(name, 0.0)) for name in names]
    per_user = [_user_figures(lists[j], columns, table, rel, n_relevant[j], k, n,   # (recall (G,), ndcg (G,) | None)
                              scores[j] if rank is not None else None, candidates, top, tail_weights)
                for j, (_, _, rel) in enumerate(used)]
    recalls = np.stack([r for r, _ in per_user], axis=1) if per_user else np.zeros((len(columns), 0))
    ndcgs = (np.stack([e for _, e in per_user if e is not None], axis=1) if per_user and rank is not None
             else np.zeros((len(columns), 0)))
    best: tuple[tuple[float, ...], tuple[float, float, float], float] = (tuple(1.0 for _ in names),
                                                                         (-1.0, -1.0, -1.0), -1.0)
    for g, weights in enumerate(columns):          # (G, users) rows: each mean is the 1-D mean of one weighting
        r = float(np.mean(recalls[g])) if recalls.shape[1] else -1.0
        e = float(np.mean(ndcgs[g])) if ndcgs.shape[1] else -1.0
        key = ((0.0, r, r) if rank is None else (0.0, e, r) if floor is None
               else (1.0, r, e) if e >= floor else (0.0, e, r))
        if key > best[1]:
            best = (weights, key, r if rank is None else e)
    return {name: float(w) for name, w in zip(names, best[0], strict=True)}, best[2]


def _user_figures(lists: Sequence[IdArray], columns: Sequence[tuple[float, ...]], table: NDArray[np.float64],
                  rel: IdArray, n_relevant: int, k: int, n: int, scores: NDArray[np.float64] | None, candidates: int,
                  top: int, tail_weights: Sequence[float] | None
                  ) -> tuple[NDArray[np.float64], NDArray[np.float64] | None]:
    """One user's Recall@``k`` and NDCG@``top`` of every weighting: :func:`_grid_user`, with the weightings
    whose top ``top`` hold tied scores (or the whole user, where it cannot tell) by :func:`_loop_user`."""
    got = _grid_user(lists, table, rel, n_relevant, k, scores, candidates, top, tail_weights)
    if got is None:
        return _loop_user(lists, columns, rel, n_relevant, k, n, scores, candidates, top, tail_weights)
    recall, ndcg, redo = got
    if ndcg is not None and redo.size:
        _, again = _loop_user(lists, [columns[g] for g in redo], rel, n_relevant, k, n, scores, candidates, top,
                              tail_weights)
        ndcg[redo] = again
    return recall, ndcg


def _loop_user(lists: Sequence[IdArray], columns: Sequence[tuple[float, ...]], rel: IdArray, n_relevant: int, k: int,
               n: int, scores: NDArray[np.float64] | None, candidates: int, top: int,
               tail_weights: Sequence[float] | None) -> tuple[NDArray[np.float64], NDArray[np.float64] | None]:
    """One user's Recall@``k`` (and with ``scores``, NDCG@``top`` of the first ``candidates`` ranked by them)
    of every weighting in ``columns``, merging once per weighting (:func:`merge_lists`): the reference, and what
    :func:`choose_merge` runs where :func:`_grid_user` cannot be exact."""
    recall, ndcg = np.zeros(len(columns)), np.zeros(len(columns))
    for g, weights in enumerate(columns):
        if tail_weights is None:
            ids, _ = merge_lists(lists, weights, n)
        else:
            ids, _ = merge_lists(lists, tail_weights, n, head=k, head_weights=weights)
        # the merged list holds distinct movies: Recall@k = |top k & relevant| / |relevant|, as recall_at_ks
        recall[g] = np.isin(ids[:k], rel).sum() / n_relevant
        if scores is not None:
            first = ids[:candidates]
            ranked = first[np.argsort(-scores[first], kind="stable")[:top]]
            ndcg[g] = hits_ndcg(np.isin(ranked, rel), n_relevant, top)
    return recall, None if scores is None else ndcg


def _keys(ranks: NDArray[np.float64], weights: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Every weighting's quota key of every movie, ``min_c (r_c + 1) / w_c`` ((G, U); inf: in no list of weight
    > 0), and the list giving it (the earliest on ties), from ``ranks`` (C, U) = r + 1 (inf: not in the list)."""
    keys = np.full((weights.shape[0], ranks.shape[1]), np.inf)
    source = np.zeros(keys.shape, dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        for c in range(ranks.shape[0]):
            key = np.where(weights[:, c, None] > 0, ranks[c] / weights[:, c, None], np.inf)
            better = key < keys
            keys[better], source[better] = key[better], c
    return keys, source


def _first(keys: NDArray[np.float64], source: NDArray[np.int64], m: int) -> NDArray[np.bool_]:
    """(G, U) which movies are among each row's first ``m`` by (key, source), as the quota merge orders them;
    within a row, movies of one key come from distinct lists (one movie per rank of a list)."""
    finite = np.isfinite(keys)
    if keys.shape[1] <= m:
        return finite
    cut = np.partition(keys, m - 1, axis=1)[:, m - 1:m]                       # the m-th key of each row
    below, tie = keys < cut, (keys == cut) & finite
    need = m - below.sum(axis=1, keepdims=True)
    lists = int(source.max()) + 1
    has = np.stack([(tie & (source == c)).any(axis=1) for c in range(lists)], axis=1)   # (G, C)
    before = np.cumsum(has, axis=1) - has                                     # tied lists earlier than each
    earlier: NDArray[np.int64] = np.take_along_axis(before, source, axis=1)
    out: NDArray[np.bool_] = below | (tie & (earlier < need))
    return out


def _then(chosen: NDArray[np.bool_], order: IdArray | None, m: int) -> NDArray[np.bool_]:
    """``chosen`` (G, U) and, while a row has fewer than ``m``, the next movies of ``order`` not chosen yet
    (:func:`head_then_rest`'s rule); ``chosen`` as it is without an ``order``."""
    if order is None:
        return chosen
    out = chosen.copy()
    rest = ~chosen[:, order]
    out[:, order] |= rest & (np.cumsum(rest, axis=1) <= m - chosen.sum(axis=1, keepdims=True))
    return out


def _grid_user(lists: Sequence[IdArray], table: NDArray[np.float64], rel: IdArray, n_relevant: int, k: int,
               scores: NDArray[np.float64] | None, candidates: int, top: int, tail_weights: Sequence[float] | None
               ) -> tuple[NDArray[np.float64], NDArray[np.float64] | None, NDArray[np.int64]] | None:
    """:func:`_loop_user` for all weightings at once, bit for bit ((G, U) keys instead of G merges; 20x faster
    on 700 weightings of 5 lists of 800), and the weightings whose NDCG it cannot give exactly (tied scores in
    their top ``top`` + 1: the merge's order breaks those ties); None where it cannot tell (no list, NaN)."""
    if not lists or not any(x.size for x in lists):
        return None
    union = np.unique(np.concatenate(lists))
    ranks = np.full((len(lists), union.size), np.inf)
    for c, x in enumerate(lists):                                   # a movie twice in a list: its first rank
        ranks[c, np.searchsorted(union, x[::-1])] = np.arange(x.size, 0, -1, dtype=np.float64)
    hit = np.isin(union, rel)
    keys, source = _keys(ranks, table)
    order = None
    if tail_weights is not None:       # the first k by the grid's weights, then the tail's order without them
        tail_keys, tail_source = _keys(ranks, np.array([tail_weights], dtype=np.float64))
        finite = np.flatnonzero(np.isfinite(tail_keys[0]))
        order = finite[np.lexsort((tail_source[0, finite], tail_keys[0, finite]))]
    head = _then(_first(keys, source, k), order, k)
    recall = (head & hit).sum(axis=1) / n_relevant
    none = np.zeros(0, dtype=np.int64)
    if scores is None:
        return recall, None, none
    score = scores[union]
    if np.isnan(score).any():
        return None
    chosen = _then(_first(keys, source, min(k, candidates) if order is not None else candidates), order, candidates)
    by_score = np.argsort(-score, kind="stable")
    picked = chosen[:, by_score]
    place = np.cumsum(picked, axis=1)
    rows, cols = np.nonzero(picked & (place <= top + 1))
    at = place[rows, cols] - 1
    seen = np.full((table.shape[0], top + 1), np.nan)            # each weighting's first top + 1 scores
    seen[rows, at] = score[by_score][cols]
    first = at < top
    rows, cols, at = rows[first], cols[first], at[first]
    gains = np.zeros((table.shape[0], top))
    discount = 1.0 / np.log2(np.arange(2, top + 2))
    gains[rows, at] = discount[at] * hit[by_score][cols]
    dcg = gains.sum(axis=1)
    for g in np.flatnonzero(place[:, -1] < top):      # fewer than top candidates: the sum over those alone
        dcg[g] = gains[g, :place[g, -1]].sum()
    redo = np.flatnonzero((seen[:, 1:] == seen[:, :-1]).any(axis=1))
    return recall, dcg / discount[:min(n_relevant, top)].sum(), redo
