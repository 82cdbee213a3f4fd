"""The HTTP service: endpoints, 4xx cases, admin token, metrics, static files; SQLite and Redis agree."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from deepcrossing.serving.app import create_app
from deepcrossing.serving.publish import publish_dataset
from deepcrossing.serving.settings import ServingSettings
from deepcrossing.serving.store import open_store


def make_client(models, store_url, **settings):
    root = models["root"]
    app = create_app(ServingSettings(root / "m0", store_url, **settings))
    return TestClient(app)


@pytest.fixture(scope="module")
def client(models, sqlite_url):
    with make_client(models, sqlite_url) as c:
        yield c


def test_recommend_returns_ranked_unrated_titles(client, synth_data):
    store = open_store(client.app.state.settings.store_url)
    user = store.get_user(1)
    r = client.get("/recommend/1", params={"k": 10, "candidates": 800})
    assert r.status_code == 200, r.text
    body = r.json()
    items = body["items"]
    assert len(items) == 10 and body["known"] is True
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    assert not {i["movieId"] for i in items} & set(user["rated"])
    assert body["candidates"] == 800 - len(set(store.get_candidates(800)) & set(user["rated"]))
    assert all(i["title"] and i["title"].endswith(")") for i in items)
    # the same list by /score, and the plain full forward agrees
    ids = [i["movieId"] for i in items]
    scored = client.post("/score", json={"user_id": 1, "movie_ids": ids[::-1]}).json()
    assert scored["scores"] == pytest.approx(scores[::-1], abs=1e-5)
    plain = client.get("/recommend/1", params={"k": 10, "scorer": "plain"}).json()
    assert [i["movieId"] for i in plain["items"]] == ids
    assert [i["score"] for i in plain["items"]] == pytest.approx(scores, abs=1e-5)


def test_cold_start_and_oov(client):
    r = client.get("/recommend/987654321", params={"k": 5, "candidates": 100})
    assert r.status_code == 200 and r.json()["known"] is False
    assert len(r.json()["items"]) == 5 and r.json()["candidates"] == 100
    r = client.post("/score", json={"user_id": 987654321, "movie_ids": [1, 99999999, 2]})
    assert r.status_code == 200
    body = r.json()
    assert body["knownMovies"] == [True, False, True] and len(body["scores"]) == 3
    assert all(0 < s < 1 for s in body["scores"])
    u = client.get("/users/987654321").json()
    assert u["known"] is False and u["history"] == [] and u["features"]["userRatingCount"] == 0


def test_user_who_rated_every_candidate_gets_an_empty_list(client):
    store = open_store(client.app.state.settings.store_url)
    uid = next(u for u, rec in store.iter_users() if store.get_candidates(1)[0] in rec["rated"])
    r = client.get(f"/recommend/{uid}", params={"k": 5, "candidates": 1})
    assert r.status_code == 200 and r.json()["items"] == [] and r.json()["candidates"] == 0


def test_users_and_movies(client):
    u = client.get("/users/1").json()
    assert u["known"] and 1 <= len(u["history"]) <= 20
    assert u["history"][0]["title"] and u["history"][0]["rating"] >= 0.5
    ts = [h["timestamp"] for h in u["history"]]
    assert ts == sorted(ts, reverse=True)
    assert 0 < u["ratedCount"] <= u["features"]["userRatingCount"]  # distinct movies <= ratings
    m = client.get("/movies/1", params={"neighbours": 5}).json()
    assert m["movieId"] == 1 and m["title"].startswith("The ") and len(m["neighbours"]) == 5
    sims = [n["similarity"] for n in m["neighbours"]]
    assert sims == sorted(sims, reverse=True) and 1 not in [n["movieId"] for n in m["neighbours"]]
    r = client.get("/movies/424242424")
    assert r.status_code == 404 and "not in the store" in r.json()["detail"]


@pytest.mark.parametrize("method,path,kwargs,status", [
    ("get", "/recommend/1", {"params": {"k": 0}}, 422),
    ("get", "/recommend/1", {"params": {"k": 101}}, 422),
    ("get", "/recommend/1", {"params": {"candidates": 5001}}, 422),
    ("get", "/recommend/1", {"params": {"k": "ten"}}, 422),
    ("get", "/recommend/abc", {}, 422),
    ("get", "/recommend/99999999999999999999", {}, 422),
    ("get", "/users/-99999999999999999999", {}, 422),
    ("post", "/score", {"json": {"user_id": 2**64, "movie_ids": [1]}}, 422),
    ("get", "/recommend/1", {"params": {"scorer": "onnx!"}}, 422),
    ("post", "/score", {"json": {"user_id": 1}}, 422),
    ("post", "/score", {"json": {"user_id": 1, "movie_ids": []}}, 422),
    ("post", "/score", {"json": {"user_id": 1, "movie_ids": ["x"]}}, 422),
    ("post", "/score", {"json": {"user_id": True, "movie_ids": [1]}}, 422),      # ids are JSON integers:
    ("post", "/score", {"json": {"user_id": 1, "movie_ids": ["1"]}}, 422),      # not true, "1" or 1.0
    ("post", "/score", {"json": {"user_id": 1, "movie_ids": [1.0]}}, 422),
    ("post", "/score", {"json": {"user_id": 1, "movie_ids": [1], "extra": 1}}, 422),
    ("post", "/score", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422),
    ("post", "/score", {"json": {"user_id": 1, "movie_ids": list(range(5001))}}, 422),
    ("post", "/score", {"content": b"x" * 300_000, "headers": {"content-type": "application/json"}}, 413),
    ("get", "/nope", {}, 404),
])
def test_bad_requests_get_json_4xx(client, method, path, kwargs, status):
    r = getattr(client, method)(path, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json") and "error" in r.json()
    if status == 422:  # one kind for every malformed request, whether FastAPI or a route refused it (k > max_k)
        assert r.json()["error"] == "invalid_request", r.text


def test_a_chunked_body_over_the_limit_is_413(client):
    """A body over the limit without Content-Length (Transfer-Encoding: chunked, as `curl -H 'Transfer-Encoding:
    chunked'` or a streaming client sends it) was a 400 `There was an error parsing the body`: the middleware's
    refusal, raised inside FastAPI's body reading, was caught there as a parse error. Now it is the 413."""
    def chunks():
        for _ in range(3):
            yield b" " * 100_000

    r = client.post("/score", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "body_too_large"
    ok = client.post("/score", content=iter([b'{"user_id": 1, ', b'"movie_ids": [1, 2]}']),
                     headers={"content-type": "application/json"})
    assert ok.status_code == 200 and len(ok.json()["scores"]) == 2, ok.text


def test_health_metrics_info(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["storeVersion"] == 1
    info = client.get("/info").json()
    assert len(info["exampleUsers"]) == 8
    client.get("/recommend/1")
    text = client.get("/metrics").text
    assert 'deepcrossing_requests_total{method="GET",route="/recommend/{user_id}",status="200"}' in text
    assert 'deepcrossing_request_latency_seconds_bucket{le="0.005",route="/recommend/{user_id}"}' in text
    assert f'model_version="{info["modelVersion"]}"' in text and "deepcrossing_model_info{" in text


def test_admin_token(models, sqlite_url):
    with make_client(models, sqlite_url, admin_token="s3cret") as c:
        assert c.post("/admin/reload", json={"model_dir": str(models["root"] / "m1")}).status_code == 401
        bad = c.post("/admin/reload", json={"model_dir": "x"}, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401
        before = c.get("/info").json()["modelVersion"]
        ok = c.post("/admin/reload", json={"model_dir": str(models["root"] / "m1")},
                    headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["modelDir"].endswith("m1")
        missing = c.post("/admin/reload", json={"model_dir": "/nowhere/m9"},
                         headers={"Authorization": "Bearer s3cret"})
        assert missing.status_code == 400 and "no such folder" in missing.json()["detail"]
        assert c.get("/info").json()["modelDir"].endswith("m1") and before is not None
    with make_client(models, sqlite_url, host="0.0.0.0") as c:  # not loopback, no token: refused
        r = c.post("/admin/reload", json={"model_dir": str(models["root"] / "m1")})
        assert r.status_code == 403 and "admin-token" in r.json()["detail"]
    with make_client(models, sqlite_url) as c:  # loopback, no token: allowed
        assert c.post("/admin/reload", json={"model_dir": str(models["root"] / "m1")}).status_code == 200


def raw_get(port: int, path: str) -> tuple[int, bytes]:
    """Send the path exactly as given (no client-side normalization of '..')."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def test_static_page_and_no_path_traversal(models, sqlite_url, server_thread):

    app = create_app(ServingSettings(models["root"] / "m0", sqlite_url))
    with server_thread(app) as server:
        status, body = raw_get(server.port, "/ui/")
        assert status == 200 and b"deepcrossing recommendations" in body
        assert raw_get(server.port, "/")[0] in (302, 307)
        secret = Path(__file__).resolve()
        for path in ("/ui/../app.py", "/ui/..%2fapp.py", "/ui/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                     "/ui/../../../../../../etc/passwd", "/ui//etc/passwd", f"/ui/{secret}"):
            status, body = raw_get(server.port, path)
            assert status in (400, 404), (path, status)
            assert b"root:" not in body and b"create_app" not in body


def test_sqlite_and_redis_give_identical_answers(models, synth_data, sqlite_url, redis_url):
    publish_dataset(synth_data["dataset"], redis_url)
    answers = []
    for url in (sqlite_url, redis_url):
        with make_client(models, url) as c:
            answers.append([c.get(f"/recommend/{u}", params={"k": 10}).json()["items"] for u in (1, 2, 50, 10**9)]
                           + [c.get("/users/3").json()["history"], c.get("/movies/7").json()["neighbours"]])
    assert answers[0] == answers[1]
    assert len(answers[0][0]) == 10


def test_responses_match_their_documented_models(client, models):
    from deepcrossing.serving import schemas

    checks = [
        ("get", "/recommend/1", {"params": {"k": 5}}, schemas.Recommendation),
        ("get", "/recommend/1", {"params": {"k": 5, "scorer": "plain"}}, schemas.Recommendation),
        ("post", "/score", {"json": {"user_id": 1, "movie_ids": [1, 99999999]}}, schemas.Scores),
        ("get", "/users/1", {}, schemas.User),
        ("get", "/users/987654321", {}, schemas.User),
        ("get", "/movies/1", {}, schemas.MovieDetail),
        ("get", "/healthz", {}, schemas.Health),
        ("get", "/readyz", {}, schemas.Ready),
        ("get", "/info", {}, schemas.Info),
        ("post", "/admin/reload", {"json": {"model_dir": str(models["root"] / "m0")}}, schemas.Reloaded),
        ("get", "/recommend/1", {"params": {"k": 0}}, schemas.Error),
        ("get", "/movies/424242424", {}, schemas.Error),
        ("delete", "/score", {}, schemas.Error),
    ]
    for method, path, kwargs, model in checks:
        r = getattr(client, method)(path, **kwargs)
        model.model_validate(r.json())  # strict models (extra keys forbidden): the docs match the answers
    spec = client.get("/openapi.json").json()
    for path, method, name in [("/recommend/{user_id}", "get", "Recommendation"), ("/score", "post", "Scores"),
                               ("/users/{user_id}", "get", "User"), ("/movies/{movie_id}", "get", "MovieDetail"),
                               ("/readyz", "get", "Ready"), ("/info", "get", "Info"),
                               ("/admin/reload", "post", "Reloaded")]:
        responses = spec["paths"][path][method]["responses"]
        assert responses["200"]["content"]["application/json"]["schema"]["$ref"].endswith(f"/{name}")
    assert spec["paths"]["/recommend/{user_id}"]["get"]["responses"]["503"]["content"]["application/json"][
        "schema"]["$ref"].endswith("/Error")
