"""Serving userItemCFScore (issue 11): the published co-occurrence blobs and the user's stored history give the
sample SQL's value at t_end (ml-latest-small and a hand log with a cold user, an unknown movie and a movie with
no co-occurrence); the fast path equals the plain forward pass through the engine; a model without the column
reads no item-CF blob; a store or samples without item-CF data are refused in one line."""

from __future__ import annotations

import collections
import math
import random
import sqlite3
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_pair_scorer import build, check_fast_equals_plain

from deepcrossing.config import Feature, FeatureSpec, ModelConfig, TrainConfig
from deepcrossing.data.schema import Dataset
from deepcrossing.encoding.encoder import Encoder
from deepcrossing.errors import DeepCrossingError
from deepcrossing.features import FeatureConfig, build_samples, compute_samples
from deepcrossing.model.deep_crossing import DeepCrossing
from deepcrossing.serving.engine import Engine, empty_features
from deepcrossing.serving.itemcf import ARRAYS, load_itemcf
from deepcrossing.serving.publish import publish_dataset, publish_for_model, schema_from_json
from deepcrossing.serving.scorer import Scorer, join_user_movies
from deepcrossing.serving.store import StoreError, open_store
from deepcrossing.training import artifact

ICF = FeatureConfig(itemcf=True)
TRANSFORMS = {
    "dense": (Feature("userItemCFScore", "numeric", "context", transform="standardize"),),
    "embedded": (Feature("userItemCFScore", "numeric", "context", transform="ple", n_buckets=6, dim=3),),
    "buckets": (Feature("userItemCFScore", "numeric", "context", transform="buckets", n_buckets=5),),
}


def tiny_scorer() -> Scorer:
    """A scorer of a model reading userItemCFScore (the weights do not matter for the served values)."""
    spec = FeatureSpec((Feature("movieId", "categorical", "item", dim=4),
                        Feature("userItemCFScore", "numeric", "context", transform="standardize")))
    encoder = Encoder(spec).fit(pa.table({"movieId": [1, 2], "userItemCFScore": [3.0, 4.0]}))
    model = DeepCrossing(spec, ModelConfig(hidden=(4,), width=4), encoder.cardinalities)
    return Scorer(types.SimpleNamespace(model=model, encoder=encoder, spec=spec))


def served_and_sql(tmp_path, dataset: Dataset, config: FeatureConfig, users: list[int], movies: list[int]):
    """(served, sampled): userItemCFScore of each (user, movie) as the service computes it from a published
    SQLite version, and as the sample SQL gives a sample at t_end (probe ratings appended at t_end)."""
    url = f"sqlite:///{tmp_path / 'icf.db'}"
    meta = publish_dataset(dataset, url, feature_config=config)
    store = open_store(url, readonly=True)
    try:
        ref = store.current()
        itemcf = load_itemcf(store, ref, meta)
        records = dict(store.iter_movies(version=ref))
        movie_schema, user_schema = schema_from_json(meta["movie_schema"]), schema_from_json(meta["user_schema"])
        rows = [records[m]["features"] if m in records else empty_features(movie_schema, "movieId", m)
                for m in movies]
        scorer = tiny_scorer()
        items = scorer.items(pa.Table.from_pylist(rows, schema=movie_schema), itemcf)
        served = {}
        for user, record in zip(users, store.get_users(users, version=ref), strict=True):
            features = record["features"] if record else empty_features(user_schema, "userId", user)
            part = scorer.user(pa.Table.from_pylist([features], schema=user_schema), (record or {}).get("history"))
            values = scorer.pair_table(part, items, torch.arange(len(movies))).column("userItemCFScore")
            served |= {(user, m): v for m, v in zip(movies, values.to_pylist(), strict=True)}
    finally:
        store.close()
    ratings = pq.read_table(dataset.ratings)
    t_end = int(np.max(ratings.column("timestamp").to_numpy())) + 1
    probes = pa.table({"user_id": pa.array([u for u in users for _ in movies], pa.int64()),
                       "item_id": pa.array([m for _ in users for m in movies], pa.int64()),
                       "rating": pa.array([3.0] * (len(users) * len(movies)), pa.float64()),
                       "label": pa.nulls(len(users) * len(movies), pa.int8()),
                       "timestamp": pa.array([t_end] * (len(users) * len(movies)), pa.int64())})
    probed = tmp_path / "probed.parquet"
    pq.write_table(pa.concat_tables([ratings.select(probes.column_names).cast(probes.schema), probes]), probed)
    samples = compute_samples(Dataset(name="probed", ratings=probed, items=dataset.items, sources={}), config)
    at_end = samples.filter(pa.compute.equal(samples.column("timestamp"), t_end))
    sampled = {(u, m): s for u, m, s in zip(*(at_end.column(c).to_pylist()
                                              for c in ("userId", "movieId", "userItemCFScore")), strict=True)}
    return served, sampled


