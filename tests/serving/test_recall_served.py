"""Served = measured: with a recall folder, the service's default recall is the folder's validated merge,
computed by the offline channel functions and the one quota rule (or the one score fusion), so for the same
store data and user state the offline merged channel and ``/recommend/{user}`` (real HTTP on loopback) recall
the same movies in the same order, each labelled with the channel that gave it first."""

from __future__ import annotations

import dataclasses
import json
import shutil

import httpx
import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from deepcrossing.cli import app
from deepcrossing.features import FeatureConfig
from deepcrossing.errors import InputError
from deepcrossing.features.online import online_records
from deepcrossing.serving.channels import TRENDING_BLOB, load_recall_folder
from deepcrossing.serving.engine import Engine
from deepcrossing.serving.publish import publish_for_model
from deepcrossing.serving.store import open_store
from deepcrossing.serving.recall import merged_rows
from deepcrossing.training.retrieval import Prior, UserState, genre_channel, popularity_channel, \
    trending_channel, vector_channel
from deepcrossing.training.retrieval_fusion import Fusion, fusion_merge
from deepcrossing.training.retrieval_data import TRENDING_SCORE
from deepcrossing.training.retrieval_merge import merge_lists, weighted_merge


@pytest.fixture(scope="module")
def served(models, synth_data, tmp_path_factory):
    """train-recall on the synthetic samples, then publish --recall into a fresh SQLite store."""
    root = tmp_path_factory.mktemp("served")
    res = CliRunner().invoke(app, ["train-recall", "--samples", str(synth_data["samples"]), "--out",
                                   str(root / "recall"), "--epochs", "2"])
    assert res.exit_code == 0, res.output
    recall = load_recall_folder(root / "recall")
    url = f"sqlite:///{root / 'f.db'}"
    meta = publish_for_model(models["root"] / "m0", synth_data["raw"], url, keep_previous_s=0, recall=recall)
    return {"recall": recall, "url": url, "meta": meta}


def offline_merged(recall, dataset, store, ref, user_id: int, n: int) -> tuple[list[int], list[str]]:
    """The offline merged channel (training.retrieval's channels + weighted_merge) on the store's data."""
    records = online_records(dataset, FeatureConfig(), trending_days=recall.trending_days,
                             trending_half_life_days=recall.trending_half_life_days)
    users = records.users
    movies = records.movies.append_column(TRENDING_SCORE, pa.array(   # the trending prior's T, as publish adds it
        [records.trending_scores.get(int(m), 0.0) for m in records.movies.column("movieId").to_pylist()]))
    meta = store.meta(version=ref)
    popular = np.asarray(store.get_candidates(version=ref), dtype=np.int64)
    genres_of = {m: r.get("genres") or [] for m, r in store.iter_movies(version=ref)}
    masks: dict[str, np.ndarray] = {}
    for i, m in enumerate(popular.tolist()):
        for g in genres_of[m]:
            masks.setdefault(g, np.zeros(popular.size, dtype=bool))[i] = True
    trending = np.frombuffer(store.blob(ref, TRENDING_BLOB, meta), dtype="<i8").astype(np.int64)
    prior = Prior(popular, masks, trending)
    row = users.filter(pa.compute.equal(users.column("userId"), user_id))
    record = store.get_user(user_id, version=ref)
    f = row.to_pylist()[0]
    user = UserState(user_id, np.asarray(sorted(record["rated"]), dtype=np.int64),
                     np.asarray(f["userRecentPositives"] or [], dtype=np.int64),
                     tuple(g for g in (f[f"userGenre{i}"] for i in range(1, 6)) if g))
    built = {"popularity": popularity_channel(prior), "trending": trending_channel(prior),
             "genres": genre_channel(prior)}
    ids = np.asarray(movies.column("movieId").to_numpy(), dtype=np.int64)
    for name, vectors in recall.channels.items():
        built[name] = vector_channel(prior, ids, vectors.item_vectors(movies),
                                     {user_id: vectors.user_vectors(row)[0]}, vectors.metric)
    if recall.fusion is not None:               # the score fusion: fusion_merge's order, fuse_lists' labels
        names = list(recall.fusion.names)
        merged = fusion_merge(built, recall.fusion)(user, n)
        lists = [built[c](user, max(recall.fusion.depth, n)) for c in names]
        _, source = recall.fusion.merge(lists, user, n)
        return merged.tolist(), [names[j] for j in source]
    names = [c for c in dict.fromkeys([*recall.merge, *recall.head_weights])
             if recall.merge.get(c, 0) > 0 or recall.head_weights.get(c, 0) > 0]
    weights = [recall.merge.get(c, 0.0) for c in names]
    head = [recall.head_weights.get(c, 0.0) for c in names] if recall.head else None
    merged = weighted_merge([built[c] for c in names], weights, head=recall.head, head_weights=head)(user, n)
    _, source = merge_lists([built[c](user, n) for c in names], weights, n, head=recall.head, head_weights=head)
    return merged.tolist(), [names[j] for j in source]


