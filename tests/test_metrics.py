"""Metrics against scikit-learn and against hand computations, with ties and one-class groups."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, log_loss, ndcg_score, roc_auc_score

from deepcrossing import metrics as M


def _random_case(seed: int, n: int = 2000, tie_levels: int | None = None):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(np.int64)
    s = rng.normal(size=n) + 0.8 * y
    if tie_levels is not None:                     # heavy ties: a handful of distinct scores
        s = np.round(s * tie_levels) / tie_levels
    return y, s


# ----------------------------------------------------------------------------------------------- auc


@pytest.mark.parametrize("tie_levels", [None, 1, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_auc_matches_sklearn_with_and_without_ties(seed, tie_levels):
    y, s = _random_case(seed, tie_levels=tie_levels)
    assert M.auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_hand_computed_ties_get_half_credit():
    # pairs (pos, neg): (0.2 vs 0.2) tie -> 0.5, (0.2 vs 0.1) -> 1, (0.9 vs 0.2) -> 1, (0.9 vs 0.1) -> 1
    assert M.auc([0, 1, 0, 1], [0.2, 0.2, 0.1, 0.9]) == 0.875
    assert M.auc([1, 0], [0.5, 0.5]) == 0.5
    assert M.auc([1, 0, 1, 0], [4, 3, 2, 1]) == 0.75
    assert M.auc(np.array([True, False]), [1.0, 0.0]) == 1.0


def test_auc_one_class_or_empty_is_nan():
    assert math.isnan(M.auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(M.auc([0, 0], [0.1, 0.2]))
    assert math.isnan(M.auc([], []))


def test_bad_inputs_raise_with_a_reason():
    with pytest.raises(ValueError, match="0 or 1"):
        M.auc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="differ in length"):
        M.auc([0, 1], [0.1])
    with pytest.raises(ValueError, match="1 NaN"):
        M.auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="probs must lie"):
        M.logloss([0, 1], [-2.0, 3.0])
    with pytest.raises(ValueError, match="k must be"):
        M.ndcg_at_k([1, 1], [0, 1], [0.1, 0.2], k=0)
    with pytest.raises(ValueError, match="groups differ"):
        M.gauc([1], [0, 1], [0.1, 0.2])


# --------------------------------------------------------------------------------- logloss, accuracy


def test_logloss_matches_sklearn_and_clips():
    rng = np.random.default_rng(3)
    y = (rng.random(500) < 0.5).astype(int)
    p = rng.uniform(0.01, 0.99, 500)
    assert M.logloss(y, p) == pytest.approx(log_loss(y, p), rel=1e-12)
    assert M.logloss([1, 0], [0.9, 0.2]) == pytest.approx(-(math.log(0.9) + math.log(0.8)) / 2, rel=1e-12)
    # a confident mistake is capped at -log(eps)
    assert M.logloss([1], [0.0]) == pytest.approx(-math.log(1e-7), rel=1e-9)
    assert M.logloss([0], [1.0], eps=1e-3) == pytest.approx(-math.log(1e-3), rel=1e-9)


def test_accuracy_threshold_inclusive():
    assert M.accuracy([1, 0, 1, 0], [0.5, 0.49, 0.2, 0.7]) == 0.5
    assert M.accuracy([1, 0], [0.3, 0.1], threshold=0.3) == 1.0
    assert math.isnan(M.accuracy([], []))


# -------------------------------------------------------------------------------------------- pr_auc


@pytest.mark.parametrize("tie_levels", [None, 1, 3])
def test_pr_auc_matches_sklearn_average_precision(tie_levels):
    y, s = _random_case(5, tie_levels=tie_levels)
    assert M.pr_auc(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_pr_auc_hand_computed_and_no_positive():
    assert M.pr_auc([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # all tied: a single threshold, precision = base rate
    assert M.pr_auc([1, 0, 0, 0], [1, 1, 1, 1]) == 0.25
    assert math.isnan(M.pr_auc([0, 0], [0.1, 0.2]))


# ---------------------------------------------------------------------------------------------- gauc


def _grouped_case(seed: int, n_users: int = 60, tie_levels: int | None = None):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 25, n_users)
    groups = np.repeat(rng.permutation(np.arange(1000, 1000 + n_users)), sizes)
    n = groups.shape[0]
    p_user = rng.uniform(0, 1, n_users).repeat(sizes)        # some users end up one-class
    y = (rng.random(n) < p_user).astype(np.int64)
    s = rng.normal(size=n) + y
    if tie_levels is not None:
        s = np.round(s * tie_levels) / tie_levels
    shuffle = rng.permutation(n)                              # groups interleaved, not contiguous
    return groups[shuffle], y[shuffle], s[shuffle]


@pytest.mark.parametrize("tie_levels", [None, 2])
def test_gauc_equals_sample_weighted_sklearn_auc_per_user(tie_levels):
    g, y, s = _grouped_case(7, tie_levels=tie_levels)
    num = den = 0.0
    used = skipped = 0
    for user in np.unique(g):
        m = g == user
        if y[m].min() == y[m].max():
            skipped += 1
            continue
        used += 1
        num += m.sum() * roc_auc_score(y[m], s[m])
        den += m.sum()
    value, n_used, n_skipped = M.gauc(g, y, s)
    assert (n_used, n_skipped) == (used, skipped)
    assert skipped > 0 and used > 10
    assert value == pytest.approx(num / den, abs=1e-12)


def test_gauc_hand_computed_and_all_skipped():
    r = M.gauc([1, 1, 1, 2, 2, 3], [1, 0, 0, 1, 0, 1], [0.9, 0.5, 0.95, 0.1, 0.2, 0.3])
    assert r == (pytest.approx(0.3), 2, 1)
    assert r.n_groups_used == 2 and r.n_groups_skipped == 1
    # ties between users do not leak into each other: user 2 tied -> 0.5, user 1 perfect -> 1.0
    assert M.gauc([1, 1, 2, 2], [1, 0, 1, 0], [0.5, 0.4, 0.5, 0.5]).value == pytest.approx(0.75)
    v, used, skipped = M.gauc([1, 2, 2], [1, 0, 0], [0.1, 0.2, 0.3])
    assert math.isnan(v) and (used, skipped) == (0, 2)


# ------------------------------------------------------------------------------------- top-k metrics


def _per_user_reference(g, y, s, k):
    """Slow per-user reference: sklearn's ndcg_score plus direct recall/hit computations."""
    ndcg, recall, hit = [], [], []
    for user in np.unique(g):
        m = g == user
        yu, su = y[m], s[m]
        if yu.sum() == 0:
            continue
        top = np.argsort(-su, kind="stable")[:k]
        recall.append(yu[top].sum() / yu.sum())
        hit.append(float(yu[top].sum() > 0))
        if m.sum() == 1:                          # sklearn refuses one-item lists; NDCG is 1 there
            ndcg.append(1.0)
        else:
            ndcg.append(ndcg_score(yu[None, :], su[None, :], k=k))
    return np.mean(ndcg), np.mean(recall), np.mean(hit), len(ndcg)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_ranking_metrics_match_sklearn_per_user(k):
    g, y, s = _grouped_case(11)                   # continuous scores: no ties, sklearn applies exactly
    n_users = np.unique(g).shape[0]
    ref_ndcg, ref_recall, ref_hit, n_used = _per_user_reference(g, y, s, k)
    for fn, ref in ((M.ndcg_at_k, ref_ndcg), (M.recall_at_k, ref_recall), (M.hit_rate_at_k, ref_hit)):
        value, used, skipped = fn(g, y, s, k=k)
        assert value == pytest.approx(ref, abs=1e-12), fn.__name__
        assert (used, skipped) == (n_used, n_users - n_used)
    assert n_users - n_used > 0                    # the case does contain users without positives


