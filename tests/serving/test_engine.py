"""The engine never serves a store version that fails verification, and swaps versions whole."""

from __future__ import annotations

import pytest

from deepcrossing.serving.engine import Engine
from deepcrossing.serving.publish import build_records
from deepcrossing.serving.store import SQLiteStore, StoreError


@pytest.fixture(scope="module")
def records(synth_data):
    return build_records(synth_data["dataset"], max_candidates=300)


def test_corrupt_version_is_never_served(models, records, tmp_path):
    users, movies, candidates, meta = records
    store = SQLiteStore(tmp_path / "f.db")
    store.publish(users, movies, candidates, meta)
    engine = Engine.open(models["root"] / "m0", store)
    before = engine.recommend(1, k=5)
    assert before["storeVersion"] == 1 and len(before["items"]) == 5
    # a second version whose data is altered after publishing (bit rot, a bad hand edit)
    v2 = store.publish(users, movies, candidates, meta, keep_previous_s=0)
    store._conn().execute(f"UPDATE dc_movies_{v2.tag} SET data = replace(data, '\"title\":\"The', "
                          "'\"title\":\"Evil') WHERE id = 3")
    with pytest.raises(StoreError, match="checksum mismatch"):
        engine.refresh()
    assert engine.state.snapshot.version == 1  # still the verified snapshot, never the corrupt one
    with pytest.raises(StoreError, match="checksum mismatch"):
        Engine.open(models["root"] / "m0", store)
    store.close()


def test_publish_swaps_the_whole_snapshot(models, records, tmp_path):
    users, movies, candidates, meta = records
    store = SQLiteStore(tmp_path / "f.db")
    store.publish(users, movies, candidates, meta)
    engine = Engine.open(models["root"] / "m0", store)
    old = engine.state
    store.publish(users[:10], movies, candidates[:50], meta, keep_previous_s=0)
    assert engine.refresh() is True and engine.refresh() is False
    new = engine.state
    assert old.snapshot.version == 1 and new.snapshot.version == 2 and new.scorer is old.scorer
    assert len(new.snapshot.candidate_rows) == 50 and len(old.snapshot.candidate_rows) == 300
    assert engine.recommend(users[20][0], k=3)["known"] is False  # not in version 2: cold start
    assert engine.recommend(users[5][0], k=3, candidates=800)["candidates"] <= 50
    store.close()


def test_user_cache_is_exact_and_can_be_turned_off(models, records, tmp_path):
    users, movies, candidates, meta = records
    store = SQLiteStore(tmp_path / "f.db")
    store.publish(users, movies, candidates, meta)
    cached = Engine.open(models["root"] / "m0", store)
    uncached = Engine.open(models["root"] / "m0", store, user_cache=0)
    heavy = max(users, key=lambda kv: len(kv[1]["rated"]))[0]
    for user_id in (heavy, users[0][0], users[7][0], 10**12):  # 10**12: unknown, cold start
        first = cached.recommend(user_id, k=20)
        assert cached.recommend(user_id, k=20) == first == uncached.recommend(user_id, k=20)
        rated = set(dict(users).get(user_id, {"rated": []})["rated"])
        assert not rated & {item["movieId"] for item in first["items"]}  # what the user rated is excluded
    assert len(cached.state.user_parts) == 4 and len(uncached.state.user_parts) == 0
    store.close()