def assert_same(served: dict, sampled: dict) -> int:
    """Every pair equal (NULL where NULL); returns how many are non-NULL."""
    assert served.keys() == sampled.keys()
    for key, want in sampled.items():
        got = served[key]
        if want is None:
            assert got is None, (key, got)
        else:
            assert got is not None and math.isclose(got, want, rel_tol=1e-12), (key, got, want)
    return sum(v is not None for v in sampled.values())


@pytest.mark.slow
def test_served_score_equals_the_sample_sql_on_ml_latest_small(ml_small_dir, tmp_path):
    from deepcrossing.data import load_dataset

    dataset = load_dataset(ml_small_dir, workdir=tmp_path / "data")
    rated = pq.read_table(dataset.ratings, columns=["user_id", "item_id"])
    rng = random.Random(11)
    users = rng.sample(sorted(set(rated.column("user_id").to_pylist())), 40) + [10**9]        # + a cold user
    all_movies = set(pq.read_table(dataset.items, columns=["item_id"]).column("item_id").to_pylist())
    never_rated = sorted(all_movies - set(rated.column("item_id").to_pylist()))[:2]
    counts = collections.Counter(rated.column("item_id").to_pylist())
    popular = [m for m, _ in counts.most_common(30)]
    movies = popular + rng.sample(sorted(all_movies), 30) + never_rated + [10**9]            # + unknown ids
    served, sampled = served_and_sql(tmp_path, dataset, ICF, users, movies)
    scored = assert_same(served, sampled)
    assert scored > len(served) // 3
    assert all(served[(10**9, m)] is None for m in movies) and all(served[(u, 10**9)] is None for u in users)


def hand_log() -> tuple[list[tuple], list[tuple]]:
    """4 users, movies 1..6 in the items file (6 never rated), 7 rated but not in the items file, 5 rated only
    negatively (no co-occurrence), same-second ratings."""
    items = [(i, 1990 + i, ["Drama"] if i % 2 else ["Comedy"]) for i in range(1, 7)]
    ratings = [(1, 1, 4.0, 10), (1, 2, 5.0, 20), (1, 3, 4.5, 20), (1, 5, 1.0, 25), (1, 7, 4.0, 30),
               (2, 2, 4.0, 10), (2, 1, 3.5, 15), (2, 7, 5.0, 40), (2, 5, 2.0, 45),
               (3, 3, 5.0, 50), (3, 2, 2.0, 55), (3, 1, 4.5, 60), (4, 5, 1.5, 5)]
    return ratings, items


def test_served_score_equals_the_sample_sql_on_a_hand_log(tmp_path):
    from features.conftest import write_dataset

    ratings, items = hand_log()
    dataset = write_dataset(tmp_path / "log", ratings, items)
    users, movies = [1, 2, 3, 4, 99], [1, 2, 3, 5, 6, 7, 8]   # 99: cold; 5: no co-occurrence; 6, 8: unknown
    served, sampled = served_and_sql(tmp_path, dataset, FeatureConfig(itemcf=True, itemcf_window=2), users, movies)
    assert assert_same(served, sampled) >= 8
    assert all(served[(99, m)] is None for m in movies)                  # cold user
    assert all(served[(u, m)] is None for u in users for m in (5, 6, 8))  # no neighbours / unknown movies
    assert served[(3, 7)] is not None   # a movie missing from the items file still has its co-occurrences


# ---------------------------------------------------------------- the engine, on synthetic data

@pytest.fixture(scope="module")
def icf(synth_data, tmp_path_factory):
    """Synthetic samples with item-CF on and the same data published with its co-occurrence blobs."""
    root = tmp_path_factory.mktemp("icf")
    build_samples(synth_data["dataset"], ICF, root / "samples")
    url = f"sqlite:///{root / 'features.db'}"
    publish_dataset(synth_data["dataset"], url, feature_config=ICF)
    return types.SimpleNamespace(root=root, samples=root / "samples", url=url)


def save_model(icf, name: str, pairs, mlp: str = "residual"):
    path = icf.root / name
    if not path.exists():
        built = build(icf.samples, pairs, mlp)
        artifact.save(path, built.model, built.encoder, TrainConfig(epochs=1))
    return path


