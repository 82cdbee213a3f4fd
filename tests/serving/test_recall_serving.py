"""Vector recall in the service: the ANN index agrees with exact search, the index and vectors are versioned
with the store (a checksum mismatch or another recall folder is never served), the channel merge (dedup,
order, rated excluded, sizes, labels), the ``channels`` parameter, and publish + serve on SQLite and Redis."""

from __future__ import annotations

import types

import httpx
import numpy as np
import pyarrow as pa
import pytest

from deepcrossing.errors import InputError
from deepcrossing.serving.ann import VectorIndex
from deepcrossing.serving.channels import RecallFolder, emb_channel
from deepcrossing.serving.engine import Engine
from deepcrossing.serving.models import model_fingerprint
from deepcrossing.serving.publish import publish_dataset, publish_for_model
from deepcrossing.serving.recall import default_plan, parse_channels, recall_rows
from deepcrossing.serving.store import StoreError, open_store


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim))
    x = centres[rng.integers(0, 50, n)] + 0.5 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_hnsw_index_agrees_with_exact_search_and_round_trips():
    vectors = clustered(6000, 32)
    vectors[17] = 0.0                                    # a movie the channel does not know: never returned
    index = VectorIndex.build(np.arange(6000) + 10, vectors, "cosine", exact_below=0)
    assert index.kind == "hnsw"
    rng = np.random.default_rng(1)
    queries = vectors[rng.integers(0, 6000, (200, 10))].mean(axis=1)
    recall = np.mean([np.intersect1d(index.search(q, 100), index.exact(q, 100)).size / 100 for q in queries])
    assert recall >= 0.98, recall
    assert all(17 not in index.search(q, 800) for q in queries[:20])
    again = VectorIndex.from_blobs(index.to_blobs())
    assert again.kind == "hnsw"
    for q in queries[:20]:
        assert again.search(q, 50).tolist() == index.search(q, 50).tolist()
    small = VectorIndex.build(np.arange(6000), vectors, "cosine")          # under EXACT_BELOW: exact
    assert small.kind == "exact" and "hnsw.bin" not in small.to_blobs()
    assert small.search(queries[0], 30).tolist() == index.exact(queries[0], 30).tolist()


def _snapshot(n_movies: int = 12) -> types.SimpleNamespace:
    ids = np.arange(n_movies, dtype=np.int64) * 10 + 1                   # movie ids 1, 11, 21, ...
    unit = np.eye(n_movies, 4, dtype=np.float32) + 0.01
    popular = np.arange(n_movies, dtype=np.int64)[::-1].copy()           # rows, most popular first
    drama = np.array([r % 2 == 0 for r in popular])
    return types.SimpleNamespace(movie_ids=ids, candidate_rows=popular, genre_masks={"Drama": drama},
                                 channels={"emb": emb_channel(ids, unit)})


def test_channel_merge_dedups_keeps_order_excludes_rated_and_labels():
    snap = _snapshot()
    # recent positive: movie 1 (row 0, vector e0): emb ranks row 0 first (rated), then rows 4, 5, 6, ...
    record = {"features": {"userRecentPositives": [1], "userGenre1": "Drama"}, "rated": [1, 111]}
    plan = (("emb", 3), ("genres", 2), ("popularity", 3))
    rows, labels = recall_rows(snap, record, plan, None)
    ids = snap.movie_ids[rows]
    assert len(set(rows.tolist())) == len(rows)                           # dedup
    assert 1 not in ids and 111 not in ids                                # rated excluded
    assert [(plan[j][0], int((labels == j).sum())) for j in range(3)] == [("emb", 3), ("genres", 2),
                                                                          ("popularity", 3)]
    emb_rows = rows[labels == 0]
    assert set(emb_rows.tolist()).isdisjoint({0, 11})
    genre_rows = rows[labels == 1]
    assert all(r % 2 == 0 for r in genre_rows) and not set(genre_rows) & set(emb_rows)
    # genres: the most popular Drama rows (rated row 11's movie 111 excluded), after those emb took
    expected = [r for r in snap.candidate_rows.tolist() if r % 2 == 0 and r not in emb_rows and r != 0][:2]
    assert genre_rows.tolist() == expected
    pop = [r for r in snap.candidate_rows.tolist() if r not in set(rows[labels < 2].tolist()) | {0, 11}][:3]
    assert rows[labels == 2].tolist() == pop
    # a cold user: no vector, no genre; only popularity speaks
    rows, labels = recall_rows(snap, None, plan, None)
    assert labels.tolist() == [2, 2, 2] and rows.tolist() == snap.candidate_rows[:3].tolist()


