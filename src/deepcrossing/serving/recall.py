"""Multi-channel recall ahead of the ranking: which movies Deep Crossing ranks for one request.

Channels (``?channels=emb:300,genres:200,popularity:300``, or the default :func:`default_plan`):

* a **vector channel** (``emb``, ``two_tower``, ``two_tower_trending``, ``item2vec``: those the version holds,
  :mod:`~deepcrossing.serving.channels`): the user's vector searched in the channel's index;
* ``genres``: the most popular candidates of the user's top three genres (``userGenre1..3``);
* ``popularity``: the most popular candidates (the cold-start list).

:func:`recall_rows` asks the channels in the plan's order; each adds up to its size of movies that no earlier
channel gave and that the user has not rated (``sorted_contains`` over the record's sorted ``rated``), so
sizes are what each channel contributes and every movie carries the first channel that produced it. A
channel with nothing to say for a user (a cold user has no vector and no genre) adds nothing; popularity
always can.

With a recall folder (``serve --recall``) whose channels the version holds, the default plan is instead
the folder's **validated merge** (:func:`merged_rows`): each channel of its ``merge.weights`` ranks the
unrated movies as the offline evaluation measured it (the same channel functions of
:mod:`deepcrossing.training.retrieval`: popularity, trending, the user's genres, and the vector channels, with
popularity for a user they have nothing for) and the lists are merged by the same quota rule
(:func:`deepcrossing.training.retrieval_merge.merge_lists`), or, when the folder's ``merge.rule`` is
``fusion``, by the same score fusion (:meth:`deepcrossing.training.retrieval_fusion.Fusion.merge`), so what
is served is what was measured.

What both derive from the user's record alone (the channels' user vectors, the ``rated`` array, ...) is kept
in a per-user memo (:func:`user_memo`) that the engine holds per (model, store version), beside its user
partials: the same answers, without a two-tower user tower run per request.

Example:
    >>> parse_channels("emb:300, popularity:500", ("emb", "genres", "popularity"), 800)
    (('emb', 300), ('popularity', 500))
    >>> default_plan(("emb",), 800)
    (('emb', 400), ('genres', 200), ('popularity', 200))
    >>> sorted_contains(np.array([2, 5, 9]), np.array([9, 1, 5, 10])).tolist()
    [True, False, True, False]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from deepcrossing.errors import InputError
from deepcrossing.serving.store import Record
from deepcrossing.training.retrieval import Channel, IdArray, Prior, UserState, genre_channel, popularity_channel, \
    sorted_contains, trending_channel
from deepcrossing.training.retrieval_merge import merge_lists

__all__ = ["BUILTIN", "UNKNOWN_USERS", "Plan", "default_plan", "index_channel", "memo_key", "merged_rows",
           "parse_channels", "recall_rows", "sorted_contains", "user_memo", "user_query", "user_state"]

BUILTIN = ("genres", "popularity")
TOP_GENRES = ("userGenre1", "userGenre2", "userGenre3")
Plan = tuple[tuple[str, int], ...]


def parse_channels(text: str, available: Sequence[str], max_total: int) -> Plan:
    """``"emb:300,genres:200"`` -> ``(("emb", 300), ("genres", 200))``.

    Args:
        text: comma-separated ``name:size`` (each name once, size >= 1).
        available: the channels this service can answer now (vector channels of the version + built-ins).
        max_total: the largest sum of sizes.

    Raises:
        InputError: naming the ``channels`` parameter (an unknown channel, a bad or too large size).

    Example:
        >>> parse_channels("emb:0", ("emb",), 800)
        Traceback (most recent call last):
        ...
        deepcrossing.errors.InputError: field channels: size of emb must be an integer >= 1, not '0'
    """
    plan: list[tuple[str, int]] = []
    for part in text.split(","):
        name, sep, size = part.strip().partition(":")
        name = name.strip()
        if name not in available:
            raise InputError(f"unknown channel {name[:40]!r}; available: {', '.join(available)}", field="channels")
        if any(name == n for n, _ in plan):
            raise InputError(f"channel {name} is named twice", field="channels")
        if not sep or not size.strip().isdigit() or int(size) < 1:
            raise InputError(f"size of {name} must be an integer >= 1, not {size[:20]!r}", field="channels")
        plan.append((name, int(size)))
    total = sum(n for _, n in plan)
    if total > max_total:
        raise InputError(f"sizes sum to {total}, more than {max_total}", field="channels")
    return tuple(plan)


def default_plan(vector_channels: Sequence[str], total: int) -> Plan:
    """Half of ``total`` shared by the vector channels, a quarter to ``genres``, the rest to ``popularity``;
    without vector channels: ``popularity`` alone (today's candidate list)."""
    if not vector_channels:
        return (("popularity", total),)
    each = max(1, total // 2 // len(vector_channels))
    plan = [(name, each) for name in vector_channels]
    genres = total // 4
    rest = total - each * len(vector_channels) - genres
    plan += [("genres", genres), ("popularity", rest)]
    return tuple((n, s) for n, s in plan if s > 0)


def _top_genre_rows(snap: Any, features: Record) -> np.ndarray | None:
    masks = [snap.genre_masks[g] for g in (features.get(c) for c in TOP_GENRES) if g in snap.genre_masks]
    if not masks:
        return None
    rows: np.ndarray = snap.candidate_rows[np.logical_or.reduce(masks)]
    return rows


def user_query(channel: Any, features: Record, user_table: Callable[[], pa.Table] | None,
               memo: dict[str, Any] | None) -> np.ndarray | None:
    """``channel.user_vector(features, user_table)``, kept in ``memo`` (see :func:`user_memo`)."""
    query: np.ndarray | None = _memo(memo, f"vector/{channel.name}",
                                     lambda: channel.user_vector(features, user_table))
    return query


def user_memo(cache: dict[int, dict[str, Any]], user_id: int, limit: int) -> dict[str, Any] | None:
    """``cache[user_id]`` (made empty when new; the whole cache cleared when it holds ``limit`` users), or
    ``None`` when ``limit`` is 0 (no cache).

    The memo is what the recall derives from the user's record alone: the vector of each channel
    (:func:`user_query`; a two-tower user vector encodes the one-row user table and runs the tower, ~5 ms
    per request on a loaded 2-core machine), the ``rated`` array, the top genres' rows, the
    :class:`UserState` and the merged list of :func:`merged_rows`. The engine keeps one per user in its
    per-(model, store version) state, beside the user partials: a version's records never change, so what
    is kept is what would be computed.

    Example:
        >>> cache: dict[int, dict[str, Any]] = {}
        >>> user_memo(cache, 7, 2) is cache[7], user_memo(cache, 7, 0)
        (True, None)
    """
    if limit <= 0:
        return None
    memo = cache.get(user_id)
    if memo is None:
        if len(cache) >= limit:
            cache.clear()
        memo = cache[user_id] = {}
    return memo


#: The memo key shared by every user without a store record when nothing computed for them reads the id
#: (:func:`memo_key`); outside the signed 64-bit ids a request can carry.
UNKNOWN_USERS = 1 << 64


def memo_key(user_id: int, record: Record | None, request_columns: Sequence[str], channels: Any) -> int:
    """The key of ``user_id``'s memo and user part: its own id, or :data:`UNKNOWN_USERS` for a user without a
    record when neither the ranking's request side (``request_columns``) nor any vector channel's user side
    (its ``user_columns``; undeclared counts as reading everything) reads ``userId``. Such users all have the
    same empty record, so one memo answers them all exactly: a new user's first request is a lookup.

    Example:
        >>> memo_key(7, None, ("userAvgRating",), {}) == UNKNOWN_USERS, memo_key(7, {}, (), {})
        (True, 7)
        >>> memo_key(7, None, ("userId", "userAvgRating"), {})
        7
    """
    if record is not None or "userId" in request_columns:
        return user_id
    for channel in channels.values():
        columns = getattr(channel.users, "user_columns", None)
        if columns is None or "userId" in columns:
            return user_id
    return UNKNOWN_USERS


def _memo(memo: dict[str, Any] | None, key: str, make: Callable[[], Any]) -> Any:
    """``memo[key]``, made by ``make()`` when missing (``make()`` each time without a memo)."""
    if memo is None:
        return make()
    if key not in memo:
        memo[key] = make()
    return memo[key]


def recall_rows(snap: Any, record: Record | None, plan: Plan, user_table: Callable[[], pa.Table] | None,
                memo: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The snapshot rows to rank and, per row, the index in ``plan`` of the channel that produced it.

    Args:
        snap: the served :class:`~deepcrossing.serving.snapshot.Snapshot`.
        record: the user's store record (``None``: unknown user, cold start).
        plan: ``(channel, size)`` pairs, in order of precedence.
        user_table: builds the one-row user table (for a recall folder's user side).
        memo: what the recall derived from this user's record before, read and filled here
            (:func:`user_memo`; ``None``: nothing kept).

    Returns:
        ((R,) int64 rows, (R,) int8 plan indexes).
    """
    features = (record or {}).get("features") or {}
    rated = _memo(memo, "rated", lambda: np.asarray((record or {}).get("rated") or (), dtype=np.int64))
    taken = np.zeros(len(snap.movie_ids), dtype=bool)
    parts: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    n_taken = 0
    for j, (name, size) in enumerate(plan):
        if name == "popularity":
            rows = snap.candidate_rows
        elif name == "genres":
            rows = _memo(memo, "genre_rows", lambda: _top_genre_rows(snap, features))
        else:
            channel = snap.channels[name]
            query = user_query(channel, features, user_table, memo)
            rows = None
            if query is not None:
                found = channel.rows[channel.index.search(query, size + n_taken + len(rated))]
                rows = found[found >= 0]
        if rows is None or len(rows) == 0:
            continue
        rows = rows[: size + n_taken + len(rated)]   # enough: at most n_taken are taken and len(rated) rated
        rows = rows[~taken[rows]]
        if len(rated):
            rows = rows[~sorted_contains(rated, snap.movie_ids[rows])]
        rows = rows[:size]
        taken[rows] = True
        n_taken += len(rows)
        parts.append(rows)
        labels.append(np.full(len(rows), j, dtype=np.int8))
    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int8)
    return np.concatenate(parts).astype(np.int64), np.concatenate(labels)


def user_state(user_id: int, record: Record | None) -> UserState:
    """The user as the offline channels see one (:class:`~deepcrossing.training.retrieval.UserState`), from the
    store record: ``rated``, ``userRecentPositives``, the top genres ``userGenre1..5`` (empty when cold).

    Example:
        >>> user_state(7, {"rated": [3, 1], "features": {"userRecentPositives": [3], "userGenre1": "Drama",
        ...                                                "userGenre2": None}}).top_genres
        ('Drama',)
    """
    features = (record or {}).get("features") or {}
    rated = np.unique(np.asarray((record or {}).get("rated") or (), dtype=np.int64))
    recent = np.asarray(features.get("userRecentPositives") or (), dtype=np.int64)
    genres = tuple(str(g) for g in (features.get(f"userGenre{i}") for i in range(1, 6)) if g)
    return UserState(int(user_id), rated, recent, genres)


def index_channel(channel: Any, query: np.ndarray | None, prior: Prior) -> Channel:
    """A served vector channel (:class:`~deepcrossing.serving.channels.VectorChannel`) as an offline channel:
    the ``n`` best unrated movies for ``query`` by its index (exact or HNSW), popularity for a user without a
    vector (as :func:`deepcrossing.training.retrieval.vector_channel`). The merged recall and the compat
    ``model=emb`` recall both search through it."""
    fallback = popularity_channel(prior)

    def recall(user: UserState, n: int) -> IdArray:
        if query is None:
            return fallback(user, n)
        ids: IdArray = channel.index.ids[channel.index.search(query, n + len(user.rated))]
        unrated: IdArray = ids[~sorted_contains(user.rated, ids)][:n]
        return unrated

    return recall


def merged_rows(snap: Any, user_id: int, record: Record | None, total: int,
                user_table: Callable[[], pa.Table] | None,
                memo: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray, Plan]:
    """The recall folder's validated merge (``snap.merge``, its head ``snap.merge_head``) for one user: each
    channel's ``total`` best unrated movies, merged by :func:`~deepcrossing.training.retrieval_merge.merge_lists`;
    with a score fusion (``snap.fusion``), each channel's ``max(depth, total)`` best merged by
    :meth:`~deepcrossing.training.retrieval_fusion.Fusion.merge` (fused with the user's warm or cold weights,
    each movie labelled with the channel of its highest term; then its quota tail) (``memo``: as
    :func:`recall_rows`).

    The result is a function of the record and the snapshot alone, so ``memo`` keeps it too (the last
    ``total`` asked for, rows as int32: ~4 KB per user at 800): a returning user's merge is a lookup.

    Returns:
        ((R,) int64 snapshot rows in merge order, (R,) int8 plan indexes, the plan ``((channel, count), ...)``).
    """
    kept = None if memo is None else memo.get("merged")
    if kept is not None and kept[0] == total:
        return kept[1].astype(np.int64), kept[2], kept[3]
    rows, source, plan = _merged_rows(snap, user_id, record, total, user_table, memo)
    if memo is not None:
        source.flags.writeable = False     # shared with later requests: read-only
        memo["merged"] = (total, rows.astype(np.int32), source, plan)
    return rows, source, plan


def _merged_rows(snap: Any, user_id: int, record: Record | None, total: int,
                 user_table: Callable[[], pa.Table] | None,
                 memo: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray, Plan]:
    prior, user = snap.prior, _memo(memo, "user_state", lambda: user_state(user_id, record))
    features = (record or {}).get("features") or {}
    fusion = getattr(snap, "fusion", None)
    depth = total if fusion is None else max(fusion.depth, total)
    lists = []
    for name, _ in snap.merge:
        if name == "popularity":
            channel = popularity_channel(prior)
        elif name == "trending":
            channel = trending_channel(prior)
        elif name == "genres":
            channel = genre_channel(prior)
        else:
            vectors = snap.channels[name]
            channel = index_channel(vectors, user_query(vectors, features, user_table, memo), prior)
        lists.append(np.asarray(channel(user, depth), dtype=np.int64))
    if fusion is not None:
        ids, source = fusion.merge(lists, user, total)
    else:
        size, head = snap.merge_head
        ids, source = merge_lists(lists, [w for _, w in snap.merge], total, head=size, head_weights=head or None)
    rows = np.searchsorted(snap.movie_ids, ids).astype(np.int64)       # movie_ids are sorted; every id is a movie
    plan = tuple((name, int((source == j).sum())) for j, (name, _) in enumerate(snap.merge))
    return rows, source.astype(np.int8), plan
