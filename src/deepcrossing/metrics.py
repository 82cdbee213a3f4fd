"""Evaluation metrics: pure functions, no state, with their edge cases written down.

Every function takes 1-D arrays of the same length N (one entry per sample) and returns Python floats
(or a :class:`GroupedMetric` for per-group metrics). The global metrics (AUC, log loss, average precision)
are scikit-learn's, behind the checks and edge cases below. The per-group metrics (GAUC, NDCG@k, Recall@k,
HitRate@k), which scikit-learn has not in vectorised form, never loop over rows or groups in Python: they
sort once (``np.lexsort`` by group, then score) and reduce with ``np.bincount``; the tests check them
against a plain per-user Python reference.

Conventions shared by all functions:

* ``labels`` are binary: 0/1 integers, floats equal to 0.0/1.0, or booleans. Anything else raises
  :class:`ValueError` (a label of 0.7 is a bug upstream, not something to round silently).
* ``scores``/``probs`` must be finite; NaN or infinite values raise :class:`ValueError` with a count.
* Arrays of different lengths raise :class:`ValueError`.
* A metric that is undefined for its input (AUC with one class only, average precision with no positives,
  an empty input) returns ``nan`` instead of raising, so that a report can still be printed; the docstring
  of each function says when.

Example:
    >>> import numpy as np
    >>> y = np.array([0, 0, 1, 1]); s = np.array([0.1, 0.4, 0.35, 0.8])
    >>> auc(y, s)
    0.75
    >>> round(logloss(y, s), 4)
    0.4723
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

__all__ = ["GroupedMetric", "auc", "logloss", "accuracy", "pr_auc", "gauc", "ndcg_at_k", "recall_at_k",
           "hit_rate_at_k"]

_Array = NDArray[Any]


class GroupedMetric(NamedTuple):
    """A metric averaged over groups (users), with how many groups counted and how many were skipped.

    It unpacks like a tuple: ``value, used, skipped = gauc(...)``.
    """

    value: float
    n_groups_used: int
    n_groups_skipped: int


# ---------------------------------------------------------------------------------------------- checks


def _labels(labels: ArrayLike) -> NDArray[np.bool_]:
    """(N,) binary labels -> (N,) bool; raises ValueError for anything that is not 0/1."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if y.dtype == bool:
        return y
    if y.dtype.kind not in "iuf":
        raise ValueError(f"labels must be numeric 0/1 or bool, got dtype {y.dtype}")
    bad = ~((y == 0) | (y == 1))
    if bad.any():
        first = y[np.flatnonzero(bad)[0]]
        raise ValueError(f"labels must be 0 or 1; {int(bad.sum())} values are not (first: {first!r})")
    out: NDArray[np.bool_] = y == 1
    return out


def _scores(scores: ArrayLike, n: int, name: str = "scores") -> NDArray[np.float64]:
    """(N,) finite float64 scores; raises ValueError on shape mismatch or NaN/inf."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {s.shape}")
    if s.shape[0] != n:
        raise ValueError(f"labels and {name} differ in length: {n} vs {s.shape[0]}")
    bad = ~np.isfinite(s)
    if bad.any():
        raise ValueError(f"{name} contain {int(bad.sum())} NaN or infinite values")
    return s


def _groups(groups: ArrayLike, n: int) -> NDArray[Any]:
    g = np.asarray(groups)
    if g.ndim != 1:
        raise ValueError(f"groups must be 1-D, got shape {g.shape}")
    if g.shape[0] != n:
        raise ValueError(f"labels and groups differ in length: {n} vs {g.shape[0]}")
    return g


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


# ------------------------------------------------------------------------------------- global metrics


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve: the probability that a random positive outscores a random negative.

    ``sklearn.metrics.roc_auc_score``: a tied positive/negative pair counts one half. O(N log N).

    Args:
        labels: (N,) binary labels (0/1 or bool).
        scores: (N,) finite scores; any monotone transform (logits or probabilities) gives the same AUC.

    Returns:
        The AUC in [0, 1]. ``nan`` when there is only one class (no positives or no negatives) or N == 0:
        the AUC is undefined there (scikit-learn raises instead).

    Example:
        >>> auc([0, 1, 0, 1], [0.2, 0.2, 0.1, 0.9])   # one tied pair counts 1/2: (1 + 0.5 + 1 + 1) / 4
        0.875
    """
    y = _labels(labels)
    s = _scores(scores, y.shape[0])
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float(roc_auc_score(y, s))


