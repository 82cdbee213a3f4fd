"""One-line errors, never tracebacks or empty databases: serve/recommend on a never-published store, bad store
URLs; a reload of a model with NaN weights is refused with a JSON 4xx and the old model keeps serving."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from deepcrossing.serving.app import create_app
from deepcrossing.serving.settings import ServingSettings
from deepcrossing.serving.store import StoreConfigError, open_store

SRC = str(Path(__file__).resolve().parents[2] / "src")


def cli(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-m", "deepcrossing.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """The console entry point in-process (as `deepcrossing ...` runs it): exit status and stderr."""
    from deepcrossing.cli import main

    monkeypatch.setattr(sys, "argv", ["deepcrossing", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code, capsys.readouterr().err


CASES = [
    ("redis://127.0.0.1:{redis_port}/99", "refuses the database number"),
    ("redis://h:notaport/0", "bad port"),
    ("redis://h:99999/0", "bad port"),
    ("redis://127.0.0.1:{redis_port}/abc", "not a number"),
    ("postgres://x/y", "is not sqlite:///path.db or redis://host:port/db"),
    ("sqlite:///{tmp}/missing/f.db", "does not exist"),
    ("sqlite:///{tmp}/never.db", "does not exist; run `deepcrossing publish`"),
    ("sqlite:///{tmp}/empty.db", "nothing published yet"),
]


@pytest.mark.parametrize("url,message", CASES)
@pytest.mark.parametrize("verb", ["serve", "recommend"])
def test_bad_or_empty_store_is_one_line(verb, url, message, models, redis_server, tmp_path, monkeypatch, capsys):
    import sqlite3

    sqlite3.connect(tmp_path / "empty.db").close()  # a database file that holds no store
    url = url.format(redis_port=redis_server.port, tmp=tmp_path)
    before = sorted(tmp_path.iterdir())
    extra = ["--user", "1"] if verb == "recommend" else ["--port", "1"]
    code, err = run_cli(monkeypatch, capsys, verb, "--model", str(models["root"] / "m0"), "--store", url, *extra)
    assert code == 2, err
    err = " ".join(err.split())  # rich wraps long lines for the terminal width
    assert err.startswith("error:") and message in err and "Traceback" not in err, err
    assert sorted(tmp_path.iterdir()) == before  # no database created


def test_serve_never_published_in_a_real_process(models, tmp_path):
    r = cli("serve", "--model", str(models["root"] / "m0"), "--store", f"sqlite:///{tmp_path}/f.db")
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr, r.stderr
    assert "does not exist" in r.stderr and list(tmp_path.iterdir()) == []


def test_open_store_checks_urls(tmp_path):
    for url in ("redis://h:notaport/0", "redis://h/x", "mysql://x", f"sqlite:///{tmp_path}/nope/f.db",
                f"sqlite:///{tmp_path}", "sqlite://"):
        with pytest.raises(StoreConfigError):
            open_store(url)
    assert not (tmp_path / "nope").exists()


def test_reload_of_nan_weights_is_refused(models, sqlite_url, tmp_path):
    from deepcrossing.config import TrainConfig
    from deepcrossing.training.artifact import save

    built = models["built"]["m1"]
    broken = copy.deepcopy(built.model)
    with torch.no_grad():
        next(p for p in broken.parameters() if p.dim() == 2).view(-1)[0] = float("nan")
    save(tmp_path / "nan", broken, built.encoder, TrainConfig())
    app = create_app(ServingSettings(models["root"] / "m0", sqlite_url))
    with TestClient(app) as client:
        before = client.get("/info").json()["modelVersion"]
        r = client.post("/admin/reload", json={"model_dir": str(tmp_path / "nan")})
        assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")
        assert r.json()["error"] == "reload_refused" and "NaN or inf" in r.json()["detail"]
        assert client.get("/info").json()["modelVersion"] == before
        ok = client.get("/recommend/1", params={"k": 5})
        assert ok.status_code == 200 and all(0 < i["score"] < 1 for i in ok.json()["items"])
        for body in ({"model_dir": str(tmp_path)}, {"model_dir": "/nonexistent"}, {"model_dir": sqlite_url}):
            r = client.post("/admin/reload", json=body)
            assert r.status_code == 400 and r.json()["error"] == "reload_refused"
        assert client.get("/info").json()["modelVersion"] == before


def test_publish_never_writes_into_someone_elses_database(models, synth_data, tmp_path, monkeypatch, capsys):
    """`publish --store sqlite:///app.db` where app.db is a person's own database added nine dc_* tables to it
    and switched it to WAL; now it is refused, the file untouched. A new file, an empty one and a store of
    ours are still written."""
    import hashlib
    import sqlite3

    own = tmp_path / "app.db"
    with sqlite3.connect(own) as conn:
        conn.execute("CREATE TABLE users (id INTEGER, name TEXT)")
        conn.execute("INSERT INTO users VALUES (1, 'alice')")
    conn.close()
    digest = hashlib.sha256(own.read_bytes()).hexdigest()
    model = str(models["root"] / "m0")
    code, err = run_cli(monkeypatch, capsys, "publish", "--model", model, "--data", str(synth_data["raw"]),
                        "--store", f"sqlite:///{own}")
    err = " ".join(err.split())
    assert code == 2 and err.startswith("error:") and "not a deepcrossing feature store (it holds users)" in err, err
    assert hashlib.sha256(own.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]

    from deepcrossing.cli import main

    sqlite3.connect(tmp_path / "empty.db").close()
    for name in ("empty.db", "new.db", "new.db"):  # the second new.db: a store of ours, published again
        main(["publish", "--model", model, "--data", str(synth_data["raw"]), "--store",
              f"sqlite:///{tmp_path / name}", "--no-emb", "--keep-previous", "0"])
        assert open_store(f"sqlite:///{tmp_path / name}", readonly=True).current() is not None
