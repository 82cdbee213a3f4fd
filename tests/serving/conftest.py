"""Serving fixtures: a real redis-server on a free loopback port, free ports, and a small published model."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Block until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class RedisServer:
    """A real redis-server process on 127.0.0.1 with an append-only file, so a restart keeps the data.

    Args:
        workdir: folder for the AOF and the log.
        port: loopback port.
    """

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir),
             "--logfile", str(self.workdir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server for the whole session (skipped with a reason when not installed, failed in CI)."""
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("redis-server is missing, but CI installs it (.ci/run: apt-get install redis-server)")
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis"), free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def redis_url(redis_server):
    """A clean database 0 of the session's Redis for one test."""
    import redis

    if redis_server.proc is None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.close()
    return redis_server.url


# ---------------------------------------------------------------- data and a small model

@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """20,000 seeded synthetic ratings as a normalized Dataset, plus train samples (time split)."""
    from deepcrossing.data import load_dataset
    from deepcrossing.data.synth import generate
    from deepcrossing.features import FeatureConfig, build_samples

    root = tmp_path_factory.mktemp("synth")
    generate(20_000, root / "raw", seed=3)
    dataset = load_dataset(root / "raw", workdir=root / "work")
    build_samples(dataset, FeatureConfig(), root / "samples")
    return {"root": root, "raw": root / "raw", "dataset": dataset, "samples": root / "samples"}


def build_loaded(samples_dir: Path, mlp: str = "residual", seed: int = 0, steps: int = 30):
    """An in-process model like ``deepcrossing.load`` returns: encoder fitted on train, a few Adam steps.

    Used to test the scorer against every MLP shape without going through files.
    """
    import types

    import pyarrow.parquet as pq
    import torch

    from deepcrossing.config import Feature, FeatureSpec, ModelConfig, load_builtin
    from deepcrossing.encoding.encoder import Encoder
    from deepcrossing.model.deep_crossing import DeepCrossing

    # The built-in spec plus id features (user, movie, recent movies through the movie table), so that the
    # serving tests also cover embedded ids, shared tables and the OOV rows.
    builtin = load_builtin("movielens").spec
    names = {f.name for f in builtin.features}
    ids = [Feature("userId", "categorical", "user", min_count=2, dim=4),
           Feature("movieId", "categorical", "item", table="movie", min_count=2, dim=8),
           Feature("userRecentPositives", "multi_hot", "user", table="movie", max_len=10)]
    spec = FeatureSpec(tuple(builtin.features) + tuple(f for f in ids if f.name not in names))
    config = types.SimpleNamespace(spec=spec)
    train = pq.read_table(samples_dir / "train.parquet")
    encoder = Encoder(config.spec).fit(train)
    torch.manual_seed(seed)
    model_config = {
        "residual": ModelConfig(mlp="residual", hidden=(32, 32), width=24, dropout=0.0, embedding_dropout=0.0),
        "residual_noproj": ModelConfig(mlp="residual", hidden=(32,), width=0, dropout=0.0,
                                       embedding_dropout=0.0),
        "plain": ModelConfig(mlp="plain", hidden=(32, 16), dropout=0.0, embedding_dropout=0.0, norm="layer"),
    }[mlp]
    model = DeepCrossing(config.spec, model_config, encoder.cardinalities)
    batch = encoder.transform(train)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        index = torch.randint(0, len(batch), (512,))
        part = batch.take(index)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(part), part.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return types.SimpleNamespace(model=model, encoder=encoder, spec=config.spec, manifest={})


@pytest.fixture(scope="session")
def make_loaded():
    """:func:`build_loaded` as a fixture (test modules here are not a package)."""
    return build_loaded


@pytest.fixture(scope="session")
def models(synth_data):
    """Two different model folders written by ``training.artifact.save``: ``m0`` (residual) and ``m1`` (plain)."""
    from deepcrossing.config import TrainConfig
    from deepcrossing.training.artifact import save

    root = synth_data["root"]
    built = {"m0": build_loaded(synth_data["samples"], "residual", seed=0),
             "m1": build_loaded(synth_data["samples"], "plain", seed=1)}
    for name, loaded in built.items():
        save(root / name, loaded.model, loaded.encoder, TrainConfig())
    return {"built": built, "root": root}


@pytest.fixture(scope="session")
def sqlite_url(synth_data):
    """The synthetic data published once into a SQLite store."""
    from deepcrossing.serving.publish import publish_dataset

    url = f"sqlite:///{synth_data['root'] / 'features.db'}"
    publish_dataset(synth_data["dataset"], url)
    return url


class ServerThread:
    """uvicorn serving an app on 127.0.0.1:port in a thread (real HTTP over loopback)."""

    def __init__(self, app, port: int | None = None) -> None:
        import threading

        import uvicorn

        self.port = port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="session")
def server_thread():
    """The :class:`ServerThread` class."""
    return ServerThread


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless Debian Chromium driven by selenium (skipped locally when absent; a failure under CI)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        if IN_CI:
            pytest.fail("chromium/chromedriver missing, but CI installs them (apt-get install chromium "
                        "chromium-driver)")
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
