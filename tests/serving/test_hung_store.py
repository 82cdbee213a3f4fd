"""A hung store never blocks the event loop: /healthz answers at once while a request waits, and the waiting
request gets a JSON 503 after the store timeout. Real Redis behind a real loopback TCP relay that can hang."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import httpx
import pytest

from deepcrossing.serving.app import create_app
from deepcrossing.serving.offload import StoreCalls
from deepcrossing.serving.publish import publish_dataset
from deepcrossing.serving.settings import ServingSettings
from deepcrossing.serving.store import RedisStore, StoreUnavailable


class HangingRelay:
    """A TCP relay on 127.0.0.1 to a real server; while :attr:`hung` is set it accepts and reads but never
    answers (what a stuck Redis looks like from the client)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.hung = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if not self.hung.is_set():  # hung: swallow, never answer
                    dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        self._stop = True
        self.listener.close()


def test_store_calls_time_out_without_blocking():
    import asyncio

    release = threading.Event()

    async def scenario():
        calls = StoreCalls(timeout=0.2, workers=1, max_pending=2)
        t0 = time.perf_counter()
        hung = asyncio.ensure_future(calls.run(release.wait, 5))
        await asyncio.sleep(0.05)
        ticks = 0
        while not hung.done():  # the loop keeps running while the call hangs
            await asyncio.sleep(0.01)
            ticks += 1
        with pytest.raises(StoreUnavailable, match="did not answer within 0.2 s"):
            hung.result()
        waited = time.perf_counter() - t0
        second = asyncio.ensure_future(calls.run(release.wait, 5))  # queued behind the hung call
        await asyncio.sleep(0)
        with pytest.raises(StoreUnavailable, match="already waiting"):  # bounded: refused at once
            await calls.run(release.wait, 5)
        release.set()
        assert await second is True and await calls.run(sum, [1, 2]) == 3
        calls.close()
        return waited, ticks

    waited, ticks = asyncio.run(scenario())
    assert 0.15 < waited < 0.6 and ticks >= 10


def test_redis_socket_timeout_on_a_hung_server(redis_server, redis_url):
    relay = HangingRelay(redis_server.port)
    try:
        store = RedisStore(f"redis://127.0.0.1:{relay.port}/0", timeout=0.3)
        store.ping()
        relay.hung.set()
        t0 = time.perf_counter()
        with pytest.raises(StoreUnavailable, match="unavailable"):
            store.current()
        assert time.perf_counter() - t0 < 1.0
        store.close()
    finally:
        relay.close()


def test_hung_redis_never_blocks_the_event_loop(models, synth_data, redis_server, redis_url, server_thread):
    publish_dataset(synth_data["dataset"], redis_url)
    relay = HangingRelay(redis_server.port)
    url = f"redis://127.0.0.1:{relay.port}/0"
    app = create_app(ServingSettings(models["root"] / "m0", url, store_timeout_s=0.5, poll_interval_s=0.1))
    try:
        with server_thread(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.get("/recommend/1").status_code == 200
            relay.hung.set()
            waiting: dict = {}

            def slow_request() -> None:
                t0 = time.perf_counter()
                r = httpx.get(f"{server.url}/recommend/2", timeout=10)
                waiting.update(status=r.status_code, body=r.json(), seconds=time.perf_counter() - t0)

            thread = threading.Thread(target=slow_request)
            thread.start()
            time.sleep(0.1)  # the request now waits on the hung store
            health_s = []
            for _ in range(3):
                t0 = time.perf_counter()
                assert client.get("/healthz").json() == {"status": "ok"}
                health_s.append(time.perf_counter() - t0)
            movie = client.get("/movies/1")  # needs no store call: served from the snapshot meanwhile
            thread.join(timeout=10)
            ready = client.get("/readyz")
            relay.hung.clear()
            deadline = time.monotonic() + 10
            while client.get("/recommend/3").status_code != 200:  # recovers by itself
                assert time.monotonic() < deadline, "the service did not recover"
                time.sleep(0.05)
    finally:
        relay.close()
    assert max(health_s) < 0.25, health_s
    assert movie.status_code == 200
    assert waiting["status"] == 503 and waiting["body"]["error"] == "store_unavailable", waiting
    assert 0.4 < waiting["seconds"] < 2.0, waiting
    assert ready.status_code == 503 and ready.json()["ready"] is False