def test_ranking_metrics_hand_computed_short_lists_and_ties():
    # user 7: ranked [0.9 (neg), 0.8 (pos), 0.1 (neg)] -> at k=2 DCG = 1/log2(3), IDCG = 1
    # user 8: no positive -> skipped
    g, y, s = [7, 7, 7, 8, 8], [0, 1, 0, 0, 0], [0.9, 0.8, 0.1, 0.5, 0.4]
    assert M.ndcg_at_k(g, y, s, k=2) == (pytest.approx(1 / math.log2(3)), 1, 1)
    assert M.recall_at_k(g, y, s, k=2) == (1.0, 1, 1)
    assert M.hit_rate_at_k(g, y, s, k=1) == (0.0, 1, 1)
    # fewer items than k: the 2 items are all used; both positives found -> everything 1.0
    assert M.ndcg_at_k([1, 1], [1, 1], [0.2, 0.1], k=10) == (1.0, 1, 0)
    assert M.recall_at_k([1, 1, 1], [1, 0, 1], [0.2, 0.3, 0.1], k=10) == (1.0, 1, 0)
    # more positives than k: recall cannot reach 1, NDCG can
    assert M.recall_at_k([1, 1, 1], [1, 1, 1], [0.3, 0.2, 0.1], k=2).value == pytest.approx(2 / 3)
    assert M.ndcg_at_k([1, 1, 1], [1, 1, 1], [0.3, 0.2, 0.1], k=2).value == pytest.approx(1.0)
    # ties keep input order (stable): first row wins the single slot
    assert M.hit_rate_at_k([5, 5], [1, 0], [0.5, 0.5], k=1).value == 1.0
    assert M.hit_rate_at_k([5, 5], [0, 1], [0.5, 0.5], k=1).value == 0.0
    # graded position: positive at rank 3 of 4 with k=3 -> 1/log2(4) = 0.5
    assert M.ndcg_at_k([1] * 4, [0, 0, 1, 0], [0.9, 0.8, 0.7, 0.6], k=3).value == pytest.approx(0.5)