def test_service_recalls_the_validated_merge_as_measured(models, synth_data, served, server_thread):
    from deepcrossing.serving.app import create_app
    from deepcrossing.serving.settings import ServingSettings

    recall, url, meta = served["recall"], served["url"], served["meta"]
    assert TRENDING_BLOB in meta["blobs"] and meta["trending_days"] == recall.trending_days
    assert meta["trending_half_life_days"] == recall.trending_half_life_days
    assert set(meta["vector_channels"]) == {"emb", "two_tower", "item2vec", "two_tower_trending"}
    assert meta["vector_channels"]["two_tower_trending"]["metric"] == "dot"
    engine = Engine.open(models["root"] / "m0", url, recall=recall)
    snap = engine.state.snapshot
    if recall.fusion is None:                   # train-recall's rule: the one better on validation
        assert dict(snap.merge) == {c: w for c, w in recall.merge.items() if w > 0} and snap.merge_head == (0, ())
    else:
        assert snap.merge == tuple((c, recall.fusion.weights.get(c, 0.0)) for c in recall.fusion.names)
    n = 300
    users = [int(u) for u in meta["example_users"][:3]] + [10**9]           # three known users and a cold one
    app_ = create_app(ServingSettings(models["root"] / "m0", url, recall_dir=recall.path, max_k=n))
    with server_thread(app_) as server:
        for user in users[:3]:
            expected, labels = offline_merged(recall, synth_data["dataset"], engine.store, snap.ref, user, n)
            record = engine.fetch_user(user).record
            table = engine._user_table(snap, user, record)
            rows, got_labels, plan = merged_rows(snap, user, record, n, lambda t=table: t)
            assert snap.movie_ids[rows].tolist() == expected                 # same ids, same order
            assert [plan[j][0] for j in got_labels] == labels
            body = httpx.get(f"{server.url}/recommend/{user}", params={"k": n, "candidates": n}).json()
            assert body["candidates"] == len(expected)
            assert {i["movieId"]: i["channel"] for i in body["items"]} == dict(zip(expected, labels, strict=True))
            assert body["channels"] == {c: labels.count(c) for c, _ in plan}
        # the vector channels the validated merge weights are served (which ones it weights depends on the
        # trained recall models: with the backtested trending list it may give them none on this synthetic log)
        # (a fusion labels a movie by its highest term: a weighted channel may label none)
        personal = {c for c, w in recall.merge.items() if w > 0 and c in ("two_tower", "item2vec", "two_tower_trending")
                    and recall.fusion is None}
        assert not personal or personal & {i["channel"] for i in body["items"]}, (recall.merge, body["channels"])
        cold = httpx.get(f"{server.url}/recommend/{users[3]}", params={"k": 10}).json()
        assert cold["known"] is False and len(cold["items"]) == 10
    engine.store.close()


def test_compat_emb_and_similar_search_the_stored_channels(models, synth_data, served, server_thread):
    """``/getrecforyou?model=emb`` searches the version's ``emb`` channel (the offline emb channel over the
    same vectors); ``/getsimilarmovie`` searches item2vec (the version has it) by the movie's own vector."""
    from deepcrossing.serving.app import create_app
    from deepcrossing.serving.settings import ServingSettings
    from deepcrossing.training.retrieval import emb_channel

    recall, url, meta = served["recall"], served["url"], served["meta"]
    engine = Engine.open(models["root"] / "m0", url, recall=recall)
    snap = engine.state.snapshot
    emb, i2v = snap.channels["emb"].index, snap.channels["item2vec"].index
    offline = emb_channel(Prior(snap.movie_ids[snap.candidate_rows]), emb.ids, emb.vectors)
    app_ = create_app(ServingSettings(models["root"] / "m0", url, recall_dir=recall.path))
    with server_thread(app_) as server:
        for user in [int(u) for u in meta["example_users"][:3]]:
            record = engine.fetch_user(user).record
            state = UserState(user, np.asarray(sorted(record["rated"]), dtype=np.int64),
                              np.asarray(record["features"]["userRecentPositives"], dtype=np.int64), ())
            got = httpx.get(f"{server.url}/getrecforyou", params={"id": user, "size": 20, "model": "emb"}).json()
            assert [m["movieId"] for m in got] == offline(state, 20).tolist()
        known = np.flatnonzero(np.abs(i2v.vectors).sum(axis=1) > 0)
        for pos in known[:5].tolist():
            movie = int(i2v.ids[pos])
            sims = i2v.vectors @ i2v.vectors[pos]                         # unit rows: cosine
            order = [int(i2v.ids[j]) for j in np.lexsort((i2v.ids, -sims)) if j != pos and j in set(known)][:10]
            got = httpx.get(f"{server.url}/getsimilarmovie", params={"movieId": movie, "size": 10}).json()
            assert [m["movieId"] for m in got] == order
    engine.store.close()