@pytest.mark.parametrize("mlp", ["residual", "plain"])
@pytest.mark.parametrize("kind", list(TRANSFORMS))
def test_fast_path_reading_itemcf_equals_plain_forward(icf, kind, mlp):
    model = save_model(icf, f"{kind}-{mlp}", TRANSFORMS[kind], mlp)
    engine = Engine.open(model, icf.url)
    try:
        state = engine.state
        assert state is not None and state.snapshot is not None and state.scorer.reads_itemcf
        snap = state.snapshot
        assert snap.itemcf is not None and snap.items.itemcf is snap.itemcf
        check_fast_equals_plain(engine)
        # the column really varies and moves the scores (the test can fail): fast vs plain with it NULLed
        user = engine.store.meta()["example_users"][0]
        read = engine.fetch_user(user)
        part = state.scorer.user(engine._user_table(snap, user, read.record), read.record["history"])
        rows = snap.candidate_rows[:300]
        values = state.scorer.pair_table(part, snap.items, torch.as_tensor(rows)).column("userItemCFScore")
        assert values.null_count < len(rows) and len(set(values.to_pylist())) > 20
        table = join_user_movies(engine._user_table(snap, user, read.record), snap.movie_table.take(pa.array(rows)))
        nulled = table.append_column("userItemCFScore", pa.nulls(len(rows), pa.float64()))
        moved = not torch.allclose(state.scorer.plain(nulled), state.scorer.fast(part, snap.items, rows), atol=1e-4)
        assert moved or kind != "dense"   # (a 20-step embedding may still map every value alike)
        # an unknown movie: the OOV row and a NULL score, no error
        scored = engine.score(user, [int(snap.movie_ids[rows[0]]), 10**12])
        assert scored["knownMovies"] == [True, False] and all(0 < s < 1 for s in scored["scores"])
    finally:
        engine.store.close()


def test_a_model_without_itemcf_reads_no_itemcf_blob_and_a_reload_loads_it(icf, synth_data):
    store = open_store(icf.url, readonly=True)
    read: list[str] = []
    blob = store.blob
    store.blob = lambda ref, name, meta=None: read.append(name) or blob(ref, name, meta)   # a spy on the real store
    plain_model = save_model(icf, "no-icf", (), "plain")
    # verify=False: the version check (store.verify, once per version) hashes every blob whatever the model
    engine = Engine.open(plain_model, store, verify=False)
    try:
        assert engine.state is not None and engine.state.snapshot is not None
        assert not engine.state.scorer.reads_itemcf and engine.state.snapshot.itemcf is None
        assert engine.state.snapshot.items.itemcf is None and engine.state.snapshot.items.movie_ids is None
        assert not [n for n in read if n.startswith("itemcf/")]
        engine.recommend(engine.store.meta()["example_users"][0], k=5)
        # a reload to a model reading it: the blobs are read then, once, and the engine serves it exactly
        engine.reload(save_model(icf, "dense-residual", TRANSFORMS["dense"]))
        assert sorted(n for n in read if n.startswith("itemcf/")) == sorted(f"itemcf/{a}/0" for a in ARRAYS)
        assert engine.state.snapshot.itemcf is not None
        check_fast_equals_plain(engine)
    finally:
        store.close()


def test_store_without_itemcf_data_is_refused_in_one_line(icf, sqlite_url, tmp_path):
    model = save_model(icf, "dense-residual", TRANSFORMS["dense"])
    with pytest.raises(StoreError, match=r"has no item-CF data; build the model's samples with "
                                         r"`prepare --itemcf`") as info:
        Engine.open(model, sqlite_url)   # conftest's store: published without item-CF
    assert "\n" not in str(info.value)
    # a tampered blob is never served
    db = tmp_path / "tampered.db"
    db.write_bytes((icf.root / "features.db").read_bytes())
    with sqlite3.connect(db) as conn:
        table = conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'dc_blobs_%'").fetchone()[0]
        conn.execute(f"UPDATE {table} SET data = zeroblob(length(data)) WHERE name = 'itemcf/co/0'")
    with pytest.raises(StoreError, match="itemcf/co/0 does not match its SHA-256"):
        Engine.open(model, f"sqlite:///{db}")


def test_publish_for_model_refuses_samples_without_itemcf(synth_data, icf, tmp_path):
    import json
    import shutil

    model = tmp_path / "model"
    shutil.copytree(save_model(icf, "dense-residual", TRANSFORMS["dense"]), model)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["samples"] = {"manifest": str(synth_data["samples"] / "manifest.json")}   # samples: itemcf off
    (model / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DeepCrossingError, match=r"reads userItemCFScore .* itemcf off.*`prepare --itemcf`"):
        publish_for_model(model, synth_data["raw"], f"sqlite:///{tmp_path / 'x.db'}", emb=False)
    assert not (tmp_path / "x.db").exists()   # refused before any work


