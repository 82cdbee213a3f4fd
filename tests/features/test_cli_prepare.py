"""`deepcrossing prepare` end to end on ml-latest-small, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deepcrossing.cli", "prepare", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_prepare_ml_latest_small(ml_small_dir, tmp_path):
    done = _run("--data", str(ml_small_dir), "--out", str(tmp_path / "s"), "--format", "sparrow",
                "--recent-n", "5", "--label-threshold", "4")
    assert done.returncode == 0, done.stderr
    assert "train      80,668 rows" in done.stdout and "test users never seen in train: 73.0%" in done.stdout
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["config"]["recent_n"] == 5 and manifest["config"]["label_threshold"] == 4.0
    assert manifest["format"] == "sparrow" and (tmp_path / "s" / "test.csv").stat().st_size > 0
    assert manifest["dataset"]["sources"]["ratings.csv"] != ""
    assert len((tmp_path / "s" / "valid.csv").read_text().splitlines()) == 10_085


@pytest.mark.slow
def test_prepare_errors_exit_2(tmp_path):
    done = _run("--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s"))
    assert done.returncode == 2 and "nowhere" in done.stderr
    (tmp_path / "log.csv").write_text("u,i,r,t\n1,2,4.0,10\n1,3,3.0,20\n")
    done = _run("--data", str(tmp_path / "log.csv"), "--out", str(tmp_path / "s"), "--fractions", "0.5,0.5")
    assert done.returncode == 2 and "fractions" in done.stderr
    done = _run("--data", str(tmp_path / "log.csv"), "--out", str(tmp_path / "s"), "--user-col", "u")
    assert done.returncode == 2 and "--item-col" in done.stderr
    assert not (tmp_path / "s").exists()
    done = _run("--data", str(tmp_path / "log.csv"), "--out", str(tmp_path / "s"), "--user-col", "u",
                "--item-col", "i", "--rating-col", "r", "--time-col", "t", "--fractions", "0.5,0,0.5")
    assert done.returncode == 0, done.stderr
    assert "train           1 rows" in done.stdout and "test            1 rows" in done.stdout
