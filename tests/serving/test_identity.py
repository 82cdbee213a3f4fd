"""State identity, not version numbers: a recreated or replaced store (version numbers restarting at 1) is
noticed, the service says not-ready while it cannot serve, and never serves old scores beside new records."""

from __future__ import annotations

import os
import time

import pytest
import redis
from fastapi.testclient import TestClient

from deepcrossing.serving.app import create_app
from deepcrossing.serving.engine import RETRY_S, Engine
from deepcrossing.serving.publish import build_records
from deepcrossing.serving.settings import ServingSettings
from deepcrossing.serving.store import SQLiteStore, StoreError, open_store


@pytest.fixture(scope="module")
def records(synth_data):
    return build_records(synth_data["dataset"], max_candidates=300)


def publish(url, records, *, small=False):
    """Publish the records (``small``: 10 users and 50 candidates, so that answers tell versions apart)."""
    users, movies, candidates, meta = records
    store = open_store(url)
    try:
        ref = store.publish(users[:10] if small else users, movies, candidates[:50] if small else candidates,
                            meta)
    finally:
        store.close()
    return ref


def wait_for(check, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def assert_not_ready(client, user, words):
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["ready"] is False
    assert any(w in ready.json()["reason"] for w in words), ready.json()["reason"]
    r = client.get(f"/recommend/{user}")
    assert r.status_code == 503 and r.headers["content-type"].startswith("application/json")
    assert r.json()["error"] == "store_not_ready"


def assert_serves_small_version(client, records, ref, old_id):
    users = records[0]
    gone_user = users[20][0]  # in the first version, not in the small one
    r = client.get(f"/recommend/{gone_user}", params={"candidates": 800})
    assert r.status_code == 200 and r.json()["known"] is False and r.json()["candidates"] <= 50
    info = client.get("/info").json()
    assert info["storeVersion"] == ref.version == 1 and info["storeId"] == ref.uid != old_id
    kept = client.get(f"/recommend/{users[0][0]}", params={"candidates": 800}).json()
    assert kept["known"] is True and kept["candidates"] <= 50


def test_sqlite_file_deleted_then_published_again(models, records, tmp_path):
    db = tmp_path / "f.db"
    url = f"sqlite:///{db}"
    first = publish(url, records)
    user = records[0][20][0]
    app = create_app(ServingSettings(models["root"] / "m0", url, poll_interval_s=0.05))
    with TestClient(app) as client:
        assert client.get(f"/recommend/{user}").json()["known"] is True
        assert client.get("/info").json()["storeId"] == first.uid
        for path in tmp_path.glob("f.db*"):
            path.unlink()
        assert_not_ready(client, user, ["does not exist"])
        time.sleep(0.2)  # several polls: the service still never recreates the file
        assert not db.exists() and client.get("/readyz").status_code == 503
        second = publish(url, records, small=True)  # a new file: version numbers restart at 1
        wait_for(lambda: client.get("/readyz").status_code == 200)
        assert_serves_small_version(client, records, second, first.uid)


def test_sqlite_file_replaced_is_reopened(models, records, tmp_path):
    url = f"sqlite:///{tmp_path / 'f.db'}"
    first = publish(url, records)
    other = publish(f"sqlite:///{tmp_path / 'g.db'}", records, small=True)
    app = create_app(ServingSettings(models["root"] / "m0", url, poll_interval_s=0.05))
    with TestClient(app) as client:
        assert client.get("/info").json()["storeId"] == first.uid
        os.replace(tmp_path / "g.db", tmp_path / "f.db")  # same path, another file (another inode)
        wait_for(lambda: client.get("/info").json()["storeId"] == other.uid)
        assert client.get("/readyz").status_code == 200
        assert_serves_small_version(client, records, other, first.uid)


def test_redis_flushed_then_republished(models, records, redis_url):
    first = publish(redis_url, records)
    user = records[0][20][0]
    # a poll interval far beyond the test: only requests themselves can notice the new store
    app = create_app(ServingSettings(models["root"] / "m0", redis_url, poll_interval_s=600))
    with TestClient(app) as client:
        assert client.get(f"/recommend/{user}").json()["known"] is True
        client_redis = redis.Redis.from_url(redis_url)
        client_redis.flushdb()
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "is gone" in ready.json()["reason"]
        r = client.get(f"/recommend/{user}")  # its version is gone and nothing is published: 503, not 500
        assert r.status_code == 503 and r.json()["error"] == "store_not_ready"
        assert "nothing published" in client.get("/readyz").json()["reason"]
        second = publish(redis_url, records, small=True)  # the counter was flushed too: version 1 again
        assert second.version == first.version == 1
        time.sleep(RETRY_S)  # requests with nothing to serve look for a new version at most this often
        assert_serves_small_version(client, records, second, first.uid)  # the request adopts it, whole
        assert client.get("/readyz").status_code == 200
        client_redis.close()


def test_request_never_mixes_old_scores_with_new_records(models, records, redis_url):
    first = publish(redis_url, records)
    app = create_app(ServingSettings(models["root"] / "m0", redis_url, poll_interval_s=600))
    with TestClient(app) as client:
        assert client.get("/info").json()["storeId"] == first.uid
        redis.Redis.from_url(redis_url).flushdb()
        second = publish(redis_url, records, small=True)  # same number, new id, before the service looked
        assert client.get("/readyz").status_code == 503   # its version is gone: not ready until adopted
        assert_serves_small_version(client, records, second, first.uid)


def test_engine_keys_state_on_the_ref(models, records, tmp_path):
    db = tmp_path / "f.db"
    publish(f"sqlite:///{db}", records)
    engine = Engine.open(models["root"] / "m0", f"sqlite:///{db}")
    old = engine.state
    engine.recommend(records[0][0][0], k=3)
    assert len(old.user_parts) == 1
    for path in tmp_path.glob("f.db*"):
        path.unlink()
    with pytest.raises(StoreError, match="does not exist"):
        engine.refresh()
    assert engine.state.snapshot is None and "does not exist" in engine.readiness()
    with pytest.raises(StoreError):
        engine.recommend(records[0][0][0], k=3)
    second = publish(f"sqlite:///{db}", records, small=True)
    assert engine.refresh() is True and engine.state.snapshot.ref == second
    assert engine.state.user_parts == {} and engine.readiness() is None
    engine.store.close()


def test_readers_never_create_a_database(models, tmp_path):
    url = f"sqlite:///{tmp_path / 'never.db'}"
    with pytest.raises(StoreError, match="does not exist"):
        Engine.open(models["root"] / "m0", url)
    with pytest.raises(StoreError, match="does not exist"):
        SQLiteStore(tmp_path / "never.db", readonly=True).current()
    app = create_app(ServingSettings(models["root"] / "m0", url, poll_interval_s=0.05))
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 503 and client.get("/recommend/1").status_code == 503
    assert list(tmp_path.iterdir()) == []
