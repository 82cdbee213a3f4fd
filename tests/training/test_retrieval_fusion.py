"""Score fusion of recall channels: the rule by hand (weighted reciprocal-rank fusion, warm/cold weights,
attribution, the fused head and the quota tail), its choice on hand-made users (by Recall@k, under an NDCG
floor), the fast choice's figures against the exact ones, and `train_recall`'s choice reading only the
validation split (the test file's labels flipped: the same merge)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dc_synthetic import overlapping_lists, prepared_small_release

from deepcrossing.errors import InputError
from deepcrossing.training.retrieval import Prior, UserState, popularity_channel
from deepcrossing.training.retrieval_fusion import Fusion, choose_fusion, evaluate_merge, fuse_lists, fusion_merge, \
    fusion_of

NONE = np.zeros(0, dtype=np.int64)
COLD = UserState(1, NONE, NONE, ())
WARM = UserState(2, NONE, np.array([99]), ())


def test_fuse_lists_by_hand() -> None:
    a, b, c = np.array([10, 20, 30]), np.array([30, 40]), np.array([40, 10, 50])
    ids, source = fuse_lists([a, b, c], [2.0, 1.0, 0.5], 10, k=1.0)
    # rank r adds w / (k + r + 1): 10: 2/2 + .5/3; 20: 2/3; 30: 2/4 + 1/2; 40: 1/3 + .5/2; 50: .5/4
    expected = {10: 1 + 0.5 / 3, 20: 2 / 3, 30: 1.0, 40: 1 / 3 + 0.25, 50: 0.125}
    assert ids.tolist() == sorted(expected, key=lambda m: -expected[m])               # [10, 30, 20, 40, 50]
    # the channel of the highest term: 30's terms are 2/4 (a) and 1/2 (b): a tie, the earlier list (a)
    assert dict(zip(ids.tolist(), source.tolist(), strict=True)) == {10: 0, 30: 0, 20: 0, 40: 1, 50: 2}
    assert fuse_lists([a, b, c], [2.0, 1.0, 0.5], 2, k=1.0)[0].tolist() == [10, 30]
    assert fuse_lists([a, b], [0.0, 1.0], 5, k=0.0)[0].tolist() == [30, 40]           # weight 0: left out
    tie, _ = fuse_lists([np.array([7]), np.array([3])], [1.0, 1.0], 2, k=0.0)
    assert tie.tolist() == [3, 7]                                                     # equal sums: smaller id
    assert fuse_lists([a], [0.0], 3, k=0.0)[0].size == 0
    with pytest.raises(InputError):
        fuse_lists([a, b], [1.0], 3, k=0.0)


def test_warm_and_cold_weights_and_the_quota_tail() -> None:
    x, y = popularity_channel(Prior(np.array([1, 2, 3, 4]))), popularity_channel(Prior(np.array([4, 3, 5, 6])))
    fusion = Fusion({"x": 1.0, "y": 3.0}, {"x": 1.0}, k=0.0, depth=4)
    merged = fusion_merge({"x": x, "y": y}, fusion)
    assert merged(COLD, 3).tolist() == [1, 2, 3]                        # cold: x alone
    assert merged(WARM, 3).tolist() == [4, 3, 1]          # 4: 1/4 + 3, 3: 1/3 + 3/2, then 1 and 5: 1 (smaller id)
    # only the first 2 fused, the rest by the quota tail (x alone): each movie once
    headed = Fusion({"x": 1.0, "y": 3.0}, {"x": 1.0}, k=0.0, depth=4, head=2, tail={"x": 1.0})
    ids, source = headed.merge([x(WARM, 4), y(WARM, 4)], WARM, 5)
    assert ids.tolist() == [4, 3, 1, 2] and source.tolist() == [1, 1, 0, 0]
    assert Fusion.from_dict(headed.to_dict()) == headed and headed.names == ("x", "y")
    assert fusion_of({"rule": "fusion", "fusion": headed.to_dict()}) == headed
    assert fusion_of({"rule": "quota", "fusion": headed.to_dict()}) is None
    for bad in ({"weights": {"x": 0.0}}, {"k": -1.0}, {"depth": 0}, {"head": 2, "tail": {}}, {"tail": {"x": -1}}):
        with pytest.raises(InputError, match="merge.fusion"):
            Fusion.from_dict({**fusion.to_dict(), **bad})
    with pytest.raises(InputError, match="exactly the keys"):
        Fusion.from_dict({"weights": {"x": 1.0}})


def test_choice_gives_warm_and_cold_users_their_own_weights() -> None:
    prior_x, prior_y = Prior(np.array([1, 2, 3, 4, 5, 6])), Prior(np.array([6, 5, 4, 3, 2, 1]))
    channels = {"x": popularity_channel(prior_x), "y": popularity_channel(prior_y)}
    users = [COLD, WARM, UserState(3, NONE, NONE, ())]
    relevant = [np.array([1]), np.array([6]), np.array([1, 2])]            # cold users like x, the warm one y
    fusion = choose_fusion(users, relevant, channels, k=1, candidates=6, grid=(0.0, 1.0), ks=(0.0, 5.0))
    assert fusion.cold_weights == {"x": 1.0, "y": 0.0} and fusion.weights == {"x": 0.0, "y": 1.0}
    assert fusion.k == 0.0 and fusion.depth == 6 and fusion.head == 0
    assert evaluate_merge(users, relevant, fusion_merge(channels, fusion), 1) == (pytest.approx(5 / 6), None)

    def rank(i: int, ids: np.ndarray) -> np.ndarray:                     # the ranker prefers low ids
        return -ids.astype(np.float64)

    # under the floor of x alone's NDCG@1 (3 candidates ranked by it): the warm user's y (6 first) ranks 4
    # first and misses; the choice keeps that floor and still recalls at least as much as x alone
    x_alone = Fusion({"x": 1.0}, {"x": 1.0}, 0.0, 3)
    x_recall, floor = evaluate_merge(users, relevant, fusion_merge(channels, x_alone), 1, rank=rank, candidates=3,
                                     top=1)
    floored = choose_fusion(users, relevant, channels, k=1, candidates=3, top=1, grid=(0.0, 1.0), ks=(0.0,),
                            rank=rank, floor=floor)
    recall, ndcg = evaluate_merge(users, relevant, fusion_merge(channels, floored), 1, rank=rank, candidates=3, top=1)
    assert floor is not None and ndcg is not None and ndcg >= floor and recall >= x_recall
    assert floored.cold_weights == {"x": 1.0, "y": 0.0}


def test_fast_choice_figures_match_the_exact_merge() -> None:
    """choose_fusion scores every weight vector at once; for the chosen one, its pick must be the exact best:
    no weight vector of the grid merges (exactly) to a better Recall@k."""
    rng = np.random.default_rng(0)
    channels = {f"c{j}": popularity_channel(Prior(rng.permutation(60) + 1)) for j in range(3)}
    users = [UserState(u, NONE, np.array([99]) if u % 2 else NONE, ()) for u in range(12)]
    relevant = [rng.choice(60, 4, replace=False) + 1 for _ in users]
    fusion = choose_fusion(users, relevant, channels, k=10, candidates=30, grid=(0.0, 1.0, 2.0), ks=(1.0, 10.0))
    best, _ = evaluate_merge(users, relevant, fusion_merge(channels, fusion), 10)
    for w in ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 1.0), (2.0, 1.0, 0.0)):
        other = Fusion(dict(zip(channels, w, strict=True)), dict(zip(channels, w, strict=True)), 1.0, 30)
        assert evaluate_merge(users, relevant, fusion_merge(channels, other), 10)[0] <= best + 1e-12


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared_small_release(tmp_path_factory.mktemp("fusion"), seed=3)


def test_train_recall_chooses_the_rule_on_validation_only(samples: Path, tmp_path: Path) -> None:
    from deepcrossing.training.item2vec import Item2VecConfig
    from deepcrossing.training.recall_model import train_recall

    _, merge, _ = train_recall(samples, ("item2vec",), item2vec=Item2VecConfig(seed=0))
    assert merge["rule"] in ("quota", "fusion") and Fusion.from_dict(merge["fusion"]).depth == 800
    winner = merge["fusion_valid_recall"] if merge["rule"] == "fusion" else merge["quota_valid_recall"]
    assert merge["valid_recall"] == winner == max(merge["fusion_valid_recall"], merge["quota_valid_recall"])
    copy = tmp_path / "samples"
    shutil.copytree(samples, copy)
    test = pq.read_table(copy / "test.parquet")
    flipped = test.set_column(test.schema.get_field_index("label"), "label",
                              pa.array(1 - test.column("label").to_numpy(), test.schema.field("label").type))
    pq.write_table(flipped, copy / "test.parquet")
    assert train_recall(copy, ("item2vec",), item2vec=Item2VecConfig(seed=0))[1] == merge


def _fuse_by_sorting(lists, weights, n, k):
    """fuse_lists as first written (two sorts of every term): the reference for the partitioned one."""
    on = [j for j, w in enumerate(weights) if w > 0 and len(lists[j])]
    if not on:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    flat = np.concatenate([np.asarray(lists[j], dtype=np.int64) for j in on])
    terms = np.concatenate([float(weights[j]) / (k + np.arange(len(lists[j])) + 1.0) for j in on])
    source = np.concatenate([np.full(len(lists[j]), j, dtype=np.int64) for j in on])
    ids, inverse = np.unique(flat, return_inverse=True)
    scores = np.bincount(inverse, weights=terms, minlength=ids.size)
    by_term = np.lexsort((source, -terms))
    _, first = np.unique(inverse[by_term], return_index=True)
    order = np.lexsort((ids, -scores))[:n]
    return ids[order], source[by_term][first][order]


@pytest.mark.parametrize("seed", range(20))
def test_fuse_lists_is_the_sorting_reference(seed: int) -> None:
    """Overlapping lists, equal weights and offsets (tied terms and sums), a movie twice in one list, n below
    and above the union: the same ids, order and sources."""
    rng = np.random.default_rng(seed)
    lists = overlapping_lists(rng, 3)
    weights = [float(w) for w in rng.choice([0.0, 0.25, 1.0, 1.0, 2.0], size=len(lists))]
    for n in (1, 7, 50, 10_000):
        for k in (0.0, 20.0):
            got, want = fuse_lists(lists, weights, n, k=k), _fuse_by_sorting(lists, weights, n, k)
            assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()
