"""`deepcrossing prepare` end to end on ml-latest-small, and its errors."""

from __future__ import annotations

import json
import os
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


def test_prepare_itemcf_and_movie_bayes_flags_fill_their_columns(tmp_path):
    """Off by default (NULL columns); --itemcf / --movie-bayes compute them and the manifest records it."""
    import pyarrow.parquet as pq

    rows = ["u,i,r,t"] + [f"{u},{i},{4.0 if (u + i) % 3 else 2.0},{10 * u + i}" for u in range(1, 9)
                         for i in range(1, 6)]
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    mapping = ["--user-col", "u", "--item-col", "i", "--rating-col", "r", "--time-col", "t"]
    for flags, name in (([], "off"), (["--itemcf", "--movie-bayes"], "on")):
        done = _run("--data", str(tmp_path / "log.csv"), "--out", str(tmp_path / name), *mapping, *flags)
        assert done.returncode == 0, done.stderr
    manifests = {n: json.loads((tmp_path / n / "manifest.json").read_text())["config"] for n in ("off", "on")}
    assert (manifests["off"]["itemcf"], manifests["off"]["movie_bayes"]) == (False, False)
    assert (manifests["on"]["itemcf"], manifests["on"]["movie_bayes"]) == (True, True)
    for name in ("off", "on"):
        table = pq.read_table(tmp_path / name / "train.parquet", columns=["userItemCFScore", "movieBayesAvgRating"])
        nulls = [table.column(c).null_count for c in table.column_names]
        assert (nulls == [table.num_rows] * 2) == (name == "off"), (name, nulls, table.num_rows)


_BLOCK_PYSPARK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "pyspark" or name.startswith("pyspark."):
            raise ImportError("No module named 'pyspark'")
        return None
sys.meta_path.insert(0, Block())
from deepcrossing.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("missing", ["java", "pyspark"])
def test_engine_spark_without_java_or_pyspark_says_what_to_install(tmp_path, missing):
    """One error line naming what to install, exit 2, before any work: no output folder, no Spark started."""
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    args = ["prepare", "--data", str(tmp_path), "--out", str(tmp_path / "s"), "--engine", "spark"]
    if missing == "java":
        (tmp_path / "bin").mkdir()
        env["PATH"] = str(tmp_path / "bin")  # no java anywhere (python itself runs by its full path)
        command = [sys.executable, "-m", "deepcrossing.cli", *args]
    else:
        command = [sys.executable, "-c", _BLOCK_PYSPARK, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    expected = "openjdk-17-jre-headless" if missing == "java" else "pip install 'deepcrossing[spark]'"
    assert len(lines) == 1 and lines[0].startswith("error: --engine spark needs") and expected in lines[0], lines
    assert not (tmp_path / "s").exists() and done.stdout == ""


def test_spark_conf_must_be_key_value(tmp_path):
    done = _run("--data", str(tmp_path), "--out", str(tmp_path / "s"), "--engine", "spark", "--spark-conf", "x")
    assert done.returncode == 2 and "--spark-conf needs key=value, not 'x'" in done.stderr
    done = _run("--data", str(tmp_path), "--out", str(tmp_path / "s"), "--engine", "flink")
    assert done.returncode == 2 and "must be one of duckdb, spark" in done.stderr
