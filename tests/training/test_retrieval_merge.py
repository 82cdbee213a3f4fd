"""The quota merge's choice on validation: the all-weightings-at-once evaluation (``_grid_user``) gives the
per-weighting merges' figures (``_loop_user``, ``merge_lists``) bit for bit, and falls back where it cannot."""

from __future__ import annotations

import numpy as np
import pytest
from dc_synthetic import overlapping_lists

from deepcrossing.training.retrieval import UserState
from deepcrossing.training.retrieval_merge import _grid_user, _loop_user, _user_figures, choose_merge, weight_grid

GRIDS = [(0, 1, 2, 4), (0.0, 0.25, 0.5, 1.0, 2.0)]


def _case(rng: np.random.Generator, n_lists: int, catalogue: int, length: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Ranked lists drawn from a small catalogue (so they overlap, and quota keys tie), some shorter or empty."""
    lists = []
    for _ in range(n_lists):
        size = int(rng.choice([0, length // 3, length])) if rng.random() < 0.3 else length
        lists.append(rng.permutation(catalogue)[:size].astype(np.int64))
    relevant = np.unique(rng.choice(catalogue, size=int(rng.integers(1, 12)), replace=False)).astype(np.int64)
    return lists, relevant


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("with_tail", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_grid_evaluation_is_the_per_weighting_merge_bit_for_bit(seed: int, with_tail: bool, ties: bool) -> None:
    """Overlapping lists (quota keys tie), short and empty lists, a head and tail; with ``ties``, a ranker of
    few distinct scores (and -inf for some movies): the merge's order then breaks them."""
    rng = np.random.default_rng(seed)
    n_lists = int(rng.integers(2, 5))
    catalogue, length = int(rng.integers(30, 400)), int(rng.integers(10, 120))
    lists, relevant = _case(rng, n_lists, catalogue, length)
    grid = GRIDS[seed % 2]
    columns = weight_grid([str(c) for c in range(n_lists)], grid)
    table = np.array(columns, dtype=np.float64)
    k, candidates, top = int(rng.integers(5, 40)), int(rng.integers(40, 150)), 10
    if ties:
        scores = rng.integers(0, 6, size=catalogue).astype(np.float64)
        scores[rng.random(catalogue) < 0.2] = -np.inf
    else:
        scores = rng.permutation(catalogue).astype(np.float64) / 7.0
    tail = [float(x) for x in rng.choice(grid, size=n_lists)] if with_tail else None
    if tail is not None and not any(tail):
        tail[0] = 1.0
    n = max(k, candidates)
    for score in (None, scores):
        m = n if score is not None else k
        want = _loop_user(lists, columns, relevant, relevant.size, k, m, score, candidates, top, tail)
        got = _user_figures(lists, columns, table, relevant, relevant.size, k, m, score, candidates, top, tail)
        assert np.array_equal(got[0], want[0])
        assert (got[1] is None) == (score is None)
        if score is not None:
            assert np.array_equal(got[1], want[1])
        fast = _grid_user(lists, table, relevant, relevant.size, k, score, candidates, top, tail)
        if not any(x.size for x in lists):
            assert fast is None
        elif score is not None:    # the weightings it redoes are those with tied scores only
            assert fast is not None and (ties or fast[2].size == 0)


def test_nan_scores_go_to_the_per_weighting_merge() -> None:
    lists = [np.arange(30, dtype=np.int64), np.arange(29, -1, -1, dtype=np.int64)]
    table = np.array(weight_grid(["a", "b"], (0, 1, 2)), dtype=np.float64)
    scores = np.arange(30.0)
    assert _grid_user(lists, table, np.array([7]), 1, 5, scores, 20, 10, None) is not None
    scores[3] = np.nan
    assert _grid_user(lists, table, np.array([7]), 1, 5, scores, 20, 10, None) is None


def test_choose_merge_falls_back_and_still_picks_the_best() -> None:
    """A ranker giving most candidates one score: choose_merge loops for that user and keeps its rule."""
    from deepcrossing.training.retrieval import Prior, popularity_channel

    none = np.zeros(0, dtype=np.int64)
    good = popularity_channel(Prior(np.array([3, 1, 2] + list(range(4, 40)))))
    bad = popularity_channel(Prior(np.array([1, 2, 3] + list(range(4, 40)))))
    flat = lambda i, ids: np.where(ids == 3, 1.0, 0.0)        # noqa: E731  only movie 3 stands out
    weights, ndcg = choose_merge([UserState(1, none, none, ())], [np.array([3])], {"bad": bad, "good": good}, k=1,
                                 rank=flat, candidates=12, top=10)
    assert weights == {"bad": 0.0, "good": 1.0} and ndcg == 1.0


def _merge_by_sorting(lists, weights, n):
    """The quota rule as first written (every key sorted, then each id's first): the reference."""
    on = [j for j, w in enumerate(weights) if w > 0]
    if not on:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    keys = np.concatenate([(np.arange(len(lists[j])) + 1) / float(weights[j]) for j in on])
    source = np.concatenate([np.full(len(lists[j]), j, dtype=np.int64) for j in on])
    flat = np.concatenate([np.asarray(lists[j], dtype=np.int64) for j in on])
    order = np.lexsort((source, keys))
    flat, source = flat[order], source[order]
    _, first = np.unique(flat, return_index=True)
    first = np.sort(first)[:n]
    return flat[first], source[first]


@pytest.mark.parametrize("seed", range(20))
def test_merge_lists_is_the_sorting_reference(seed: int) -> None:
    """Overlapping lists, weights whose keys tie (1 and 2, 0.5 and 0.25), a movie twice in one list, empty
    lists, n below and above the union: the same ids, order and sources, with and without a head."""
    from deepcrossing.training.retrieval_merge import head_then_rest, merge_lists

    rng = np.random.default_rng(seed)
    lists = overlapping_lists(rng, 5)
    weights = [float(w) for w in rng.choice([0.0, 0.25, 0.5, 1.0, 2.0, 4.0], size=len(lists))]
    head = [float(w) for w in rng.choice([0.0, 1.0, 2.0], size=len(lists))]
    for n in (1, 9, 60, 10_000):
        got, want = merge_lists(lists, weights, n), _merge_by_sorting(lists, weights, n)
        assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()
        if any(head):
            got = merge_lists(lists, weights, n, head=5, head_weights=head)
            want = head_then_rest(_merge_by_sorting(lists, head, min(5, n)), _merge_by_sorting(lists, weights, n), n)
            assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()
