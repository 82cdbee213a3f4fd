"""HTTP API fuzz test: >= 2,000 generated requests over every route (random paths, ids beyond int64,
negative/huge k and candidates, junk JSON bodies, wrong methods, odd query strings) against a real model and
SQLite store: zero 500s, zero crashes, and every error answer is JSON."""

from __future__ import annotations

import json
import urllib.parse

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from deepcrossing.serving.app import create_app
from deepcrossing.serving.settings import ServingSettings

N_REQUESTS = 2000
ROUTES = ["/recommend/{id}", "/score", "/users/{id}", "/movies/{id}", "/healthz", "/readyz", "/info", "/metrics",
          "/admin/reload", "/", "/ui/", "/ui/app.js", "/docs", "/openapi.json",
          # the SparrowRecSys-compatible routes (their parameters come from the query: see queries())
          "/getrecommendation", "/getrecforyou", "/getsimilarmovie", "/getmovie", "/getuser",
          "/getmovie?id={id}", "/getuser?id={id}", "/getrecforyou?id={id}&size=5",
          "/getsimilarmovie?movieId={id}&size=5", "/getrecommendation?genre={id}&size=5"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
EDGE_INTS = [0, 1, -1, 5000, 5001, 100, 101, 2**31, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**30, -(10**30)]

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
ints = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from(EDGE_INTS), st.integers(-3, 1000))
scalars = st.one_of(ints, text, st.floats(allow_nan=True, allow_infinity=True).map(repr), st.just(""))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), ints, st.floats(allow_nan=False, allow_infinity=False), text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=12,
)


def quote(value: object) -> str:
    return urllib.parse.quote(str(value), safe="")


@st.composite
def paths(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 4)) == 0:  # a random path
        return "/" + "/".join(quote(s) for s in draw(st.lists(text, max_size=4)))
    route = draw(st.sampled_from(ROUTES))
    return route.replace("{id}", quote(draw(scalars)))


@st.composite
def queries(draw: st.DrawFn) -> str:
    keys = st.one_of(st.sampled_from(["k", "candidates", "scorer", "neighbours", "user_id", "id", "size", "genre",
                                      "sortby", "model", "movieId", "channels"]), text)
    pairs = draw(st.lists(st.tuples(keys, scalars), max_size=4))
    query = "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs)
    odd = draw(st.sampled_from(["", "&", "&&==", "k", "k=", "=1", "k=1&k=2", "scorer=plain", "scorer=fast&k=5",
                                "id=1&size=3", "genre=Drama&size=3&sortby=releaseYear", "model=emb", "model=nerualcf",
                                "sortby=rating", "size=1000", "size=1001", "movieId=1&size=2", "genre=Drama",
                                "channels=popularity:5", "channels=genres:3,popularity:2", "channels=emb:5",
                                "channels=bogus:1", "channels=popularity:0", "channels=popularity:99999",
                                "channels=genres", "channels=,", "channels=popularity:2,popularity:3"]))
    return "&".join(p for p in (query, odd) if p)


@st.composite
def bodies(draw: st.DrawFn) -> dict:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return {}
    if kind == 1:  # a well-formed /score body with edge values
        return {"json": {"user_id": draw(ints), "movie_ids": draw(st.lists(ints, max_size=6))}}
    if kind == 2:  # junk JSON
        return {"json": draw(json_values)}
    if kind == 3:  # bytes that are not JSON, sent as JSON
        return {"content": draw(st.binary(max_size=64)), "headers": {"content-type": "application/json"}}
    if kind == 4:  # a reload body naming folders that are not models
        return {"json": {"model_dir": draw(st.one_of(text, st.sampled_from([".", "/", "/nonexistent", "src"])))}}
    return {"content": json.dumps({"user_id": 1, "movie_ids": [1] * draw(st.integers(0, 6000))}).encode(),
            "headers": {"content-type": "application/json"}}


@pytest.fixture(scope="module")
def client(models, sqlite_url):
    app = create_app(ServingSettings(models["root"] / "m0", sqlite_url))
    with TestClient(app, raise_server_exceptions=True, follow_redirects=False) as c:
        yield c


def test_http_api_fuzz(client):
    answered: list[int] = []

    @settings(max_examples=N_REQUESTS, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(method=st.sampled_from(METHODS), path=paths(), query=queries(), body=bodies())
    def one_request(method: str, path: str, query: str, body: dict) -> None:
        if method in ("GET", "HEAD", "OPTIONS", "DELETE") and body.get("content", b"")[:1] == b"{":
            body = {}
        target = path + (("&" if "?" in path else "?") + query if query else "")
        try:
            r = client.request(method, target, **body)
        except httpx.InvalidURL:
            reject()  # the client refuses to send it; nothing reached the service
        answered.append(r.status_code)
        assert r.status_code < 500, (method, target, r.status_code, r.text[:300])
        if r.status_code >= 400 and method != "HEAD":
            assert r.headers["content-type"].startswith("application/json"), (method, path, r.text[:200])
            assert "error" in r.json()

    one_request()
    assert len(answered) >= N_REQUESTS
    assert {200, 404, 405, 422} <= set(answered), sorted(set(answered))


@pytest.fixture(scope="module")
def webroot_client(models, sqlite_url, tmp_path_factory):
    """The service with a webroot (serve --webroot): every path the routes do not take goes to the folder."""
    root = tmp_path_factory.mktemp("webroot")
    (root / "index.html").write_text("<html>home</html>")
    (root / "sub").mkdir()
    (root / "sub" / "page.html").write_text("<html>page</html>")
    app = create_app(ServingSettings(models["root"] / "m0", sqlite_url, webroot=root))
    with TestClient(app, raise_server_exceptions=True, follow_redirects=False) as c:
        yield c


def test_http_fuzz_with_a_webroot(webroot_client):
    answered: list[int] = []
    names = st.sampled_from(["", ".", "..", "sub", "page.html", "index.html", "%2e%2e", "..%2f", "getmovie", "%00"])

    @settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(method=st.sampled_from(METHODS), parts=st.lists(st.one_of(names, text.map(quote)), max_size=4),
           query=queries())
    def one_request(method: str, parts: list[str], query: str) -> None:
        target = "/" + "/".join(parts) + (f"?{query}" if query else "")
        try:
            r = webroot_client.request(method, target)
        except httpx.InvalidURL:
            reject()
        answered.append(r.status_code)
        assert r.status_code < 500, (method, target, r.status_code, r.text[:300])
        if r.status_code >= 400 and method != "HEAD":
            assert r.headers["content-type"].startswith("application/json"), (method, target, r.text[:200])

    one_request()
    assert {200, 404, 405} <= set(answered), sorted(set(answered))