def test_channels_parameter_parsing():
    available = ("emb", "genres", "popularity")
    assert parse_channels("genres:5,popularity:7", available, 800) == (("genres", 5), ("popularity", 7))
    for bad, message in [("bogus:3", "unknown channel"), ("emb:0", ">= 1"), ("emb:x", ">= 1"), ("emb", ">= 1"),
                         ("emb:500,popularity:400", "more than 800"), ("emb:1,emb:2", "twice"), ("", "unknown")]:
        with pytest.raises(InputError, match=message) as info:
            parse_channels(bad, available, 800)
        assert info.value.field == "channels"
    assert default_plan((), 800) == (("popularity", 800),)
    assert sum(n for _, n in default_plan(("emb", "two_tower"), 800)) == 800


@pytest.fixture(scope="module")
def emb_published(models, synth_data, tmp_path_factory):
    """synth data published for model m0 with its emb vectors (publish's default), on SQLite."""
    url = f"sqlite:///{tmp_path_factory.mktemp('recall') / 'f.db'}"
    meta = publish_for_model(models["root"] / "m0", synth_data["raw"], url, keep_previous_s=0)
    return url, meta


def test_publish_stores_the_index_and_the_service_recalls_with_it(models, emb_published):
    url, meta = emb_published
    source = {"kind": "emb", "model": model_fingerprint(models["root"] / "m0")}
    assert meta["vector_channels"]["emb"]["source"] == source
    assert set(meta["blobs"]) == {"vectors/emb/ids.npy", "vectors/emb/vectors.npy"}
    engine = Engine.open(models["root"] / "m0", url)
    snap = engine.state.snapshot
    stored = snap.channels["emb"].index
    # the stored vectors are the served model's unit partials (publish and service compute the same thing)
    rows = [snap.row_of[int(m)] for m in stored.ids]
    np.testing.assert_allclose(stored.vectors, snap.unit.numpy()[rows], atol=1e-5)
    heavy = max(meta["example_users"][:3], key=int)
    record = engine.store.get_user(heavy, version=snap.ref)
    result = engine.recommend(heavy, k=50)
    assert result["channels"]["emb"] == 400 and sum(result["channels"].values()) == result["candidates"]
    assert {item["channel"] for item in result["items"]} <= {"emb", "genres", "popularity"}
    assert not {item["movieId"] for item in result["items"]} & set(record["rated"])
    # user records no longer carry the display ratings; the displays kind does
    assert "ratings" not in record
    assert engine.store.get_displays([heavy], version=snap.ref)[0]["ratingCount"] >= len(record["rated"])
    # another model: its own emb vectors, never the stored ones of m0
    other = Engine.open(models["root"] / "m1", url)
    np.testing.assert_allclose(other.state.snapshot.channels["emb"].index.vectors,
                               other.state.snapshot.unit.numpy(), atol=1e-6)
    engine.store.close()
    other.store.close()


def test_a_corrupt_index_is_never_served(models, emb_published, tmp_path, server_thread):
    from deepcrossing.serving.app import create_app
    from deepcrossing.serving.settings import ServingSettings

    url, _ = emb_published
    path = tmp_path / "copy.db"
    path.write_bytes(open_store(url).path.read_bytes())
    store = open_store(f"sqlite:///{path}")
    ref = store.current()
    store._conn().execute(f"UPDATE dc_blobs_{ref.tag} SET data = zeroblob(length(data)) "
                          "WHERE name = 'vectors/emb/vectors.npy'")
    with pytest.raises(StoreError, match="vectors/emb/vectors.npy does not match its SHA-256"):
        Engine.open(models["root"] / "m0", store, verify=False)
    app = create_app(ServingSettings(models["root"] / "m0", f"sqlite:///{path}"))
    with server_thread(app) as server:
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 503 and "SHA-256" in ready.json()["reason"]
        assert httpx.get(f"{server.url}/recommend/1").status_code == 503
    store.close()