def test_ranking_metrics_are_order_invariant_without_ties():
    g, y, s = _grouped_case(13)
    perm = np.random.default_rng(0).permutation(g.shape[0])
    for fn in (M.ndcg_at_k, M.recall_at_k, M.hit_rate_at_k):
        assert fn(g, y, s) == fn(g[perm], y[perm], s[perm])
    assert M.gauc(g, y, s).value == pytest.approx(M.gauc(g[perm], y[perm], s[perm]).value, abs=1e-12)


def test_metrics_scale_vectorized():
    # 1M rows, 50k users: must be fast (no Python loop per row or per user)
    import time

    rng = np.random.default_rng(0)
    n = 1_000_000
    g = rng.integers(0, 50_000, n)
    y = (rng.random(n) < 0.5).astype(np.int8)
    s = rng.random(n)
    t0 = time.perf_counter()
    M.gauc(g, y, s)
    M.ndcg_at_k(g, y, s)
    M.auc(y, s)
    assert time.perf_counter() - t0 < 10.0       # typically ~1 s; generous for a shared 2-core CI box


# ------------------------------------------------------- vectorised per-group metrics vs a plain reference


def _plain_reference(g, y, s, k):
    """Slow plain-Python reference of GAUC, NDCG@k, Recall@k and HitRate@k: loops over users and pairs.

    Written straight from the definitions (pairwise AUC with half credit for ties; top-k by score with ties
    in input order), with no NumPy sorting and no scikit-learn, so it shares no code with the fast path.
    """
    rows: dict = {}
    for i, (user, label, score) in enumerate(zip(g.tolist(), y.tolist(), s.tolist())):
        rows.setdefault(user, []).append((score, i, label))
    gauc_num = gauc_den = 0.0
    gauc_used = 0
    ndcg, recall, hit = [], [], []
    for items in rows.values():
        pos = [sc for sc, _, lab in items if lab == 1]
        neg = [sc for sc, _, lab in items if lab == 0]
        if pos and neg:
            wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
            gauc_num += len(items) * wins / (len(pos) * len(neg))
            gauc_den += len(items)
            gauc_used += 1
        if not pos:
            continue
        ranked = sorted(items, key=lambda t: (-t[0], t[1]))[:k]   # score desc, then input order
        found = [lab for _, _, lab in ranked]
        dcg = sum(lab / math.log2(r + 2) for r, lab in enumerate(found))
        idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(pos))))
        ndcg.append(dcg / idcg)
        recall.append(sum(found) / len(pos))
        hit.append(1.0 if sum(found) else 0.0)
    n = len(rows)
    return {
        "gauc": (gauc_num / gauc_den if gauc_used else math.nan, gauc_used, n - gauc_used),
        "ndcg": (sum(ndcg) / len(ndcg), len(ndcg), n - len(ndcg)),
        "recall": (sum(recall) / len(recall), len(recall), n - len(recall)),
        "hit_rate": (sum(hit) / len(hit), len(hit), n - len(hit)),
    }


