"""`deepcrossing publish` and `deepcrossing recommend` end to end on the synthetic logs."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from deepcrossing.cli import app
from deepcrossing.serving.engine import Engine
from deepcrossing.serving.store import open_store


def test_publish_then_recommend_offline(models, synth_data, tmp_path):
    model = models["root"] / "m0"
    url = f"sqlite:///{tmp_path / 'f.db'}"
    runner = CliRunner()
    r = runner.invoke(app, ["publish", "--model", str(model), "--data", str(synth_data["raw"]), "--store", url,
                            "--candidates", "500", "--keep-previous", "0"])
    assert r.exit_code == 0, r.output
    assert "published version 1" in r.output and "500 candidates" in r.output
    assert "vector channels: emb (exact)" in r.output.replace("\n", " ")
    assert f"deepcrossing serve --model {model} --store {url}" in r.output
    assert open_store(url).meta()["n_candidates"] == 500
    r = runner.invoke(app, ["recommend", "--model", str(model), "--store", url, "--user", "1", "-k", "5"])
    assert r.exit_code == 0, r.output
    lines = [line for line in r.output.splitlines() if re.match(r"^\s*\d+\. ", line)]
    assert len(lines) == 5 and "known user" in r.output
    expected = Engine.open(model, url).recommend(1, k=5)["items"]
    for line, item in zip(lines, expected):
        assert str(item["movieId"]) in line and item["title"] in line and f"{item['score']:.4f}" in line
        assert line.endswith(f"({item['channel']})")
    # the channels flag: the same plan as the service's ?channels=, and a bad one is a one-line error
    r = runner.invoke(app, ["recommend", "--model", str(model), "--store", url, "--user", "1", "-k", "5",
                            "--channels", "emb:30,popularity:10"])
    assert r.exit_code == 0, r.output
    assert "40 candidates: emb 30, popularity 10" in r.output
    expected = Engine.open(model, url).recommend(1, k=5, channels=(("emb", 30), ("popularity", 10)))["items"]
    lines = [line for line in r.output.splitlines() if re.match(r"^\s*\d+\. ", line)]
    assert [line.rsplit("(", 1)[1].rstrip(")") for line in lines] == [i["channel"] for i in expected]
    r = runner.invoke(app, ["recommend", "--model", str(model), "--store", url, "--user", "1",
                            "--channels", "bogus:3"])
    assert r.exit_code != 0 and "unknown channel 'bogus'" in str(r.exception or r.output)


def test_publish_defaults_to_sqlite_in_model_dir(models, synth_data, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(models["root"] / "m0", model)
    r = CliRunner().invoke(app, ["publish", "--model", str(model), "--data", str(synth_data["raw"])])
    assert r.exit_code == 0, r.output
    assert f"sqlite:///{model.resolve()}/features.db (default" in r.output.replace("\n", "")
    assert (model / "features.db").exists()


def test_publish_refuses_a_non_model_folder(tmp_path, synth_data):
    r = CliRunner().invoke(app, ["publish", "--model", str(tmp_path), "--data", str(synth_data["raw"])])
    assert r.exit_code != 0 and "no manifest.json" in str(r.exception)
