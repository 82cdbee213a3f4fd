"""Recall models: item2vec's vectors (exact pooling, cold users, reproducible fits), the vector channel and
the quota merge on hand-made inputs, and `train-recall` end to end on a tiny MovieLens release: the recall
folder loads strictly, serves one user row, refuses tampering, and `evaluate --retrieval --recall` measures
its channels through the same two calls the service makes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from dc_synthetic import write_small_release
from typer.testing import CliRunner

from deepcrossing.cli import app
from deepcrossing.errors import InputError
from deepcrossing.training.item2vec import Item2Vec, Item2VecConfig, fit_item2vec
from deepcrossing.training.retrieval import Prior, UserState, popularity_channel, recall_at_ks, vector_channel
from deepcrossing.training.retrieval_merge import choose_merge, weighted_merge
from deepcrossing.training.vectors import ItemVectors

NONE = np.zeros(0, dtype=np.int64)


def test_item2vec_user_vector_is_the_mean_of_unit_vectors() -> None:
    model = Item2Vec(np.array([7, 3, 5]), np.array([[3, 4], [0, 2], [1, 0]], dtype=np.float32),
                     Item2VecConfig(dim=2, recent_n=2))
    assert isinstance(model, ItemVectors)
    items = model.item_vectors(pa.table({"movieId": [3, 9, 7]}))
    assert items.tolist() == [[0, 1], [0, 0], [pytest.approx(0.6), pytest.approx(0.8)]]
    users = pa.table({"userId": [1, 2, 3, 4],
                      "userRecentPositives": pa.array([[7, 3, 5], [9], [], None], pa.list_(pa.int64()))})
    vecs = model.user_vectors(users)
    assert vecs[0].tolist() == [pytest.approx(0.3), pytest.approx(0.9)]   # only the 2 most recent: 7 and 3
    assert not vecs[1:].any()                                               # unknown, empty, NULL: zero rows


def test_item2vec_fit_is_reproducible() -> None:
    seqs = [[1, 2, 3, 4], [2, 3, 5], [1, 5, 4, 3], [6, 2]]
    a, b = (fit_item2vec(seqs, Item2VecConfig(dim=8, epochs=3, window=3)) for _ in range(2))
    assert np.array_equal(a.movie_ids, b.movie_ids) and np.array_equal(a.vectors, b.vectors)
    assert sorted(a.movie_ids.tolist()) == [1, 2, 3, 4, 5, 6]
    empty = fit_item2vec([], Item2VecConfig(dim=4))
    assert empty.item_vectors(pa.table({"movieId": [1]})).tolist() == [[0, 0, 0, 0]]


def test_vector_channel_dot_cosine_and_fallback() -> None:
    prior = Prior(np.array([4, 3, 2, 1]))
    items = np.array([[2, 0], [0, 1], [1, 1], [0, 0]], dtype=np.float32)     # movie 4 has no vector
    users = {1: np.array([1, 0.9], dtype=np.float32), 2: np.zeros(2, dtype=np.float32)}
    dot = vector_channel(prior, np.array([1, 2, 3, 4]), items, users, "dot")
    cos = vector_channel(prior, np.array([1, 2, 3, 4]), items, users, "cosine")
    u1 = UserState(1, np.array([2]), NONE, ())
    assert dot(u1, 5).tolist() == [1, 3]                    # 2.0, 1.9; 2 rated; 4 never
    assert cos(u1, 5).tolist() == [3, 1]                    # cosine prefers the diagonal
    assert dot(UserState(2, np.array([4]), NONE, ()), 2).tolist() == [3, 2]   # zero vector: popularity
    assert dot(UserState(9, NONE, NONE, ()), 1).tolist() == [4]               # unknown user: popularity


def test_weighted_merge_and_choice() -> None:
    a = popularity_channel(Prior(np.array([1, 2, 3, 4])))
    b = popularity_channel(Prior(np.array([3, 9, 8])))
    user = UserState(1, NONE, NONE, ())
    assert weighted_merge([a, b], [1, 1])(user, 10).tolist() == [1, 3, 2, 9, 8, 4]   # round-robin, 3 once
    assert weighted_merge([a, b], [0, 1])(user, 10).tolist() == [3, 9, 8]
    assert weighted_merge([a, b], [1, 3])(user, 4).tolist() == [3, 9, 1, 8]   # keys 1/3, 2/3, then 1 and 1
    with pytest.raises(InputError):
        weighted_merge([a, b], [0, 0])
    users = [UserState(1, NONE, NONE, ()), UserState(2, NONE, NONE, ())]
    weights, score = choose_merge(users, [np.array([1]), np.array([3])], {"a": a, "b": b}, k=2)
    assert score == 1.0 and weights == {"a": 1.0, "b": 1.0}      # a alone [1, 2], b alone [3, 9]: 0.5 each


def test_choice_through_the_ranking_model_keeps_rare_movies_out() -> None:
    # the ml-100k regression in small: channel "tail" recalls more (Recall@2) but brings rare movies (ids >= 100)
    # that the ranker scores highest, so they push the relevant popular movie out of the top 1
    pop = popularity_channel(Prior(np.array([1, 2, 3, 4])))
    tail = popularity_channel(Prior(np.array([100, 5, 101, 102])))
    users = [UserState(1, NONE, NONE, ()), UserState(2, NONE, NONE, ())]
    relevant = [np.array([5]), np.array([1, 5])]

    def rank(i: int, ids: np.ndarray) -> np.ndarray:
        assert ids.tolist() == sorted(set(ids.tolist()))          # each user's candidates scored once
        return np.where(ids >= 100, 10.0, -ids.astype(np.float64))

    by_recall, recall = choose_merge(users, relevant, {"pop": pop, "tail": tail}, k=2)
    assert by_recall == {"pop": 0.0, "tail": 1.0} and recall == pytest.approx(0.75)   # [100, 5]: 1 and 1/2
    by_rank, ndcg = choose_merge(users, relevant, {"pop": pop, "tail": tail}, k=2, rank=rank, candidates=2, top=1)
    assert by_rank == {"pop": 1.0, "tail": 0.0}         # any merge with tail has 100 in its 2, ranked first
    assert ndcg == pytest.approx(0.5)                   # pop's [1, 2] ranked: 1 first, user 2's hit
    _, pop_ndcg = choose_merge(users, relevant, {"pop": pop}, k=2, rank=rank, candidates=2, top=1)
    assert pop_ndcg == pytest.approx(0.5)
    # with popularity's NDCG as the floor: the best Recall@2 among the merges that reach it (only pop alone)
    assert choose_merge(users, relevant, {"pop": pop, "tail": tail}, k=2, rank=rank, candidates=2, top=1,
                        floor=pop_ndcg) == ({"pop": 1.0, "tail": 0.0}, pop_ndcg)
    # a floor no merge reaches: the best NDCG; a floor every merge reaches: the best Recall@2 (tail alone)
    assert choose_merge(users, relevant, {"pop": pop, "tail": tail}, k=2, rank=rank, candidates=2, top=1,
                        floor=0.9)[0] == {"pop": 1.0, "tail": 0.0}
    assert choose_merge(users, relevant, {"pop": pop, "tail": tail}, k=2, rank=rank, candidates=2, top=1,
                        floor=0.0) == ({"pop": 0.0, "tail": 1.0}, 0.0)


def test_head_weights_are_chosen_over_the_floored_tail() -> None:
    """The first k by other weights (choose_merge's ``tail``): more Recall@k, the whole list keeps the floor."""
    pop = popularity_channel(Prior(np.array([1, 2, 3, 4])))
    tail = popularity_channel(Prior(np.array([100, 5, 101, 102])))
    users = [UserState(1, NONE, NONE, ()), UserState(2, NONE, NONE, ())]
    relevant = [np.array([5]), np.array([1, 5])]

    def rank(i: int, ids: np.ndarray) -> np.ndarray:            # prefers low ids: 1 is always ranked first
        return -ids.astype(np.float64)

    _, floor = choose_merge(users, relevant, {"pop": pop}, k=2, rank=rank, candidates=4, top=1)
    assert floor == pytest.approx(0.5)                          # user 2's 1 first, user 1 never
    head, ndcg = choose_merge(users, relevant, {"pop": pop, "tail": tail}, k=2, rank=rank, candidates=4, top=1,
                              floor=floor, tail={"pop": 1.0, "tail": 0.0})
    assert head == {"pop": 0.0, "tail": 1.0} and ndcg == pytest.approx(floor)
    merged = weighted_merge([pop, tail], [1, 0], head=2, head_weights=[0, 1])
    assert merged(users[0], 4).tolist() == [100, 5, 1, 2]       # the head's 2, then the tail's
    assert recall_at_ks([merged(u, 2) for u in users], relevant, (2,)).recall[2] == pytest.approx(0.75)
    assert recall_at_ks([weighted_merge([pop, tail], [1, 0])(u, 2) for u in users], relevant,
                        (2,)).recall[2] == pytest.approx(0.25)
    # a head whose whole list falls below the floor is not taken: the tail's own weights are
    bad = lambda i, ids: np.where(ids >= 100, 10.0, -ids.astype(np.float64))  # noqa: E731
    assert choose_merge(users, relevant, {"pop": pop, "tail": tail}, k=2, rank=bad, candidates=4, top=1,
                        floor=floor, tail={"pop": 1.0, "tail": 0.0})[0] == {"pop": 1.0, "tail": 0.0}


# --------------------------------------------------------------------------------- train-recall, end to end


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("recall")
    release = write_small_release(root / "ml-latest-small", seed=1)
    samples, recall, model = root / "samples", root / "recall", root / "model"
    runner = CliRunner()
    for argv in (["prepare", "--data", str(release), "--out", str(samples)],
                 ["train-recall", "--samples", str(samples), "--out", str(recall), "--epochs", "2"],
                 ["train", "--samples", str(samples), "--out", str(model), "--epochs", "1", "--device", "cpu"]):
        res = runner.invoke(app, argv)
        assert res.exit_code == 0, res.output
    return {"samples": samples, "recall": recall, "model": model, "root": root}


def test_recall_folder_loads_and_serves_one_row(trained: dict[str, Path]) -> None:
    from deepcrossing.features.columns import cold_features
    from deepcrossing.training.recall_model import FORMAT, load_recall, read_manifest
    from deepcrossing.training.retrieval_data import load_retrieval_data

    manifest = read_manifest(trained["recall"])
    assert manifest["format"] == FORMAT and set(manifest["channels"]) == {"two_tower", "item2vec",
                                                                          "two_tower_trending"}
    # two_tower_trending stands for two_tower in the merge choice (its score holds two_tower's cosine)
    assert set(manifest["merge"]["weights"]) == {"item2vec", "two_tower_trending", "genres", "trending", "popularity"}
    prior = manifest["channels"]["two_tower_trending"]
    assert prior["base"] == "two_tower" and set(prior["prior"]) == {"scale", "trending", "share"}
    assert len(manifest["metrics"]["two_tower"]["history"]) <= 2
    # the trending window and half-life: the best pooled Recall@100 of the grid over the backtest periods
    from deepcrossing.training.retrieval_trending import TRENDING_HALF_LIVES, TRENDING_WINDOWS

    merge, metrics = manifest["merge"], manifest["metrics"]
    scores = metrics["trending_valid_recall"]
    assert set(scores) == {f"{d}d/{h}" for d in TRENDING_WINDOWS for h in TRENDING_HALF_LIVES}
    assert scores[f"{merge['trending_days']}d/{merge['trending_half_life_days']}"] == max(
        v for v in scores.values() if v is not None)
    periods = metrics["trending_periods"]
    assert 1 <= len(periods) <= 4 and all(end > start for start, end, _ in periods)
    recall = load_recall(trained["recall"])
    data = load_retrieval_data(trained["samples"])
    for name, model in recall.items():
        assert isinstance(model, ItemVectors) and model.name == name
        items = model.item_vectors(data.movie_rows)
        users = model.user_vectors(data.user_rows)
        assert items.dtype == np.float32 and items.shape[0] == data.movie_rows.num_rows
        assert users.shape == (data.user_rows.num_rows, items.shape[1]) and np.isfinite(users).all()
        # one row at a time (as the service asks) gives the batch's rows
        one = model.user_vectors(data.user_rows.slice(0, 1))
        assert np.allclose(one[0], users[0], atol=1e-6)
    # a cold user (the service's empty record): a finite two-tower vector; item2vec has no opinion (zeros)
    cold = cold_features("user", 12345)
    schema = data.user_rows.schema
    row = pa.Table.from_pylist([{c: cold[c] for c in schema.names}], schema=schema)
    tt = recall["two_tower"].user_vectors(row)
    assert np.isfinite(tt).all() and np.linalg.norm(tt) == pytest.approx(1.0, abs=1e-5)
    assert not recall["item2vec"].user_vectors(row).any()
    # the trending prior: a dot channel over the two-tower's own vectors, the user's with a 1 appended
    prior = recall["two_tower_trending"]
    assert prior.metric == "dot" and prior.base is recall["two_tower"]
    assert np.allclose(prior.user_vectors(row), np.hstack([tt, [[1.0]]]), atol=1e-6)
    started = time.perf_counter()
    for _ in range(200):
        recall["two_tower"].user_vectors(row)
    assert (time.perf_counter() - started) / 200 < 0.02           # generous: the machine is shared


def test_recall_folder_refuses_tampering(trained: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from deepcrossing.training.recall_model import load_recall

    copy = tmp_path / "r"
    shutil.copytree(trained["recall"], copy)
    weights = copy / "item2vec.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match="sha256"):
        load_recall(copy)
    shutil.copy(trained["recall"] / "item2vec.safetensors", weights)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["channels"]["two_tower"]["extra"] = 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="extra"):
        load_recall(copy)
    with pytest.raises(InputError, match="not a recall folder"):
        load_recall(trained["samples"])
    # the trending prior: its weights must be finite numbers, and it cannot stand without its two-tower base
    manifest["channels"]["two_tower"].pop("extra")
    for bad in ({"scale": 1.0, "trending": float("nan"), "share": 0.0}, {"scale": 1.0, "trending": 1.0}):
        manifest["channels"]["two_tower_trending"]["prior"] = bad
        (copy / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(InputError) as err:
            load_recall(copy)
        assert err.value.field == "channels.two_tower_trending.prior"
    manifest["channels"]["two_tower_trending"]["prior"] = {"scale": 1.0, "trending": 1.0, "share": 0.0}
    manifest["channels"].pop("two_tower")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="base"):
        load_recall(copy)


def test_train_recall_with_model_chooses_the_merge_end_to_end(trained: dict[str, Path], tmp_path: Path) -> None:
    from deepcrossing.training.recall_model import read_manifest

    out = tmp_path / "r"
    res = CliRunner().invoke(app, ["train-recall", "--samples", str(trained["samples"]), "--out", str(out),
                                   "--epochs", "1", "--model", str(trained["model"])])
    assert res.exit_code == 0, res.output
    assert "end to end (valid NDCG@10" in res.output
    merge = read_manifest(out)["merge"]
    assert 0.0 <= merge["valid_ndcg@10_popularity"] <= merge["valid_ndcg@10"] <= 1.0
    assert 0.0 <= merge["valid_recall"] <= 1.0 and any(w > 0 for w in merge["weights"].values())
    res = CliRunner().invoke(app, ["train-recall", "--samples", str(trained["samples"]), "--out",
                                   str(tmp_path / "x"), "--model", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "'--model'" in res.output


def test_evaluate_with_recall_and_rerun(trained: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["evaluate", "--retrieval", "--model", str(trained["model"]), "--samples",
                                   str(trained["samples"]), "--recall", str(trained["recall"]), "--k", "5,20",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert set(report["channels"]) == {"popularity", "trending", "genres", "emb", "two_tower", "item2vec",
                                       "two_tower_trending", "merged"}
    for row in report["channels"].values():
        assert 0.0 <= row["recall"]["5"] <= row["recall"]["20"] <= 1.0
    # train-recall into its own previous folder replaces it; into the samples folder is refused
    res = CliRunner().invoke(app, ["train-recall", "--samples", str(trained["samples"]), "--out",
                                   str(trained["recall"]), "--channels", "item2vec"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in trained["recall"].iterdir()) == ["item2vec.safetensors", "manifest.json",
                                                                    "metrics.json"]
    res = CliRunner().invoke(app, ["train-recall", "--samples", str(trained["samples"]), "--out",
                                   str(trained["samples"])])
    assert res.exit_code != 0