@pytest.mark.parametrize("k", [1, 2, 5, 30])
@pytest.mark.parametrize(("seed", "tie_levels"), [(21, None), (22, 1), (23, 2), (24, 8)])
def test_grouped_metrics_match_the_plain_reference(seed, tie_levels, k):
    g, y, s = _grouped_case(seed, n_users=80, tie_levels=tie_levels)
    ref = _plain_reference(g, y, s, k)
    fast = {"gauc": M.gauc(g, y, s), "ndcg": M.ndcg_at_k(g, y, s, k=k),
            "recall": M.recall_at_k(g, y, s, k=k), "hit_rate": M.hit_rate_at_k(g, y, s, k=k)}
    for name, (value, used, skipped) in ref.items():
        got = fast[name]
        assert (got.n_groups_used, got.n_groups_skipped) == (used, skipped), name
        assert got.value == pytest.approx(value, abs=1e-12), name
    assert ref["gauc"][2] > 0 and ref["ndcg"][2] > 0      # the cases do hold one-class and positive-less users


def test_global_metrics_keep_their_edge_cases_on_top_of_sklearn():
    # scikit-learn raises for one class; we return nan (documented), also for empty input
    assert math.isnan(M.pr_auc([], [])) and math.isnan(M.logloss([], []))
    # log loss of a one-class input is defined (sklearn needs the labels spelled out for it)
    assert M.logloss([1, 1], [0.5, 0.5]) == pytest.approx(math.log(2), rel=1e-12)
    assert M.logloss([0], [0.25]) == pytest.approx(-math.log(0.75), rel=1e-12)
    # plain pairwise AUC on a small case, written out
    y, s = [1, 0, 1, 0, 1], [0.3, 0.3, 0.9, 0.1, 0.05]
    pairs = [(p, n) for p, lp in zip(s, y) if lp for n, ln in zip(s, y) if not ln]
    assert M.auc(y, s) == pytest.approx(sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / 6)


def test_a_cut_off_beyond_every_user_equals_the_largest_user():
    """`evaluate --k 1000000000000` crashed with numpy's `_ArrayMemoryError: Unable to allocate 7.28 TiB`
    (NDCG's (k,) discount); a cut-off past the largest group means each group's n_rows, so the values are those
    of k = the largest group's size."""
    from deepcrossing.metrics import hit_rate_at_k, ndcg_at_k, recall_at_k

    groups, labels, scores = [7, 7, 7, 8, 8], [0, 1, 1, 1, 0], [0.9, 0.8, 0.1, 0.2, 0.4]
    for fn in (ndcg_at_k, recall_at_k, hit_rate_at_k):
        assert fn(groups, labels, scores, k=10**12) == fn(groups, labels, scores, k=3)
