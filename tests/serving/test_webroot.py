"""``serve --webroot DIR``: a folder of static pages at ``/`` beside the API, over real HTTP, with no path out
of the folder (``..`` however encoded, symlinks to files and folders outside) and the API taking precedence."""

from __future__ import annotations

import http.client
import os
from pathlib import Path

import pytest

from deepcrossing.errors import InputError
from deepcrossing.serving.app import create_app
from deepcrossing.serving.settings import ServingSettings

SECRET = "top-secret-outside-the-webroot"


@pytest.fixture(scope="module")
def webroot(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("web")
    (base / "secret.txt").write_text(SECRET)
    (base / "outside").mkdir()
    (base / "outside" / "inner.txt").write_text(SECRET)
    root = base / "webroot"
    (root / "pages").mkdir(parents=True)
    (root / "index.html").write_text("<html><body>the webroot's home</body></html>")
    (root / "pages" / "movie.html").write_text("<html><body>a movie page</body></html>")
    (root / "getmovie").write_text("a file shadowed by the API route")
    os.symlink(base / "secret.txt", root / "link.txt")           # a symlink to a file outside
    os.symlink(base / "outside", root / "outdir")                 # and to a folder outside
    os.symlink(root / "loop", root / "loop")                      # a symlink loop
    return root


def raw_get(port: int, target: str) -> tuple[int, str, str]:
    """GET the request target exactly as written (no client-side normalisation of ``..`` or ``%2f``)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.getheader("content-type") or "", r.read().decode(errors="replace")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def server(models, sqlite_url, webroot, server_thread):
    app = create_app(ServingSettings(models["root"] / "m0", sqlite_url, webroot=webroot))
    with server_thread(app) as running:
        yield running


def test_pages_are_served_beside_the_api(server):
    status, kind, body = raw_get(server.port, "/")
    assert status == 200 and kind.startswith("text/html") and "the webroot's home" in body
    assert raw_get(server.port, "/pages/movie.html")[2] == "<html><body>a movie page</body></html>"
    assert raw_get(server.port, "/index.html")[0] == 200
    # the API and our own page take precedence over the folder
    status, kind, body = raw_get(server.port, "/getmovie?id=1")
    assert status == 200 and kind.startswith("application/json") and '"movieId":1' in body.replace(" ", "")
    assert raw_get(server.port, "/healthz")[:2] == (200, "application/json")
    status, _, body = raw_get(server.port, "/ui/")
    assert status == 200 and "<html" in body.lower() and "the webroot's home" not in body
    status, kind, body = raw_get(server.port, "/no-such-page.html")
    assert status == 404 and kind.startswith("application/json") and '"not_found"' in body


@pytest.mark.parametrize("target", [
    "/../secret.txt", "/..%2fsecret.txt", "/..%2Fsecret.txt", "/%2e%2e/secret.txt", "/%2e%2e%2fsecret.txt",
    "/pages/../../secret.txt", "/pages/..%2f..%2fsecret.txt", "/pages%2f..%2f..%2fsecret.txt",
    "/..%5csecret.txt", "/link.txt", "/outdir/inner.txt", "/outdir/", "/loop", "/loop/x",
    "/%00", "/pages/%00.html", "/" + "a" * 5000,
])
def test_nothing_outside_the_folder_is_served(server, target):
    status, kind, body = raw_get(server.port, target)
    assert status in (400, 404), (target, status)
    assert SECRET not in body
    if status == 404:
        assert kind.startswith("application/json")


def test_webroot_must_be_a_folder(models, sqlite_url, tmp_path):
    (tmp_path / "file.html").write_text("x")
    for bad in (tmp_path / "missing", tmp_path / "file.html"):
        with pytest.raises(InputError, match="existing folder") as err:
            create_app(ServingSettings(models["root"] / "m0", sqlite_url, webroot=bad))
        assert err.value.field == "webroot"


def test_without_webroot_the_root_leads_to_our_page(models, sqlite_url, server_thread):
    with server_thread(create_app(ServingSettings(models["root"] / "m0", sqlite_url))) as running:
        conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
        conn.request("GET", "/")
        r = conn.getresponse()
        assert r.status in (302, 307) and r.getheader("location") == "/ui/"
        conn.close()


def _ask(port: int, method: str, target: str) -> tuple[int, str | None, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, target)
        r = conn.getresponse()
        return r.status, r.getheader("allow"), r.getheader("content-type") or ""
    finally:
        conn.close()


@pytest.mark.parametrize(("method", "target"), [
    ("HEAD", "/healthz"), ("HEAD", "/getmovie?id=1"), ("HEAD", "/recommend/1"), ("POST", "/getmovie?id=1"),
    ("DELETE", "/readyz"), ("PUT", "/movies/1"), ("GET", "/score"), ("GET", "/admin/reload"),
])
def test_api_paths_asked_with_another_method_are_405_as_without_a_webroot(server, method, target):
    """With --webroot, HEAD /healthz was 404 (the request fell through the routes to the folder, which has
    no such file) and POST /getmovie a 405 allowing "GET, HEAD"; the service without a webroot answers 405
    allowing the route's methods. Now both answer the same."""
    status, allow, kind = _ask(server.port, method, target)
    assert status == 405, (method, target, status)
    assert allow is not None and "HEAD" not in allow and allow in ("GET", "POST"), allow
    if method != "HEAD":
        assert kind.startswith("application/json")


def test_pages_still_answer_head(server):
    assert _ask(server.port, "HEAD", "/index.html")[0] == 200
    assert _ask(server.port, "HEAD", "/no-such-page.html")[0] == 404
    assert _ask(server.port, "POST", "/index.html")[:2] == (405, "GET, HEAD")