def test_published_trending_is_the_folders_decayed_score(models, synth_data, served, tmp_path):
    """publish --recall stores the trending list of the folder's window and half-life (trending_sql, as the
    offline channel), not the plain count."""
    recall = dataclasses.replace(served["recall"], trending_days=3650, trending_half_life_days=7.0)  # a backtest's
    url = f"sqlite:///{tmp_path / 'f.db'}"
    meta = publish_for_model(models["root"] / "m0", synth_data["raw"], url, keep_previous_s=0, recall=recall)
    store = open_store(url)
    try:
        ref = store.current()
        assert ref is not None
        stored = np.frombuffer(store.blob(ref, TRENDING_BLOB), dtype="<i8").tolist()
    finally:
        store.close()
    assert meta["trending_half_life_days"] == 7.0 and meta["trending_days"] == 3650
    decayed = online_records(synth_data["dataset"], trending_days=recall.trending_days, trending_half_life_days=7.0)
    count = online_records(synth_data["dataset"], trending_days=recall.trending_days)
    assert stored == decayed.trending[: len(stored)] and stored != count.trending[: len(stored)]


@pytest.mark.parametrize("value, ok", [(None, True), (30, True), (0, False), (-2.0, False), ("7", False),
                                       (True, False)])
def test_recall_folder_trending_half_life_is_checked(served, tmp_path, value, ok):
    folder = tmp_path / "recall"
    shutil.copytree(served["recall"].path, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["merge"]["trending_half_life_days"] = value
    (folder / "manifest.json").write_text(json.dumps(manifest))
    if ok:
        assert load_recall_folder(folder).trending_half_life_days == value
    else:
        with pytest.raises(InputError, match="trending_half_life_days") as err:
            load_recall_folder(folder)
        assert err.value.field == "merge"


def test_served_merge_with_a_head_is_the_offline_one(models, synth_data, served):
    """A folder whose first movies come by other weights (``merge.head_weights``, one channel only there):
    the service's merged_rows equals the offline weighted_merge with the same head."""
    base = served["recall"]
    tail = {"two_tower": 1.0, "trending": 0.0, "popularity": 0.0}
    recall = dataclasses.replace(base, merge=tail, head_weights={"trending": 2.0, "popularity": 1.0}, head=40,
                                 fusion=None)
    engine = Engine.open(models["root"] / "m0", served["url"], recall=recall)
    snap = engine.state.snapshot
    assert snap.merge == (("two_tower", 1.0), ("trending", 0.0), ("popularity", 0.0))
    assert snap.merge_head == (40, (0.0, 2.0, 1.0))
    for user in [int(u) for u in served["meta"]["example_users"][:3]]:
        expected, labels = offline_merged(recall, synth_data["dataset"], engine.store, snap.ref, user, 120)
        record = engine.fetch_user(user).record
        table = engine._user_table(snap, user, record)
        rows, got_labels, plan = merged_rows(snap, user, record, 120, lambda t=table: t)
        assert snap.movie_ids[rows].tolist() == expected
        assert [plan[j][0] for j in got_labels] == labels
        assert set(labels[:40]) <= {"trending", "popularity"} and set(labels[40:]) == {"two_tower"}
    engine.store.close()


@pytest.mark.parametrize("value, ok", [(None, True), ({"trending": 2, "popularity": 1.5}, True),
                                       ({"trending": -1}, False), ([1, 2], False), ("x", False)])
def test_recall_folder_head_weights_are_checked(served, tmp_path, value, ok):
    folder = tmp_path / "recall"
    shutil.copytree(served["recall"].path, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["merge"]["head_weights"] = value
    (folder / "manifest.json").write_text(json.dumps(manifest))
    if ok:
        loaded = load_recall_folder(folder)
        assert loaded.head_weights == (value or {}) and loaded.head == (manifest["merge"]["k"] if value else 0)
    else:
        with pytest.raises(InputError, match="head_weights") as err:
            load_recall_folder(folder)
        assert err.value.field == "merge"


FUSION = {"weights": {"two_tower": 1.0, "trending": 2.0, "item2vec": 0.5, "genres": 0.25, "two_tower_trending": 1.0},
          "cold_weights": {"trending": 1.0, "popularity": 0.5, "two_tower": 0.25}, "k": 20.0, "depth": 150,
          "head": 60, "tail": {"popularity": 1.0, "genres": 1.0}}   # the first 60 fused, the rest by quotas


@pytest.fixture(scope="module")
def fused(models, synth_data, served, tmp_path_factory):
    """The served folder with ``merge.rule = fusion`` (a copy: its manifest differs), published anew."""
    folder = tmp_path_factory.mktemp("fused") / "recall"
    shutil.copytree(served["recall"].path, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["merge"].update(rule="fusion", fusion=FUSION)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    recall = load_recall_folder(folder)
    url = f"sqlite:///{folder.parent / 'f.db'}"
    meta = publish_for_model(models["root"] / "m0", synth_data["raw"], url, keep_previous_s=0, recall=recall)
    return {"recall": recall, "url": url, "meta": meta}


def test_served_fusion_is_the_offline_one_over_http(models, synth_data, fused, server_thread):
    """A folder whose merge rule is the score fusion: ``/recommend/{user}`` recalls the offline fusion_merge's
    movies in its order, each labelled with the channel of its highest term (in the quota tail: the quota
    rule's), warm and cold users alike."""
    from deepcrossing.serving.app import create_app
    from deepcrossing.serving.settings import ServingSettings

    recall, url, meta = fused["recall"], fused["url"], fused["meta"]
    assert recall.fusion == Fusion.from_dict(FUSION)
    engine = Engine.open(models["root"] / "m0", url, recall=recall)
    snap = engine.state.snapshot
    assert snap.fusion == recall.fusion and [c for c, _ in snap.merge] == list(recall.fusion.names)
    n, seen = 200, set()
    app_ = create_app(ServingSettings(models["root"] / "m0", url, recall_dir=recall.path, max_k=n))
    with server_thread(app_) as server:
        for user in [int(u) for u in meta["example_users"][:4]]:
            expected, labels = offline_merged(recall, synth_data["dataset"], engine.store, snap.ref, user, n)
            record = engine.fetch_user(user).record
            seen.add(bool(record["features"]["userRecentPositives"]))
            table = engine._user_table(snap, user, record)
            rows, got, plan = merged_rows(snap, user, record, n, lambda t=table: t)
            assert snap.movie_ids[rows].tolist() == expected and [plan[j][0] for j in got] == labels
            assert set(labels[60:]) <= {"popularity", "genres"} and len(expected) == n
            body = httpx.get(f"{server.url}/recommend/{user}", params={"k": n, "candidates": n}).json()
            assert {i["movieId"]: i["channel"] for i in body["items"]} == dict(zip(expected, labels, strict=True))
        cold = httpx.get(f"{server.url}/recommend/{10**9}", params={"k": 10}).json()   # unknown: cold weights
        assert cold["known"] is False and {i["channel"] for i in cold["items"]} <= {"trending", "popularity",
                                                                                   "two_tower", "genres"}
    assert True in seen
    engine.store.close()


@pytest.mark.parametrize("merge, ok", [({"rule": "quota"}, True), ({"rule": "fusion", "fusion": FUSION}, True),
                                       ({"rule": "mean"}, False), ({"rule": "fusion", "fusion": None}, False),
                                       ({"rule": "fusion", "fusion": {**FUSION, "k": -1}}, False),
                                       ({"rule": "fusion", "fusion": {**FUSION, "weights": {"trending": 0}}}, False),
                                       ({"rule": "fusion", "fusion": {**FUSION, "tail": {}}}, False),
                                       ({"rule": "fusion", "fusion": {**FUSION, "head": 0, "tail": {}}}, True)])
def test_recall_folder_fusion_is_checked(served, tmp_path, merge, ok):
    folder = tmp_path / "recall"
    shutil.copytree(served["recall"].path, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["merge"].update(merge)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    if ok:
        assert (load_recall_folder(folder).fusion is None) == (merge["rule"] == "quota")
    else:
        with pytest.raises(InputError, match="merge") as err:
            load_recall_folder(folder)
        assert str(err.value.field).startswith("merge") and str(err.value.path) == str(folder / "manifest.json")
