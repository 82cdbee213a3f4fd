"""Merging recall channels by **score fusion** (weighted reciprocal-rank fusion), and choosing it on validation.

The quota merge (:mod:`deepcrossing.training.retrieval_merge`) interleaves ranked lists; fusion instead scores
every movie of the channels' top ``depth`` lists at once: the movie at rank r (0-based) of channel c adds
``w_c / (k + r + 1)``, so a movie near the top of the trending prior AND of a personal channel beats one that
only one of them likes. Cold users (no positive before the start: the vector channels, the genres and
popularity then say much the same) get their own weights (``cold_weights``). :func:`fuse_lists` is the one
rule, offline (:func:`fusion_merge`) and in the service (:func:`deepcrossing.serving.recall.merged_rows`);
each movie is attributed to the channel giving it the highest term.

Example:
    >>> ids, source = fuse_lists([np.array([1, 2, 3]), np.array([3, 4])], [1.0, 1.0], 4, k=0.0)
    >>> ids.tolist(), source.tolist()    # 3: 1/3 + 1/1; 1: 1/1; 2 and 4: 1/2 (ties: smaller id)
    ([3, 1, 2, 4], [1, 0, 0, 1])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from deepcrossing.errors import InputError
from deepcrossing.training.retrieval import Channel, IdArray, UserState, top_positions
from deepcrossing.training.retrieval_merge import Ranker, best_per_id, head_then_rest, hits_ndcg, merge_lists, \
    weight_grid

__all__ = ["FUSION_GRID", "FUSION_KS", "Fusion", "choose_fusion", "evaluate_merge", "fuse_lists", "fusion_merge",
           "fusion_of"]

#: The channel weights and the rank offsets ``k`` that ``train-recall`` tries.
FUSION_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0)
FUSION_KS: tuple[float, ...] = (20.0, 60.0, 200.0)


@dataclass(frozen=True)
class Fusion:
    """A fusion merge (the recall folder's ``merge.fusion``).

    Attributes:
        weights: channel -> weight for a warm user (a positive before the start); cold_weights: for a cold one.
        k: the rank offset (``w / (k + r + 1)``); depth: each channel's list length (at least the request's).
        head, tail: with ``head > 0``, only the first ``head`` movies are fused; the rest come by the quota rule
            with the weights ``tail`` (:func:`~deepcrossing.training.retrieval_merge.merge_lists`), as the quota
            merge's head does: the head is what Recall@head measures, the whole what the ranking model ranks.
        names: (derived) the channels with a weight > 0 somewhere, in order.
    """

    weights: Mapping[str, float]
    cold_weights: Mapping[str, float]
    k: float = 60.0
    depth: int = 800
    head: int = 0
    tail: Mapping[str, float] = field(default_factory=dict)
    names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        values = [*self.weights.values(), *self.cold_weights.values(), *self.tail.values()]
        if (not all(isinstance(w, int | float) and not isinstance(w, bool) and w >= 0 for w in values)
                or not any(w > 0 for w in self.weights.values()) or not any(w > 0 for w in self.cold_weights.values())
                or not isinstance(self.k, int | float) or isinstance(self.k, bool) or not self.k >= 0
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in (self.depth, self.head))
                or self.depth < 1 or self.head < 0 or (self.head > 0 and not any(w > 0 for w in self.tail.values()))):
            raise InputError("merge.fusion needs weights and cold_weights (and with a head > 0, tail) mapping channels "
                             "to numbers >= 0 (some > 0), k >= 0, depth >= 1 and head >= 0, not "
                             f"{self.to_dict()}; run train-recall again", field="merge.fusion")
        tail = self.tail if self.head else {}
        names = [n for n in dict.fromkeys([*self.weights, *self.cold_weights, *tail])
                 if self.weights.get(n, 0) > 0 or self.cold_weights.get(n, 0) > 0 or tail.get(n, 0) > 0]
        object.__setattr__(self, "names", tuple(names))

    def for_user(self, user: UserState) -> list[float]:
        """The fusion weights of :attr:`names` for ``user`` (cold: no recent positive)."""
        chosen = self.weights if user.recent_positives.size else self.cold_weights
        return [float(chosen.get(n, 0.0)) for n in self.names]

    def merge(self, lists: Sequence[IdArray], user: UserState, n: int) -> tuple[IdArray, NDArray[np.int64]]:
        """The merged ``n`` of ``lists`` (one per :attr:`names`, each the channel's first ``max(depth, n)``
        movies for ``user``), and for each the index of its list (the highest term; in the tail: the quota
        rule's). The one rule, offline (:func:`fusion_merge`) and served.

        Example:
            >>> f = Fusion({"a": 1.0}, {"a": 1.0}, k=0.0, head=1, tail={"b": 1.0})
            >>> none = np.zeros(0, dtype=np.int64)
            >>> ids, src = f.merge([np.array([1, 2]), np.array([3, 1])], UserState(1, none, none, ()), 3)
            >>> ids.tolist(), src.tolist()
            ([1, 3], [0, 1])
        """
        fused = fuse_lists(lists, self.for_user(user), min(self.head, n) if self.head else n, k=self.k)
        if not self.head:
            return fused
        tail = merge_lists([x[:n] for x in lists], [float(self.tail.get(c, 0.0)) for c in self.names], n)
        return head_then_rest(fused, tail, n)

    def to_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.weights), "cold_weights": dict(self.cold_weights), "k": self.k,
                "depth": self.depth, "head": self.head, "tail": dict(self.tail)}

    @classmethod
    def from_dict(cls, obj: Any) -> Fusion:
        """The manifest's ``merge.fusion`` (keys ``weights``, ``cold_weights``, ``k``, ``depth``, ``head``,
        ``tail``), checked.

        Example:
            >>> Fusion.from_dict({"weights": {"trending": 1}, "cold_weights": {"trending": 1}, "k": 60,
            ...                   "depth": 800, "head": 0, "tail": {}}).names
            ('trending',)
        """
        keys = {"weights", "cold_weights", "k", "depth", "head", "tail"}
        if not isinstance(obj, dict) or set(obj) != keys or not all(isinstance(obj[x], dict)
                                                                     for x in ("weights", "cold_weights", "tail")):
            raise InputError(f"merge.fusion must be an object with exactly the keys {sorted(keys)}; "
                             "run train-recall again", field="merge.fusion")
        weights, cold, tail = ({str(c): w for c, w in obj[x].items()} for x in ("weights", "cold_weights", "tail"))
        return cls(weights, cold, obj["k"], obj["depth"], obj["head"], tail)


def fusion_of(merge: Any) -> Fusion | None:
    """The fusion a recall folder's ``merge`` object serves: its ``fusion`` when ``rule`` is ``"fusion"``, else
    ``None`` (the quota merge; folders written before fusion have no ``rule``).

    Raises:
        InputError: ``rule`` is neither ``"quota"`` nor ``"fusion"``, or the fusion is malformed.

    Example:
        >>> fusion_of({"weights": {"trending": 1.0}}) is None
        True
    """
    rule = merge.get("rule", "quota") if isinstance(merge, dict) else "quota"
    if rule not in ("quota", "fusion"):
        raise InputError(f"merge.rule must be quota or fusion, not {str(rule)[:40]!r}; run train-recall again",
                         field="merge.rule")
    return Fusion.from_dict(merge.get("fusion")) if rule == "fusion" else None


def fuse_lists(lists: Sequence[IdArray], weights: Sequence[float], n: int, *, k: float
               ) -> tuple[IdArray, NDArray[np.int64]]:
    """Weighted reciprocal-rank fusion: the id at rank r (0-based) of list c adds ``weights[c] / (k + r + 1)``
    (a weight of 0 leaves the list out); ids by descending sum, ties by smaller id, the first ``n``. The one
    implementation, offline and served.

    Returns:
        ((L,) the fused ids, (L,) for each the index of the list giving it its highest term; ties: the
        earlier list).
    """
    if len(lists) != len(weights):
        raise InputError(f"fuse_lists needs one weight per list: {len(lists)} lists, weights {list(weights)}")
    on = [j for j, w in enumerate(weights) if w > 0 and len(lists[j])]
    if not on:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    flat = np.concatenate([np.asarray(lists[j], dtype=np.int64) for j in on])
    terms = np.concatenate([float(weights[j]) / (k + np.arange(len(lists[j])) + 1.0) for j in on])
    ids, inverse = np.unique(flat, return_inverse=True)
    scores = np.bincount(inverse, weights=terms, minlength=ids.size)          # (U,) summed in list order
    _, best = best_per_id(inverse, terms, on, [len(lists[j]) for j in on], ids.size)   # per id its highest term
    order = top_positions(scores, n)          # by score, ties by smaller id (ids are sorted)
    return ids[order], best[order]


def fusion_merge(channels: Mapping[str, Channel], fusion: Fusion) -> Channel:
    """The fused channel: each channel of ``fusion.names`` asked for ``max(depth, n)`` movies, then
    :meth:`Fusion.merge` (:func:`fuse_lists` with the user's warm or cold weights, then the quota tail).

    Example:
        >>> from deepcrossing.training.retrieval import Prior, popularity_channel
        >>> a, b = popularity_channel(Prior(np.array([1, 2, 3]))), popularity_channel(Prior(np.array([3, 4])))
        >>> f = Fusion({"a": 1.0, "b": 1.0}, {"b": 1.0}, k=0.0, depth=3)
        >>> none = np.zeros(0, dtype=np.int64)
        >>> fusion_merge({"a": a, "b": b}, f)(UserState(1, none, none, ()), 3).tolist()         # cold: b alone
        [3, 4]
        >>> fusion_merge({"a": a, "b": b}, f)(UserState(1, none, np.array([7]), ()), 3).tolist()  # warm
        [3, 1, 2]
    """
    missing = sorted(set(fusion.names) - set(channels))
    if missing:
        raise InputError(f"the fusion names channel(s) {missing} that are not built here")

    def recall(user: UserState, n: int) -> IdArray:
        lists = [np.asarray(channels[c](user, max(fusion.depth, n)), dtype=np.int64) for c in fusion.names]
        return fusion.merge(lists, user, n)[0]

    return recall


def evaluate_merge(users: Sequence[UserState], relevant: Sequence[IdArray], channel: Channel, k: int = 100, *,
                   rank: Ranker | None = None, candidates: int = 800, top: int = 10) -> tuple[float, float | None]:
    """(mean Recall@``k``, with ``rank`` the mean NDCG@``top`` of the first ``candidates`` ranked by it) of one
    merged channel over the users with a relevant movie (:func:`choose_fusion`'s figures, computed exactly)."""
    recall, ndcg = [], []
    for i, (user, rel) in enumerate(zip(users, relevant, strict=True)):
        rel = np.unique(np.asarray(rel, dtype=np.int64))
        if not rel.size:
            continue
        ids = np.asarray(channel(user, max(k, candidates) if rank is not None else k), dtype=np.int64)
        recall.append(np.isin(ids[:k], rel).sum() / rel.size)
        if rank is not None:
            first = ids[:candidates]
            ranked = first[np.argsort(-np.asarray(rank(i, first), dtype=np.float64), kind="stable")[:top]]
            ndcg.append(hits_ndcg(np.isin(ranked, rel), rel.size, top))
    return (float(np.mean(recall)) if recall else float("nan"),
            (float(np.mean(ndcg)) if ndcg else float("nan")) if rank is not None else None)


def _per_user(lists: list[IdArray], rel: IdArray, model: NDArray[np.float64] | None,
              weights: NDArray[np.float64], ks: Sequence[float], k: int, candidates: int, top: int,
              tail: IdArray | None = None) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(K, G) Recall@k and (K, G) NDCG@top of one user for every rank offset of ``ks`` and weight column of
    ``weights`` (C, G), by one matrix product per offset (ties by score only: a choice's figures are then
    recomputed exactly by :func:`evaluate_merge`). With ``tail`` (the quota tail's merged ids), only the first
    ``k`` are fused and the ``candidates`` ranked are those and the tail's first ``candidates - k``."""
    union = np.unique(np.concatenate(lists)) if lists else np.zeros(0, dtype=np.int64)
    ranks = np.full((union.size, len(lists)), np.inf)                            # (U, C)
    for j, x in enumerate(lists):
        ranks[np.searchsorted(union, x), j] = np.arange(len(x))
    hit = np.isin(union, rel)
    recall = np.zeros((len(ks), weights.shape[1]))
    ndcg = np.zeros((len(ks), weights.shape[1]))
    if union.size == 0:
        return recall, ndcg
    m = min(max(k, candidates), union.size)
    discount = 1.0 / np.log2(np.arange(2, top + 2))
    ideal = discount[:min(rel.size, top)].sum()
    kth = sorted({min(k, union.size) - 1, m - 1})
    for a, offset in enumerate(ks):
        scores = np.where(np.isfinite(ranks), 1.0 / (offset + ranks + 1.0), 0.0) @ weights      # (U, G)
        part = np.argpartition(-scores, kth, axis=0)             # rows [:k]: the top k, rows [:m]: the top m
        recall[a] = hit[part[:k]].sum(axis=0) / rel.size
        if model is not None and tail is not None:   # the model's top of the fused k, then of the tail's
            first = part[:min(k, union.size)]                                                      # (k, G)
            n_top = min(top, first.shape[0])
            best = np.take_along_axis(first, np.argpartition(-model[first], n_top - 1, axis=0)[:n_top], 0)
            rest = np.searchsorted(union, tail[:max(candidates - k, 0)])
            rest = rest[np.argsort(-model[rest], kind="stable")[:top]]                              # (<= top,)
            both = np.concatenate([best, np.broadcast_to(rest[:, None], (rest.size, best.shape[1]))])
            score = model[both]
            score[n_top:][(first[:, None, :] == rest[None, :, None]).any(axis=0)] = -np.inf   # in the head already
            best = np.take_along_axis(both, np.argsort(-score, axis=0, kind="stable")[:top], 0)
            ndcg[a] = (hit[best] * discount[:best.shape[0], None]).sum(axis=0) / ideal
        elif model is not None:
            first = part[:m]                                                                       # (m, G)
            by_model = -model[first]
            n_top = min(top, m)
            best = np.take_along_axis(first, np.argpartition(by_model, n_top - 1, axis=0)[:n_top], 0)
            best = np.take_along_axis(best, np.argsort(-model[best], axis=0, kind="stable"), 0)  # (top, G)
            ndcg[a] = (hit[best] * discount[:n_top, None]).sum(axis=0) / ideal
    return recall, ndcg


def choose_fusion(users: Sequence[UserState], relevant: Sequence[IdArray], channels: Mapping[str, Channel],
                  k: int = 100, grid: Sequence[float] = FUSION_GRID, ks: Sequence[float] = FUSION_KS, *,
                  rank: Ranker | None = None, candidates: int = 800, top: int = 10, floor: float | None = None,
                  tail: Mapping[str, float] | None = None) -> Fusion:
    """The :class:`Fusion` (rank offset from ``ks``; warm and cold weights, each vector from ``grid``, chosen
    separately) with the best mean Recall@``k`` over ``users`` (use the VALIDATION split); with ``rank`` and
    ``floor``, the best among those whose end-to-end NDCG@``top`` (the first ``candidates`` ranked by
    ``rank``, over all users) is at least ``floor`` (none: the best NDCG). Ties: earlier offset, earlier grid
    weights. Each channel is asked once per user for ``candidates`` movies (the fusion's ``depth``). With
    ``tail`` (channel -> quota weight, e.g. the quota merge's chosen under the floor), only the first ``k`` are
    fused (the fusion's ``head``) and the rest come by ``tail``, judged by the same rules.

    Example:
        >>> from deepcrossing.training.retrieval import Prior, popularity_channel
        >>> none = np.zeros(0, dtype=np.int64)
        >>> good, bad = popularity_channel(Prior(np.array([3, 1, 2]))), popularity_channel(Prior(np.array([1, 2, 3])))
        >>> f = choose_fusion([UserState(1, none, none, ())], [np.array([3])], {"bad": bad, "good": good}, k=1,
        ...                   candidates=3)
        >>> f.cold_weights["good"] > f.cold_weights["bad"], f.depth
        (True, 3)
    """
    names = list(channels)
    columns = weight_grid(names, grid)
    weights = np.array(columns, dtype=np.float64).T                               # (C, G)
    n_users, warm_sums, cold_sums = 0, [np.zeros((len(ks), len(columns))) for _ in range(2)], \
        [np.zeros((len(ks), len(columns))) for _ in range(2)]
    for i, (user, rel) in enumerate(zip(users, relevant, strict=True)):
        rel = np.unique(np.asarray(rel, dtype=np.int64))
        if not rel.size:
            continue
        n_users += 1
        lists = [np.asarray(channels[c](user, max(k, candidates)), dtype=np.int64) for c in names]
        union = np.unique(np.concatenate(lists))
        model = None if rank is None else np.asarray(rank(i, union), dtype=np.float64)
        quota = None if tail is None else merge_lists([x[:candidates] for x in lists],
                                                      [float(tail.get(c, 0.0)) for c in names], candidates)[0]
        r, e = _per_user(lists, rel, model, weights, ks, k, candidates, top, quota)
        sums = warm_sums if user.recent_positives.size else cold_sums
        sums[0] += r
        sums[1] += e
    best: tuple[tuple[float, float], int, int, int] = ((-1.0, -1.0), 0, 0, 0)
    for a in range(len(ks)):
        (wr, we), (cr, ce) = (s[a] for s in warm_sums), (s[a] for s in cold_sums)
        recall = (wr[:, None] + cr[None, :]) / max(n_users, 1)                       # (G warm, G cold)
        ndcg = (we[:, None] + ce[None, :]) / max(n_users, 1)
        if rank is None or floor is None:
            key = recall if rank is None else ndcg
            flat = int(np.argmax(key))
            score = (0.0, float(key.flat[flat]))
        else:
            ok = ndcg >= floor - 1e-12
            key = np.where(ok, recall, -1.0) if ok.any() else ndcg
            flat = int(np.argmax(key))
            score = (1.0 if ok.any() else 0.0, float(key.flat[flat]))
        if score > best[0]:
            row, col = np.unravel_index(flat, recall.shape)
            best = (score, a, int(row), int(col))
    _, a, w, c = best
    return Fusion({n: float(x) for n, x in zip(names, columns[w], strict=True)},
                  {n: float(x) for n, x in zip(names, columns[c], strict=True)}, float(ks[a]), int(candidates),
                  k if tail is not None else 0, {n: float(w) for n, w in (tail or {}).items()})