def test_redis_store_holds_the_same_itemcf_data(icf, synth_data, redis_url):
    publish_dataset(synth_data["dataset"], redis_url, feature_config=ICF)
    loaded = []
    for url in (icf.url, redis_url):
        store = open_store(url, readonly=True)
        try:
            ref = store.current()
            loaded.append(load_itemcf(store, ref, store.meta(version=ref)))
        finally:
            store.close()
    assert loaded[0].history == loaded[1].history == ICF.itemcf_history and len(loaded[0].table.co) > 1000
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(loaded[0].table, name), getattr(loaded[1].table, name))


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_parity_with_itemcf(icf, tmp_path, fmt):
    """The whole model exported with userItemCFScore (nulls included) scores like the loaded model."""
    import json

    from dc_synthetic import exported_scores

    import deepcrossing
    from deepcrossing.training.export import export_model, flat_inputs, layout

    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    path = export_model(save_model(icf, "embedded-residual", TRANSFORMS["embedded"]), fmt, tmp_path / f"m.{fmt}")
    loaded = deepcrossing.load(icf.root / "embedded-residual")
    table = pq.read_table(icf.samples / "valid.parquet").slice(0, 300)
    assert 0 < table.column("userItemCFScore").null_count < 300
    batch = loaded.encoder.transform(table)
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert "userItemCFScore" in meta["numeric_names"]
    got = exported_scores(path, fmt, list(flat_inputs(batch, layout(loaded))), meta["inputs"])
    np.testing.assert_allclose(got, loaded.logits(batch).numpy(), atol=1e-5, rtol=0)


def test_offline_ranker_computes_itemcf_as_the_service_at_the_split_start(icf, synth_data, tmp_path):
    """``evaluate --retrieval``'s ranker of a model reading userItemCFScore: the co-occurrence lists and
    histories as of the valid start equal the online records of the ratings before it (what a store published
    then would hold), and the ranker scores with them."""
    import deepcrossing
    from deepcrossing.features import online_records
    from deepcrossing.features.itemcf import CoOccurrence
    from deepcrossing.training.retrieval_data import _itemcf_at_start, load_retrieval_data, ranker

    data = load_retrieval_data(icf.samples, split="valid")
    table, n, histories = _itemcf_at_start(data)
    ratings = pq.read_table(synth_data["dataset"].ratings)
    cut = ratings.filter(pa.compute.less(ratings.column("timestamp"), data.test_start))
    pq.write_table(cut, tmp_path / "cut.parquet")
    records = online_records(Dataset(name="cut", ratings=tmp_path / "cut.parquet", items=synth_data["dataset"].items,
                                     sources={}), ICF, history_n=ICF.itemcf_history)
    online = CoOccurrence.from_table(records.cooccurrence)
    assert n == ICF.itemcf_history and len(table.co) > 1000
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(table, name), getattr(online, name))
    for row in records.histories.to_pylist():
        movies, ratings_j = histories[row["userId"]]
        assert movies.tolist() == [h["movieId"] for h in row["history"]]
        np.testing.assert_array_equal(ratings_j, [h["rating"] for h in row["history"]])
    rank = ranker(data, deepcrossing.load(save_model(icf, "dense-residual", TRANSFORMS["dense"])))
    scores = rank(0, data.prior.popular[:300])
    assert np.isfinite(scores).sum() > 200


def test_arrays_split_into_parts_load_back_whole(tmp_path, monkeypatch):
    import deepcrossing.serving.itemcf as itemcf_module
    from features.conftest import write_dataset

    ratings, items = hand_log()
    dataset = write_dataset(tmp_path / "log", ratings, items)
    tables = []
    for part_bytes in (itemcf_module.PART_BYTES, 20):   # 20 bytes: parts that split an int64
        monkeypatch.setattr(itemcf_module, "PART_BYTES", part_bytes)
        url = f"sqlite:///{tmp_path / f'p{part_bytes}.db'}"
        meta = publish_dataset(dataset, url, feature_config=FeatureConfig(itemcf=True, itemcf_window=2))
        store = open_store(url, readonly=True)
        try:
            tables.append(load_itemcf(store, store.current(), meta).table)
        finally:
            store.close()
    assert meta["itemcf"]["parts"]["neighbours"] == -(-8 * meta["itemcf"]["edges"] // 20) > 1
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(tables[0], name), getattr(tables[1], name))
