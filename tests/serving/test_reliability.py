"""Under real HTTP load: model reloads and store publishes drop nothing; a Redis outage gives fast 503s and
the service recovers by itself when Redis is back."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import pytest

from deepcrossing.serving.app import create_app
from deepcrossing.serving.publish import publish_dataset
from deepcrossing.serving.settings import ServingSettings


def hammer(base: str, n_threads: int, stop: threading.Event, results: list, path_of) -> list[threading.Thread]:
    """Closed-loop clients that record (status, modelVersion, storeVersion) per request until ``stop``."""

    def run(i: int) -> None:
        with httpx.Client(base_url=base, timeout=10) as client:
            n = 0
            while not stop.is_set():
                try:
                    r = client.get(path_of(i, n))
                    body = r.json()
                    results.append((r.status_code, body.get("modelVersion"), body.get("storeVersion")))
                except Exception as exc:
                    results.append((repr(exc), None, None))
                n += 1

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n_threads)]
    for t in threads:
        t.start()
    return threads


@contextlib.contextmanager
def stopping(stop: threading.Event, threads: list[threading.Thread]):
    """Stop and join the load threads however the block ends."""
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)


@pytest.mark.slow
def test_reload_and_publish_under_load_drop_nothing(models, synth_data, tmp_path, server_thread):

    url = f"sqlite:///{tmp_path / 'f.db'}"
    publish_dataset(synth_data["dataset"], url)
    root = models["root"]
    app = create_app(ServingSettings(root / "m0", url, poll_interval_s=0.1))
    with server_thread(app) as server:
        stop, results = threading.Event(), []
        threads = hammer(server.url, 4, stop, results, lambda i, n: f"/recommend/{(i * 37 + n) % 150 + 1}?k=10")
        versions = []
        with httpx.Client(base_url=server.url, timeout=30) as admin, stopping(stop, threads):
            for target in ("m1", "m0", "m1"):
                time.sleep(0.4)
                r = admin.post("/admin/reload", json={"model_dir": str(root / target)})
                assert r.status_code == 200, r.text
                versions.append(r.json()["modelVersion"])
            time.sleep(0.3)
            publish_dataset(synth_data["dataset"], url, keep_previous_s=0.5)  # store version 2 mid-run
            deadline = time.monotonic() + 20
            while admin.get("/info").json()["storeVersion"] != 2:
                assert time.monotonic() < deadline, "the service did not adopt store version 2"
                time.sleep(0.05)
            time.sleep(0.3)
    statuses = [r[0] for r in results]
    assert len(results) > 100
    assert statuses.count(200) == len(results), {s for s in statuses if s != 200}
    seen_models = {r[1] for r in results}
    assert set(versions) <= seen_models and len(seen_models) == 2  # both models served, nothing else
    assert {r[2] for r in results} == {1, 2} and results[-1][2] == 2


def test_redis_outage_fails_fast_then_recovers(models, synth_data, redis_server, redis_url, server_thread):

    publish_dataset(synth_data["dataset"], redis_url)
    app = create_app(ServingSettings(models["root"] / "m0", redis_url, poll_interval_s=0.1))
    with server_thread(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.get("/recommend/1").status_code == 200
        redis_server.kill()
        try:
            for _ in range(5):
                t0 = time.perf_counter()
                r = client.get("/recommend/1")
                assert r.status_code == 503 and r.json()["error"] == "store_unavailable"
                assert time.perf_counter() - t0 < 1.0  # fail fast, no hanging
            assert client.get("/readyz").status_code == 503
            assert client.get("/healthz").status_code == 200
        finally:
            redis_server.start()  # same port and append-only file: the data is back
        deadline = time.monotonic() + 10
        while client.get("/recommend/1").status_code != 200:
            assert time.monotonic() < deadline, "the service did not recover after Redis came back"
            time.sleep(0.05)
        assert client.get("/readyz").status_code == 200
        assert len(client.get("/recommend/2", params={"k": 7}).json()["items"]) == 7
        metrics = client.get("/metrics").text
        assert 'route="/recommend/{user_id}",status="503"' in metrics
