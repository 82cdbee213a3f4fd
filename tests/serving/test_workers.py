"""`deepcrossing serve --workers 2`: real worker processes share the port, a reload reaches all of them, and
/metrics counts the requests of every worker; the control folder and settings hand-off they rely on."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from deepcrossing.errors import InputError
from deepcrossing.serving.app import create_app
from deepcrossing.serving.control import Control
from deepcrossing.serving.settings import ServingSettings


def _fresh(base: str, path: str) -> httpx.Response:
    """One request on a new connection, so the kernel may hand it to either worker."""
    return httpx.get(base + path, headers={"Connection": "close"}, timeout=30)


def _metric_samples(text: str, name: str) -> list[tuple[dict, float]]:
    out = []
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line[:line.rindex("}")]))
            out.append((labels, float(line.rsplit(" ", 1)[1])))
    return out


def _serving_pids(base: str, model_version: str) -> set[str]:
    samples = _metric_samples(_fresh(base, "/metrics").text, "deepcrossing_model_info")
    return {labels["pid"] for labels, value in samples if value == 1 and labels["model_version"] == model_version}


@pytest.fixture()
def two_workers(models, sqlite_url, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepcrossing.cli", "serve", "--model", str(models["root"] / "m0"), "--store",
         sqlite_url, "--port", str(port), "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if _fresh(base, "/readyz").status_code == 200:  # both up once two pids report the model
                if len(_serving_pids(base, _fresh(base, "/info").json()["modelVersion"])) == 2:
                    break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"serve --workers 2 did not start:\n{proc.stdout.read()}")
        time.sleep(0.2)
    yield base
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


@pytest.mark.slow
def test_two_workers_share_reloads_and_metrics(two_workers, models):
    base = two_workers
    m0_version = _fresh(base, "/info").json()["modelVersion"]
    assert len(_serving_pids(base, m0_version)) == 2

    for i in range(60):
        r = _fresh(base, f"/recommend/{i % 40 + 1}?k=5")
        assert r.status_code == 200 and r.json()["modelVersion"] == m0_version
    counts = _metric_samples(_fresh(base, "/metrics").text, "deepcrossing_requests_total")
    recommends = sum(v for labels, v in counts if labels["route"] == "/recommend/{user_id}")
    assert recommends == 60  # summed over both workers, whichever answered the scrape

    r = httpx.post(base + "/admin/reload", json={"model_dir": str(models["root"] / "m1")}, timeout=60)
    assert r.status_code == 200, r.text
    m1_version = r.json()["modelVersion"]
    assert m1_version != m0_version and r.json()["workers"] == 2
    deadline = time.monotonic() + 30
    while len(_serving_pids(base, m1_version)) < 2:  # the other worker follows through the control folder
        assert time.monotonic() < deadline, "the second worker did not adopt the reloaded model"
        time.sleep(0.1)
    assert _serving_pids(base, m0_version) == set()
    versions = {_fresh(base, f"/recommend/{i + 1}").json()["modelVersion"] for i in range(30)}
    assert versions == {m1_version}


def _listening_sockets(pid: int, port: int) -> set[str]:
    """The inodes of the TCP sockets listening on ``port`` that process ``pid`` holds (Linux /proc)."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":   # 0A: LISTEN
                listening.add(fields[9])
    held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    return {inode for inode in listening if f"socket:[{inode}]" in held}


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT spreads connections on Linux only")
def test_keep_alive_connections_reach_every_worker(two_workers):
    """Each worker listens on its own socket: with one shared socket the first worker awake accepted every
    connection opened at once, and keep-alive clients then never reached the other (serving/workers.py)."""
    base = two_workers
    pids = [int(p) for p in _serving_pids(base, _fresh(base, "/info").json()["modelVersion"])]
    port = int(base.rsplit(":", 1)[1])
    own = [_listening_sockets(p, port) for p in pids]
    assert all(len(sockets) == 1 for sockets in own) and own[0] != own[1], own   # one listener each, not shared
    before = {p: _cpu_seconds(p) for p in pids}

    async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        length = int(head.split("content-length:", 1)[1].split("\r\n", 1)[0])
        await reader.readexactly(length)
        return int(head.split(" ", 2)[1])

    async def load() -> list[int]:   # 64 keep-alive connections opened at once, then 6 requests on each
        streams = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(64)))

        async def work(i: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> list[int]:
            codes = [await get(reader, writer, f"/recommend/{(i + r) % 40 + 1}?k=5") for r in range(6)]
            writer.close()
            return codes

        done = await asyncio.gather(*(work(i, r, w) for i, (r, w) in enumerate(streams)))
        return [code for codes in done for code in codes]

    assert asyncio.run(load()) == [200] * 64 * 6
    used = {p: _cpu_seconds(p) - before[p] for p in pids}
    # and both serve: 64 connections hashed over 2 sockets, a split worse than 14:50 has probability ~1e-5 (the
    # shared socket balanced 64 connections too, but not the 8 of benchmarks/serve.py: 10.2 vs 0.03 CPU-s)
    assert min(used.values()) > 0.3 * max(used.values()), used


def test_a_worker_started_after_a_reload_serves_the_reloaded_model(models, sqlite_url, tmp_path):
    control = Control(tmp_path / "control")
    control.write_model(models["root"] / "m1")
    settings = ServingSettings(models["root"] / "m0", sqlite_url, control_dir=control.folder, workers=2)
    with TestClient(create_app(settings)) as client:
        assert client.get("/info").json()["modelDir"] == str(models["root"] / "m1")


def test_control_file_generations_increase_and_bad_files_are_named(tmp_path):
    control = Control(tmp_path)
    first = control.write_model(tmp_path / "a")
    second = control.write_model(tmp_path / "b")
    assert second > first and control.read() == (second, tmp_path / "b")
    control.model_file.write_text("{not json")
    with pytest.raises(InputError, match="model.json"):
        control.read()


def test_settings_round_trip_through_json(tmp_path):
    settings = ServingSettings(tmp_path / "m", "sqlite:///x.db", workers=2, control_dir=tmp_path / "c",
                               admin_token="t", max_k=7)
    assert ServingSettings.from_json(settings.to_json()) == settings
    with pytest.raises(InputError, match="unknown ServingSettings key 'colour'"):
        ServingSettings.from_json('{"model_dir": "m", "store_url": "sqlite:///x.db", "colour": 1}')


def test_workers_on_a_port_in_use_is_one_clear_error(models, sqlite_url):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "deepcrossing.cli", "serve", "--model", str(models["root"] / "m0"), "--store",
             sqlite_url, "--port", str(port), "--workers", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"error: cannot listen on 127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr
