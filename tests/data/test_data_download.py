"""Download over real loopback HTTP: a zip the test builds, served by http.server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from deepcrossing.data import download, find_cached_movielens
from deepcrossing.data.download import DATASETS, default_cache
from deepcrossing.errors import InputError


def make_zip(folder: str, files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in files.items():
            archive.writestr(f"{folder}/{name}", text)
    return buf.getvalue()


SMALL = make_zip("ml-latest-small", {"ratings.csv": "userId,movieId,rating,timestamp\n1,1,4.0,10\n",
                                     "movies.csv": "movieId,title,genres\n1,Toy Story (1995),Comedy\n"})


class Server:
    """Serves ``routes`` (path -> bytes); ``truncate`` paths announce the full length but send half."""

    def __init__(self) -> None:
        self.routes: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.hits: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits.append(self.path)
                body = outer.routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path in outer.truncate else body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/movielens"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def serve(self, name: str, body: bytes, md5: str | None = None) -> None:
        self.routes[f"/movielens/{name}.zip"] = body
        digest = md5 or hashlib.md5(body).hexdigest()
        self.routes[f"/movielens/{name}.zip.md5"] = f"MD5 ({name}.zip) = {digest}\n".encode()


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_download_extracts_and_caches(server: Server, tmp_path: Path) -> None:
    server.serve("ml-latest-small", SMALL)
    seen: list[tuple[int, int | None]] = []
    folder = download("ml-latest-small", cache=tmp_path, base_url=server.url,
                      progress=lambda done, total: seen.append((done, total)))
    assert folder == tmp_path / "ml-latest-small"
    assert (folder / "ratings.csv").read_text().splitlines()[1] == "1,1,4.0,10"
    assert seen[-1] == (len(SMALL), len(SMALL))
    assert leftovers(tmp_path) == ["ml-latest-small"]          # zip and .part gone
    assert server.hits == ["/movielens/ml-latest-small.zip.md5", "/movielens/ml-latest-small.zip"]
    # cached: no network at all
    assert download("ml-latest-small", cache=tmp_path, base_url="http://127.0.0.1:9/none") == folder
    assert find_cached_movielens(tmp_path) == folder


def test_checksum_mismatch_leaves_nothing(server: Server, tmp_path: Path) -> None:
    server.serve("ml-latest-small", SMALL, md5="0" * 32)
    with pytest.raises(InputError, match="checksum mismatch") as err:
        download("ml-latest-small", cache=tmp_path, base_url=server.url)
    assert "0" * 32 in str(err.value) and hashlib.md5(SMALL).hexdigest() in str(err.value)
    assert leftovers(tmp_path) == []


def test_pinned_checksum_catches_a_corrupted_zip(server: Server, tmp_path: Path) -> None:
    # ml-100k's digest is pinned: the served .md5 is never consulted
    body = make_zip("ml-100k", {"u.data": "1\t1\t3\t5\n"})
    server.serve("ml-100k", body)
    with pytest.raises(InputError, match="checksum mismatch"):
        download("ml-100k", cache=tmp_path, base_url=server.url)
    assert server.hits == ["/movielens/ml-100k.zip"]
    assert leftovers(tmp_path) == []


def test_interrupted_download(server: Server, tmp_path: Path) -> None:
    server.serve("ml-latest-small", SMALL)
    server.truncate.add("/movielens/ml-latest-small.zip")
    with pytest.raises(InputError, match="failed after|cut short") as err:
        download("ml-latest-small", cache=tmp_path, base_url=server.url, timeout=5)
    assert "run the command again" in str(err.value)
    assert leftovers(tmp_path) == []


def test_corrupted_zip_with_matching_checksum(server: Server, tmp_path: Path) -> None:
    body = bytearray(SMALL)
    body[40:60] = b"\xff" * 20                 # damage the first member's compressed data
    server.serve("ml-latest-small", bytes(body))
    with pytest.raises(InputError, match="ratings.csv is corrupted inside the zip"):
        download("ml-latest-small", cache=tmp_path, base_url=server.url)
    assert leftovers(tmp_path) == []


def test_http_errors_and_unknown_name(server: Server, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot fetch the published checksum"):
        download("ml-latest-small", cache=tmp_path, base_url=server.url)
    with pytest.raises(InputError, match="unknown dataset 'ml-5m'") as err:
        download("ml-5m", cache=tmp_path)
    assert "ml-25m" in str(err.value)
    assert leftovers(tmp_path) == []


def test_cache_location_and_preference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPCROSSING_HOME", str(tmp_path / "home"))
    assert default_cache() == tmp_path / "home" / "datasets"
    assert find_cached_movielens() is None
    (tmp_path / "home/datasets/ml-1m").mkdir(parents=True)
    (tmp_path / "home/datasets/ml-1m/ratings.dat").write_text("1::1::5::1\n")
    assert find_cached_movielens() == tmp_path / "home/datasets/ml-1m"
    (tmp_path / "home/datasets/ml-latest-small").mkdir()
    (tmp_path / "home/datasets/ml-latest-small/ratings.csv").write_text("x\n")
    assert find_cached_movielens() == tmp_path / "home/datasets/ml-latest-small"
    assert {"ml-latest-small", "ml-100k", "ml-1m", "ml-25m"} <= set(DATASETS)


def test_a_persons_folder_in_the_cache_is_never_deleted(server: Server, tmp_path: Path) -> None:
    """`data download ml-latest-small --cache C` where C/ml-latest-small was a person's own folder (notes, no
    ratings.csv) deleted it whole (shutil.rmtree) and put the release there; with --force, notes added to a
    download went the same way. Now both are refused and the folder is untouched; a download of ours is still
    replaced by --force."""
    server.serve("ml-latest-small", SMALL)
    own = tmp_path / "ml-latest-small"
    own.mkdir()
    (own / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="holds notes.txt, not part of the release"):
        download("ml-latest-small", cache=tmp_path, base_url=server.url)
    assert sorted(p.name for p in own.iterdir()) == ["notes.txt"] and server.hits == []

    (own / "notes.txt").unlink()
    folder = download("ml-latest-small", cache=tmp_path, base_url=server.url)  # an empty folder is fine
    (folder / "analysis.ipynb").write_text("mine")
    with pytest.raises(InputError, match="holds analysis.ipynb, not part of the release"):
        download("ml-latest-small", cache=tmp_path, base_url=server.url, force=True)
    assert (folder / "analysis.ipynb").read_text() == "mine" and (folder / "ratings.csv").exists()
    assert leftovers(tmp_path) == ["ml-latest-small"]
    (folder / "analysis.ipynb").unlink()
    assert download("ml-latest-small", cache=tmp_path, base_url=server.url, force=True) == folder
