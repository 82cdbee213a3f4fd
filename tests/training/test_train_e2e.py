"""End to end on real ml-latest-small samples: `deepcrossing train` (1 epoch) -> files -> load -> predict."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import deepcrossing
from deepcrossing.cli import app
from deepcrossing.metrics import auc


@pytest.fixture(scope="module")
def ml_samples(ml_small_dir, tmp_path_factory):
    from deepcrossing.data import load_dataset
    from deepcrossing.features import FeatureConfig, build_samples

    root = tmp_path_factory.mktemp("ml-samples")
    dataset = load_dataset(ml_small_dir, workdir=root / "work")
    build_samples(dataset, FeatureConfig(), root / "parquet")
    build_samples(dataset, FeatureConfig(), root / "sparrow", fmt="sparrow")
    return root


@pytest.mark.slow
def test_train_load_predict_parquet(ml_samples, tmp_path):
    out = tmp_path / "model"
    result = CliRunner().invoke(app, ["train", "--samples", str(ml_samples / "parquet"), "--out", str(out),
                                      "--epochs", "1", "--seed", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "test AUC" in result.output and str(out) in result.output
    for name in ("model.safetensors", "manifest.json", "metrics.jsonl", "metrics.json", "curves.png", "roc.png"):
        assert (out / name).stat().st_size > 0, name
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1] and lines[0]["valid_auc"] > 0.7
    loaded = deepcrossing.load(out)
    from deepcrossing.features import read_samples

    test = read_samples(ml_samples / "parquet" / "test.parquet")
    probs = loaded.predict(test)
    assert probs.shape == (test.num_rows,) and ((probs > 0) & (probs < 1)).all()
    test_auc = auc(test.column("label").to_numpy(), probs)
    assert test_auc == pytest.approx(loaded.manifest["metrics"]["test"]["auc"], abs=1e-9)
    assert test_auc > 0.8  # one epoch already beats userAvgRating's ~0.83 neighbourhood closely

    # export through the CLI
    result = CliRunner().invoke(app, ["export", "--model", str(out), "--format", "torchscript"])
    assert result.exit_code == 0, result.output
    assert (out / "model.torchscript.pt").exists()


def test_train_from_sparrow_csv_files(ml_samples, tmp_path):
    folder = ml_samples / "sparrow"
    out = tmp_path / "model"
    result = CliRunner().invoke(app, ["train", "--train", str(folder / "train.csv"), "--valid",
                                      str(folder / "valid.csv"), "--test", str(folder / "test.csv"),
                                      "--out", str(out), "--epochs", "1", "--mlp", "plain"])
    assert result.exit_code == 0, result.output
    loaded = deepcrossing.load(out)
    assert loaded.manifest["model_config"]["mlp"] == "plain"
    assert "userGenre1" in loaded.spec.names  # the sparrow spec was picked for .csv files
    assert loaded.manifest["metrics"]["test"]["auc"] > 0.75


def test_missing_column_error_names_column_and_file(ml_samples, tmp_path):
    import pyarrow.parquet as pq

    bad = tmp_path / "bad"
    bad.mkdir()
    for split in ("train", "valid"):
        table = pq.read_table(ml_samples / "parquet" / f"{split}.parquet")
        if split == "valid":
            table = table.drop_columns(["userAvgRating"])
        pq.write_table(table, bad / f"{split}.parquet")
    result = CliRunner().invoke(app, ["train", "--samples", str(bad), "--out", str(tmp_path / "m"),
                                      "--epochs", "1"])
    assert result.exit_code != 0
    assert "userAvgRating" in str(result.exception) and "valid.parquet" in str(result.exception)
    assert "run deepcrossing prepare again" in str(result.exception)  # a column prepare writes
    assert not np.any([p.name == "model.safetensors" for p in (tmp_path / "m").glob("*")])


def test_a_spec_whose_tables_cannot_be_allocated_is_one_input_error(tmp_path):
    """`train --spec x.toml` with `kind = "hashed"`, `hash_buckets = 1000000000000` crashed with PyTorch's
    `RuntimeError: ... DefaultCPUAllocator: can't allocate memory`; now one error names the table's feature."""
    from dc_synthetic import sample_table

    from deepcrossing.config import ExperimentConfig, Feature, FeatureSpec, ModelConfig, TrainConfig
    from deepcrossing.errors import InputError
    from deepcrossing.training.pipeline import train_model

    spec = FeatureSpec((Feature("userId", "hashed", "user", hash_buckets=10**14, dim=8),
                        Feature("movieId", "categorical", "item", dim=4)))
    tables = {"train": sample_table(200, seed=0), "valid": sample_table(100, seed=1)}
    config = ExperimentConfig(spec, ModelConfig(width=8, hidden=(4,)), TrainConfig(epochs=1, batch_size=64))
    with pytest.raises(InputError) as refused:
        train_model(tables, config, tmp_path / "model")
    assert str(refused.value).startswith("field userId: the model does not fit in memory: its largest embedding "
                                         "table (userId) has 100,000,000,000,001 rows"), str(refused.value)
    assert not (tmp_path / "model").exists()


def test_an_empty_test_split_is_left_out(tmp_path):
    """`prepare --fractions 0.5,0.5,0` is accepted and writes an empty test split; `train` on it trained every
    epoch and then refused to save (`the test auc is nan (a split with one class or no rows?); the model was
    not saved`). Now the model is saved with valid metrics only."""
    from dc_synthetic import sample_table, small_spec

    from deepcrossing.config import ExperimentConfig, ModelConfig, TrainConfig
    from deepcrossing.training.pipeline import train_model

    train = sample_table(300, seed=0)
    tables = {"train": train, "valid": sample_table(150, seed=1), "test": train.slice(0, 0)}
    config = ExperimentConfig(small_spec(), ModelConfig(width=8, hidden=(4,)), TrainConfig(epochs=1, batch_size=64))
    result = train_model(tables, config, tmp_path / "model")
    assert "test" not in result and 0.0 <= result["valid"]["auc"] <= 1.0
    assert "test" not in json.loads((tmp_path / "model" / "metrics.json").read_text())
    deepcrossing.load(tmp_path / "model")
