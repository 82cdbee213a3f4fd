"""`deepcrossing train --ensemble K` end to end on small synthetic sample files: one fused model folder that
loads, scores like the members' mean, exports (ONNX/TorchScript parity); --ensemble 1 is today's training."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from dc_synthetic import exported_scores, numeric_spec, sample_table, train_cli_args, write_splits
from typer.testing import CliRunner

import deepcrossing
from deepcrossing.cli import app, main
from deepcrossing.config import ExperimentConfig, ModelConfig, TrainConfig
from deepcrossing.hashing import file_sha256
from deepcrossing.metrics import auc
from deepcrossing.training.export import export_model, flat_inputs, layout


def write_spec(path, **model):
    config = ExperimentConfig(spec=numeric_spec(), model=ModelConfig(**model),
                              train=TrainConfig(epochs=2, batch_size=64, patience=1))
    path.write_text(json.dumps(config.to_dict()))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = write_splits(tmp_path_factory.mktemp("ens-samples"))
    write_spec(root / "spec.json", mlp="residual", hidden=(8,), width=12, norm="batch", dropout=0.1)
    return root


def train_args(files, out, *extra):
    return train_cli_args(files, out, 5, *extra)


@pytest.fixture(scope="module")
def ensemble_dir(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("ens") / "model"
    result = CliRunner().invoke(app, train_args(files, out, "--ensemble", "2"))
    assert result.exit_code == 0, result.output
    assert "member seed 5" in result.output and "member seed 6" in result.output and "fused 2 members" in result.output
    return out


def test_ensemble_folder_records_members_and_loads(ensemble_dir, files):
    metrics = json.loads((ensemble_dir / "metrics.json").read_text())
    ens = metrics["ensemble"]
    assert ens["k"] == 2 and ens["seeds"] == [5, 6] and len(ens["members"]) == 2
    assert ens["fused_valid_auc"] == metrics["valid"]["auc"] and 0.5 < metrics["valid"]["auc"] <= 1.0
    assert [m["valid"]["auc"] for m in ens["members"]] == ens["member_valid_auc"]
    assert ens["member_valid_auc"][0] != ens["member_valid_auc"][1]           # two different seeds
    assert ens["max_abs_logit_diff"] < 1e-5
    lines = [json.loads(x) for x in (ensemble_dir / "metrics.jsonl").read_text().splitlines()]
    assert {(r["member"], r["seed"]) for r in lines} == {(0, 5), (1, 6)}
    loaded = deepcrossing.load(ensemble_dir)
    assert loaded.manifest["metrics"]["ensemble"] == ens
    assert loaded.model.config.hidden == (16,) and loaded.model.config.width == 24
    assert loaded.model.config.groups == 2 and loaded.manifest["format_version"] == 2   # the units as 2 blocks
    assert loaded.manifest["train_config"]["seed"] == 5
    test = pq.read_table(files / "test.parquet")
    probs = loaded.predict(test)
    assert auc(test.column("label").to_numpy(), probs) == pytest.approx(metrics["test"]["auc"], abs=1e-9)
    assert not any(p.name.startswith(".") for p in ensemble_dir.parent.iterdir())  # no work folder left
    out = ensemble_dir.parent / "metrics-test.json"                        # `evaluate` reads the grouped folder
    result = CliRunner().invoke(app, ["evaluate", "--model", str(ensemble_dir), "--file", str(files / "test.parquet"),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["model"]["auc"] == pytest.approx(metrics["test"]["auc"], abs=1e-9)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_parity_of_the_fused_model(ensemble_dir, tmp_path, fmt):
    path = export_model(ensemble_dir, fmt, tmp_path / f"m.{fmt}")
    loaded = deepcrossing.load(ensemble_dir)
    batch = loaded.encoder.transform(sample_table(257, seed=7, n_users=60, n_movies=80))
    expected = loaded.logits(batch).numpy()
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    got = exported_scores(path, fmt, flat_inputs(batch, layout(loaded)), meta["inputs"])
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert np.std(got) > 1e-4


def test_ensemble_of_one_is_todays_training(files, tmp_path):
    """--ensemble 1 runs the single-model pipeline: the same weights, byte for byte, as no flag."""
    runner = CliRunner()
    for name, extra in (("plain", ()), ("one", ("--ensemble", "1"))):
        result = runner.invoke(app, train_args(files, tmp_path / name, *extra))
        assert result.exit_code == 0, result.output
        assert "ensemble" not in json.loads((tmp_path / name / "metrics.json").read_text())
    assert file_sha256(tmp_path / "plain" / "model.safetensors") == file_sha256(tmp_path / "one" / "model.safetensors")


def test_ensemble_members_equal_single_runs_of_their_seeds(files, ensemble_dir, tmp_path):
    """Member i is exactly `train --seed seed+i`: same valid AUC (same encoder, seeding and loop)."""
    result = CliRunner().invoke(app, train_args(files, tmp_path / "m6", "--seed", "6"))
    assert result.exit_code == 0, result.output
    single = json.loads((tmp_path / "m6" / "metrics.json").read_text())["valid"]["auc"]
    ens = json.loads((ensemble_dir / "metrics.json").read_text())["ensemble"]
    assert single == pytest.approx(ens["member_valid_auc"][1], abs=1e-12)


def cli_error(args, capsys) -> str:
    """Run the real entry point; it must exit 2 with one ``error:`` line."""
    with pytest.raises(SystemExit) as exited:
        main(args)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "error:" in err and "Traceback" not in err, err
    return " ".join(err.split())


def test_bad_ensemble_flags_are_one_line_errors(files, tmp_path, capsys):
    assert "leave out --resume" in cli_error(train_args(files, tmp_path / "a", "--ensemble", "2", "--resume"), capsys)
    assert "--ensemble" in cli_error(train_args(files, tmp_path / "b", "--ensemble", "0"), capsys)
    spec = write_spec(tmp_path / "layer.json", norm="layer")
    args = train_args(files, tmp_path / "c", "--ensemble", "3")
    args[args.index("--spec") + 1] = str(spec)
    err = cli_error(args, capsys)
    assert "norm = 'layer'" in err and "layer.json" in err and "model.norm" in err
    assert not (tmp_path / "c").exists()                                      # refused before any work


def test_a_grouped_config_trains_like_any_model(files, tmp_path):
    """`[model] groups = 2` (K independent blocks after the first layer) trains, saves as format 2 and loads."""
    spec = write_spec(tmp_path / "grouped.json", mlp="plain", hidden=(12, 8), norm="batch", groups=2)
    args = train_args(files, tmp_path / "g")
    args[args.index("--spec") + 1] = str(spec)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    loaded = deepcrossing.load(tmp_path / "g")
    assert loaded.model.config.groups == 2 and loaded.manifest["format_version"] == 2
    metrics = json.loads((tmp_path / "g" / "metrics.json").read_text())
    assert metrics["valid"]["auc"] > 0.55                                    # 0.597 at seed 5
    batch = loaded.encoder.transform(sample_table(129, seed=8, n_users=60, n_movies=80))
    expected = loaded.logits(batch).numpy()
    for fmt in ("torchscript", "onnx"):                                      # the plain MLP's grouped layer
        path = export_model(tmp_path / "g", fmt, tmp_path / f"g.{fmt}")
        meta = json.loads(path.with_name(path.name + ".json").read_text())
        got = exported_scores(path, fmt, flat_inputs(batch, layout(loaded)), meta["inputs"])
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