class Fixed:
    """A recall folder's channel: every movie's vector is its id's parity; users prefer odd movies."""

    name, metric = "fixed", "dot"

    def item_vectors(self, movies: pa.Table) -> np.ndarray:
        ids = np.asarray(movies.column("movieId").to_numpy())
        return np.stack([ids % 2, 1 - ids % 2], axis=1).astype(np.float32)

    def user_vectors(self, users: pa.Table) -> np.ndarray:
        return np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (users.num_rows, 1))


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_recall_folder_must_match_the_one_that_built_the_version(backend, models, synth_data, tmp_path, request):
    url = request.getfixturevalue("redis_url") if backend == "redis" else f"sqlite:///{tmp_path / 'f.db'}"
    folder = RecallFolder(tmp_path, "a" * 64, {"fixed": Fixed()})
    publish_dataset(synth_data["dataset"], url, vectors={"fixed": Fixed()},
                    sources={"fixed": {"kind": "recall", "path": str(tmp_path), "manifest_sha256": "a" * 64}})
    with pytest.raises(StoreError, match="recall folder"):
        Engine.open(models["root"] / "m0", url)
    with pytest.raises(StoreError, match="recall folder"):
        Engine.open(models["root"] / "m0", url, recall=RecallFolder(tmp_path, "b" * 64, {"fixed": Fixed()}))
    engine = Engine.open(models["root"] / "m0", url, recall=folder)
    assert engine.channel_names() == ("fixed", "genres", "popularity")
    result = engine.recommend(1, k=20, channels=(("fixed", 30), ("popularity", 10)))
    fixed = [i["movieId"] for i in result["items"] if i["channel"] == "fixed"]
    assert fixed and all(m % 2 == 1 for m in fixed)
    assert result["channels"] == {"fixed": 30, "popularity": 10}
    # the stored vectors altered under the store (one byte): that version is never served again
    engine.store.close()
    store, ref = open_store(url), engine.state.snapshot.ref
    name = "vectors/fixed/vectors.npy"
    data = bytearray(store._read_blob(ref, name))
    data[-1] ^= 1
    if backend == "redis":
        store.client.hset(f"{store.prefix}:{ref.tag}:blobs", name, bytes(data))
    else:
        store._conn().execute(f"UPDATE dc_blobs_{ref.tag} SET data = ? WHERE name = ?", (bytes(data), name))
    with pytest.raises(StoreError, match="does not match its SHA-256"):
        Engine.open(models["root"] / "m0", url, recall=folder, verify=False)
    store.close()


def test_recommend_channels_parameter_over_http(models, emb_published, server_thread):
    from deepcrossing.serving.app import create_app
    from deepcrossing.serving.settings import ServingSettings

    url, meta = emb_published
    app = create_app(ServingSettings(models["root"] / "m0", url))
    user = meta["example_users"][0]
    with server_thread(app) as server:
        ok = httpx.get(f"{server.url}/recommend/{user}", params={"k": 30, "channels": "emb:40,popularity:20"})
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert body["channels"] == {"emb": 40, "popularity": 20} and body["candidates"] == 60
        assert {i["channel"] for i in body["items"]} <= {"emb", "popularity"}
        for bad in ("bogus:5", "emb:0", "emb:4000,popularity:4000", "emb"):
            r = httpx.get(f"{server.url}/recommend/{user}", params={"channels": bad})
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "channels"], r.text
        info = httpx.get(f"{server.url}/info").json()
        assert info["channels"] == ["emb", "genres", "popularity"] and info["genres"]
        assert httpx.get(f"{server.url}/getuser", params={"id": user}).json()["ratings"]