def logloss(labels: ArrayLike, probs: ArrayLike, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy, ``-mean(y log p + (1 - y) log(1 - p))``, natural log (``sklearn.metrics.log_loss``).

    Probabilities are clipped to ``[eps, 1 - eps]`` first, so a confident wrong prediction costs at most
    ``-log(eps)`` (about 16.1 for the default) instead of infinity.

    Args:
        labels: (N,) binary labels.
        probs: (N,) predicted probabilities of the positive class (apply a sigmoid to logits first);
            values outside [0, 1] raise ValueError.
        eps: clipping bound, 0 < eps < 0.5.

    Returns:
        The mean log loss; ``nan`` for N == 0.

    Example:
        >>> round(logloss([1, 0], [0.9, 0.2]), 6)       # -(log 0.9 + log 0.8) / 2
        0.164252
    """
    y = _labels(labels)
    p = _scores(probs, y.shape[0], "probs")
    if not 0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    if y.shape[0] == 0:
        return float("nan")
    if (p < 0).any() or (p > 1).any():
        raise ValueError("probs must lie in [0, 1]; pass probabilities, not logits")
    return float(log_loss(y, np.clip(p, eps, 1.0 - eps), labels=[False, True]))


def accuracy(labels: ArrayLike, probs: ArrayLike, threshold: float = 0.5) -> float:
    """Fraction of samples whose predicted class matches the label; predicted positive iff ``p >= threshold``.

    Args:
        labels: (N,) binary labels.
        probs: (N,) probabilities (or any score, with a threshold on its scale).
        threshold: the decision boundary; a score exactly at it is predicted positive.

    Returns:
        Accuracy in [0, 1]; ``nan`` for N == 0.

    Example:
        >>> accuracy([1, 0, 1, 0], [0.5, 0.49, 0.2, 0.7])
        0.5
    """
    y = _labels(labels)
    p = _scores(probs, y.shape[0], "probs")
    if y.shape[0] == 0:
        return float("nan")
    return float(np.mean((p >= threshold) == y))


def pr_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Average precision: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds, high to low.

    ``sklearn.metrics.average_precision_score``: step-wise (not trapezoidal); tied scores form one
    threshold, so their order does not matter.

    Args:
        labels: (N,) binary labels.
        scores: (N,) finite scores, higher meaning more likely positive.

    Returns:
        Average precision in [0, 1]; ``nan`` when there are no positives (recall is undefined) or N == 0.

    Example:
        >>> round(pr_auc([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]), 6)   # (1/2)*1 + (1/2)*(2/3)
        0.833333
    """
    y = _labels(labels)
    s = _scores(scores, y.shape[0])
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    return float(average_precision_score(y, s))


# ----------------------------------------------------------------------------------- grouped metrics


def _group_sort(groups: _Array, scores: _Array, descending: bool) -> tuple[_Array, _Array, _Array, _Array]:
    """Sort rows by group, then score; ties keep input order (``np.lexsort`` is stable).

    Returns ``(order, group_id, starts, sizes)``: ``order`` (N,) row permutation; ``group_id`` (N,) dense
    group index of each sorted row; ``starts``/``sizes`` (G,) first sorted position and row count per group.
    """
    key = -scores if descending else scores
    order = np.lexsort((key, groups))
    g_sorted = groups[order]
    n = g_sorted.shape[0]
    new = np.empty(n, dtype=bool)
    new[:1] = True
    new[1:] = g_sorted[1:] != g_sorted[:-1]
    group_id = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    sizes = np.diff(np.r_[starts, n])
    return order, group_id, starts, sizes


def gauc(groups: ArrayLike, labels: ArrayLike, scores: ArrayLike) -> GroupedMetric:
    """Group AUC: the AUC within each group (user), averaged with weights = the group's sample count.

    ``GAUC = sum_g n_g AUC_g / sum_g n_g`` over the groups that have both a positive and a negative.
    Groups with one class only (all positive or all negative, including single-row groups) have no AUC:
    they are skipped and counted in ``n_groups_skipped``. Ties within a group count one half, as in
    :func:`auc`. Fully vectorized: one lexsort by (group, score), tie ranks per (group, score) block.

    Args:
        groups: (N,) group keys (user ids; any sortable dtype).
        labels: (N,) binary labels.
        scores: (N,) finite scores.

    Returns:
        ``GroupedMetric(value, n_groups_used, n_groups_skipped)``; value is ``nan`` when no group is used.

    Example:
        >>> gauc([1, 1, 1, 2, 2, 3], [1, 0, 0, 1, 0, 1], [0.9, 0.5, 0.95, 0.1, 0.2, 0.3])
        GroupedMetric(value=0.3, n_groups_used=2, n_groups_skipped=1)
    """
    y = _labels(labels)
    s = _scores(scores, y.shape[0])
    g = _groups(groups, y.shape[0])
    n = y.shape[0]
    if n == 0:
        return GroupedMetric(float("nan"), 0, 0)
    order, gid, starts, sizes = _group_sort(g, s, descending=False)
    s_sorted, y_sorted = s[order], y[order]
    # Tie blocks: runs of equal score inside one group.
    new = np.empty(n, dtype=bool)
    new[:1] = True
    new[1:] = (s_sorted[1:] != s_sorted[:-1]) | (gid[1:] != gid[:-1])
    b_start = np.flatnonzero(new)
    b_end = np.r_[b_start[1:], n]
    local_start = b_start - starts[gid[b_start]]            # block start, 0-based within its group
    avg_rank = local_start + (b_end - b_start + 1) / 2.0    # mean of 1-based ranks in the block
    ranks = np.repeat(avg_rank, b_end - b_start)            # (N,) within-group average ranks
    n_groups = starts.shape[0]
    n_pos = np.bincount(gid, weights=y_sorted, minlength=n_groups)
    n_neg = sizes - n_pos
    rank_sum = np.bincount(gid, weights=np.where(y_sorted, ranks, 0.0), minlength=n_groups)
    used = (n_pos > 0) & (n_neg > 0)
    n_used = int(used.sum())
    if n_used == 0:
        return GroupedMetric(float("nan"), 0, n_groups)
    u = rank_sum[used] - n_pos[used] * (n_pos[used] + 1) / 2.0
    group_auc = u / (n_pos[used] * n_neg[used])
    w = sizes[used]
    return GroupedMetric(float(np.sum(w * group_auc) / np.sum(w)), n_used, n_groups - n_used)


def _ranked(
    groups: ArrayLike, labels: ArrayLike, scores: ArrayLike, k: Any
) -> tuple[_Array, _Array, _Array, _Array, _Array, _Array, int]:
    """Shared set-up of the top-k metrics: validate, sort by (group, score desc), count hits.

    Returns ``(hits, n_pos, sizes, pos, y_sorted, gid, k)``: per group (G,) the positives among its top
    ``min(k, n_rows)`` rows, its positives and its rows; per sorted row (N,) the 0-based rank within the
    group, the label and the dense group index; and the validated k.
    """
    y = _labels(labels)
    s = _scores(scores, y.shape[0])
    g = _groups(groups, y.shape[0])
    k = _check_k(k)
    order, gid, starts, sizes = _group_sort(g, s, descending=True)
    # a cut-off past the largest group changes nothing (each group uses min(k, n_rows)); clipping it keeps the
    # (k,) discount of NDCG from allocating k floats for `--k 1000000000000`
    k = min(k, int(sizes.max(initial=1)))
    y_sorted = y[order]
    pos = np.arange(y.shape[0]) - starts[gid]                # (N,) 0-based rank within group
    in_top = pos < k
    n_groups = starts.shape[0]
    hits = np.bincount(gid, weights=(y_sorted & in_top).astype(np.float64), minlength=n_groups)
    n_pos = np.bincount(gid, weights=y_sorted.astype(np.float64), minlength=n_groups)
    return hits, n_pos, sizes, pos, y_sorted, gid, k


_RANKING_RULES = """
    Rules shared by :func:`ndcg_at_k`, :func:`recall_at_k` and :func:`hit_rate_at_k`:

    * Each group (user) ranks its own rows (their test items) by score, highest first.
    * Relevant = rows with label 1 (binary relevance).
    * Groups without any positive are skipped (nothing to find) and counted in ``n_groups_skipped``.
    * A group with fewer than ``k`` rows uses all of them: the cut-off is ``min(k, n_rows)``.
    * Tied scores keep the input row order (a stable sort), so the result is deterministic; if the input
      order could favour positives, shuffle or sort it by a neutral key first.
    * The value is the unweighted mean over the used groups (each user counts once); ``nan`` if none.
"""


def ndcg_at_k(groups: ArrayLike, labels: ArrayLike, scores: ArrayLike, k: int = 10) -> GroupedMetric:
    """Mean over users of NDCG@k with binary gains: ``DCG@k / IDCG@k``.

    ``DCG@k = sum_{i < min(k, n)} y_i / log2(i + 2)`` over the user's rows ranked by score (i is the
    0-based rank); ``IDCG@k`` is the DCG of the ideal order, ``sum_{i < min(k, n_pos)} 1 / log2(i + 2)``.
    Equals ``sklearn.metrics.ndcg_score([y], [s], k=k)`` per user when the scores have no ties.
    {rules}
    Args:
        groups: (N,) user ids. labels: (N,) binary labels. scores: (N,) finite scores. k: cut-off >= 1.

    Returns:
        ``GroupedMetric(value, n_groups_used, n_groups_skipped)``.

    Example:
        >>> ndcg_at_k([7, 7, 7, 8, 8], [0, 1, 0, 0, 0], [0.9, 0.8, 0.1, 0.5, 0.4], k=2)  # 1/log2(3)
        GroupedMetric(value=0.6309297535714575, n_groups_used=1, n_groups_skipped=1)
    """
    hits, n_pos, sizes, pos, y_sorted, gid, k = _ranked(groups, labels, scores, k)
    n_groups = sizes.shape[0]
    discount = 1.0 / np.log2(np.arange(2, k + 2))            # (k,) 1/log2(i+2), i = 0..k-1
    in_top = pos < k
    gain = np.where(y_sorted & in_top, discount[np.minimum(pos, k - 1)], 0.0)
    dcg = np.bincount(gid, weights=gain, minlength=n_groups)
    ideal_cum = np.r_[0.0, np.cumsum(discount)]              # (k+1,) IDCG for 0..k positives
    idcg = ideal_cum[np.minimum(n_pos, k).astype(np.int64)]
    used = n_pos > 0
    return _mean_over(dcg[used] / idcg[used], n_groups)


def recall_at_k(groups: ArrayLike, labels: ArrayLike, scores: ArrayLike, k: int = 10) -> GroupedMetric:
    """Mean over users of Recall@k: (positives in the top ``min(k, n)``) / (all the user's positives).

    A user with more than ``k`` positives cannot reach 1.0; that is the usual definition (not divided
    by ``min(k, n_pos)``).
    {rules}
    Args:
        groups: (N,) user ids. labels: (N,) binary labels. scores: (N,) finite scores. k: cut-off >= 1.

    Returns:
        ``GroupedMetric(value, n_groups_used, n_groups_skipped)``.

    Example:
        >>> recall_at_k([1, 1, 1, 1], [1, 0, 1, 0], [0.9, 0.8, 0.1, 0.5], k=2)
        GroupedMetric(value=0.5, n_groups_used=1, n_groups_skipped=0)
    """
    hits, n_pos, sizes, *_ = _ranked(groups, labels, scores, k)
    used = n_pos > 0
    return _mean_over(hits[used] / n_pos[used], sizes.shape[0])


def hit_rate_at_k(groups: ArrayLike, labels: ArrayLike, scores: ArrayLike, k: int = 10) -> GroupedMetric:
    """Fraction of users with at least one positive among their top ``min(k, n)`` rows.
    {rules}
    Args:
        groups: (N,) user ids. labels: (N,) binary labels. scores: (N,) finite scores. k: cut-off >= 1.

    Returns:
        ``GroupedMetric(value, n_groups_used, n_groups_skipped)``.

    Example:
        >>> hit_rate_at_k([1, 1, 2, 2], [1, 0, 0, 1], [0.9, 0.1, 0.8, 0.2], k=1)
        GroupedMetric(value=0.5, n_groups_used=2, n_groups_skipped=0)
    """
    hits, n_pos, sizes, *_ = _ranked(groups, labels, scores, k)
    used = n_pos > 0
    return _mean_over((hits[used] > 0).astype(np.float64), sizes.shape[0])


def _mean_over(per_group: NDArray[np.float64], n_groups: int) -> GroupedMetric:
    n_used = int(per_group.shape[0])
    value = float(per_group.mean()) if n_used else float("nan")
    return GroupedMetric(value, n_used, n_groups - n_used)


for _fn in (ndcg_at_k, recall_at_k, hit_rate_at_k):
    if _fn.__doc__:  # None under python -OO
        _fn.__doc__ = _fn.__doc__.replace("{rules}", _RANKING_RULES)
del _fn
