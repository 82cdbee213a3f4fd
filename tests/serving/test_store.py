"""Feature store: both backends behave the same; versions switch atomically; half-written ones never serve."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from deepcrossing.errors import InputError
from deepcrossing.serving.store import (
    RedisStore,
    SQLiteStore,
    StoreError,
    StoreUnavailable,
    VersionGone,
    open_store,
)


def make_version(tag: int, n_users: int = 50, n_movies: int = 80):
    """Records that carry ``tag`` everywhere, so a reader can tell versions apart."""
    users = [(u, {"features": {"userId": u, "tag": tag}, "history": [[1, 4.0, 10]], "rated": [1]})
             for u in range(1, n_users + 1)]
    movies = [(m, {"features": {"movieId": m, "tag": tag}, "title": f"Movie {m} ({tag})", "genres": ["Drama"]})
              for m in range(1, n_movies + 1)]
    candidates = list(range(n_movies, 0, -1))
    return users, movies, candidates


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = open_store(f"sqlite:///{tmp_path / 'features.db'}")
    else:
        s = open_store(request.getfixturevalue("redis_url"))
    yield s
    s.close()


def test_open_store_urls(tmp_path):
    assert isinstance(open_store(f"sqlite:///{tmp_path}/a.db"), SQLiteStore)
    assert open_store(f"sqlite:///{tmp_path}/a.db").path == tmp_path / "a.db"
    assert isinstance(open_store("redis://127.0.0.1:1/0"), RedisStore)
    with pytest.raises(InputError, match="sqlite:///path.db or redis://"):
        open_store("postgres://x")


def test_publish_and_read(store):
    assert store.current_version() is None
    with pytest.raises(StoreError, match="nothing published"):
        store.read_user(1)
    users, movies, candidates = make_version(1)
    v = store.publish(users, movies, candidates, {"note": "first"}, batch_size=7)
    assert v.version == 1 and store.current_version() == 1 and store.current() == v and len(v.uid) == 32
    meta = store.meta()
    assert (meta["n_users"], meta["n_movies"], meta["n_candidates"], meta["note"]) == (50, 80, 80, "first")
    assert len(meta["checksum"]) == 64 and meta["id"] == v.uid and meta["version"] == 1
    assert store.read_user(3) == (v, users[2][1])
    assert store.read_user(999) == (v, None)
    assert store.get_movies([2, 999, 80]) == [movies[1][1], None, movies[79][1]]
    assert store.get_candidates(3) == [80, 79, 78]
    assert sorted(k for k, _ in store.iter_users()) == list(range(1, 51))
    v2 = store.publish(*make_version(2))
    assert v2.version == 2 and store.versions_present() == [2]  # previous deleted only after the switch
    assert store.get_user(3)["features"]["tag"] == 2 and not store.exists(v) and store.exists(v2)
    with pytest.raises(VersionGone):
        store.get_users([3], version=v)


def test_verify_catches_tampering(tmp_path):
    store = SQLiteStore(tmp_path / "f.db")
    v = store.publish(*make_version(1))
    conn = store._conn()
    conn.execute(f"UPDATE dc_users_{v.tag} SET data = '{{\"features\":{{}}}}' WHERE id = 5")
    with pytest.raises(StoreError, match="checksum mismatch"):
        store.verify(v)
    conn.execute(f"DELETE FROM dc_users_{v.tag} WHERE id = 6")
    with pytest.raises(StoreError, match="49 users stored, meta says 50"):
        store.verify(v)


def test_readers_never_see_a_mix(store):
    store.publish(*make_version(0))
    stop = threading.Event()
    mixes, reads, gone, errors = [], [0], [0], []

    def reader():
        while not stop.is_set():
            try:
                v, user = store.read_user(7)
                movies = store.get_movies([1, 2, 3], version=v)
                meta = store.meta(version=v)
            except VersionGone:
                gone[0] += 1
                continue
            except Exception as exc:
                errors.append(repr(exc))
                return
            tags = {user["features"]["tag"], *(m["features"]["tag"] for m in movies)}
            if len(tags) != 1 or (meta["version"], meta["id"]) != v:
                mixes.append((v, tags))
            reads[0] += 1

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for tag in range(1, 6):
        store.publish(*make_version(tag), keep_previous_s=0.01)
    time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    assert errors == [] and mixes == []
    assert reads[0] > 20
    assert store.get_user(7)["features"]["tag"] == 5 and store.versions_present() == [6]


KILLED_PUBLISH = """
import os, signal, sys
from deepcrossing.serving.store import open_store
store = open_store(sys.argv[1])
def users():
    for u in range(1, 10001):
        if u == 2500:
            os.kill(os.getpid(), signal.SIGKILL)  # killed mid-publish, after 2 batches are written
        yield u, {"features": {"userId": u, "tag": 99}, "history": [], "rated": []}
store.publish(users(), [(1, {"features": {"movieId": 1, "tag": 99}})], [1], batch_size=1000)
"""


def test_half_published_version_is_never_served(store):
    store.publish(*make_version(1))
    url = store.url
    proc = subprocess.run([sys.executable, "-c", KILLED_PUBLISH, url], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    assert store.versions_present() == [1, 2]  # version 2 was written in part ...
    assert store.current_version() == 1       # ... and is not served
    assert store.read_user(3)[1]["features"]["tag"] == 1
    half = next(ref for ref in store.refs_present() if ref.version == 2)
    with pytest.raises(StoreError):
        store.verify(half)
    v = store.publish(*make_version(3))       # the next publish sweeps the half-written one
    assert v.version == 3 and store.versions_present() == [3]


def test_sqlite_and_redis_hold_identical_versions(tmp_path, redis_url):
    a, b = SQLiteStore(tmp_path / "f.db"), open_store(redis_url)
    users, movies, candidates = make_version(4)
    users[0][1]["features"]["avg"] = float("nan")  # JSON has no NaN: stored as null in both
    va = a.publish(users, movies, candidates)
    vb = b.publish(users, movies, candidates)
    assert a.meta(version=va)["checksum"] == b.meta(version=vb)["checksum"]
    assert a.get_users([1, 2, 77]) == b.get_users([1, 2, 77])
    assert a.get_user(1)["features"]["avg"] is None
    assert dict(a.iter_movies()) == dict(b.iter_movies())


def test_redis_down_fails_fast():
    store = RedisStore("redis://127.0.0.1:1/0", timeout=0.2)
    t0 = time.perf_counter()
    with pytest.raises(StoreUnavailable, match="unavailable"):
        store.read_user(1)
    assert time.perf_counter() - t0 < 1.0


def test_recreated_store_restarts_numbers_but_never_ids(store):
    first = store.publish(*make_version(1))
    if isinstance(store, SQLiteStore):  # the file deleted under an open writer: it writes a new file
        for path in store.path.parent.glob(store.path.name + "*"):
            path.unlink()
    else:
        store.client.flushdb()
    assert store.current() is None
    second = store.publish(*make_version(2))
    assert second.version == first.version == 1 and second.uid != first.uid and store.current() == second
    assert not store.exists(first) and store.exists(second)
    with pytest.raises(VersionGone):  # a reader that resolved the old store never gets the new records
        store.get_users([1], version=first)
    with pytest.raises(VersionGone):
        store.meta(version=first)
    assert store.get_user(1, version=second)["features"]["tag"] == 2
