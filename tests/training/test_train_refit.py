"""`deepcrossing train --refit` end to end on small synthetic sample files: the selection run is today's run,
the saved model is a fresh one trained E epochs on train ∪ valid (encoder fitted on both), its folder loads and
says so; the flags it cannot go with are one-line errors; ``Trainer.fit(fixed_epochs=E)`` is epoch E of the
ordinary schedule."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from dc_synthetic import numeric_spec, sample_table, train_cli_args, write_splits
from typer.testing import CliRunner

import deepcrossing
from deepcrossing.cli import app, main
from deepcrossing.config import ExperimentConfig, ModelConfig, TrainConfig
from deepcrossing.encoding.encoder import Encoder
from deepcrossing.errors import InputError
from deepcrossing.metrics import auc
from deepcrossing.model import DeepCrossing, DeepCrossingTrain
from deepcrossing.training.refit import union_of
from deepcrossing.training.trainer import Trainer

N_TRAIN, N_VALID = 800, 300


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = write_splits(tmp_path_factory.mktemp("refit-samples"), N_TRAIN, N_VALID)
    config = ExperimentConfig(spec=numeric_spec(), model=ModelConfig(hidden=(8,), width=12, dropout=0.1),
                              train=TrainConfig(epochs=6, batch_size=64, patience=1, lr=0.01))
    (root / "spec.json").write_text(json.dumps(config.to_dict()))
    return root


def train_args(files, out, *extra):
    return train_cli_args(files, out, 3, *extra)


@pytest.fixture(scope="module")
def refit_dir(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("refit") / "model"
    result = CliRunner().invoke(app, train_args(files, out, "--refit"))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())                     # the console wraps at 80 columns
    assert "(held out)" in text and "(in-sample, not held out)" in text, text
    return out


def test_refit_folder_loads_and_records_the_refit(refit_dir, files):
    metrics = json.loads((refit_dir / "metrics.json").read_text())
    refit = metrics["refit"]
    assert "valid" not in metrics                               # no held-out valid score of this model
    assert refit["rows"] == {"train": N_TRAIN, "valid": N_VALID, "train+valid": N_TRAIN + N_VALID}
    assert refit["epochs"] == refit["best_epoch"] and 1 <= refit["epochs"] <= refit["epochs_run"] <= 6
    assert len(refit["history"]) == refit["epochs"] and metrics["n_train"] == N_TRAIN + N_VALID
    assert all("valid_auc" not in r for r in refit["history"])
    assert 0.5 < refit["selection_valid"]["auc"] < metrics["valid_in_sample"]["auc"] <= 1.0
    lines = [json.loads(x) for x in (refit_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["run"] for r in lines] == ["selection"] * refit["epochs_run"] + ["refit"] * refit["epochs"]
    loaded = deepcrossing.load(refit_dir)
    assert loaded.manifest["metrics"]["refit"] == refit and loaded.manifest["train_config"]["seed"] == 3
    test = pq.read_table(files / "test.parquet")
    assert auc(test.column("label").to_numpy(), loaded.predict(test)) == pytest.approx(metrics["test"]["auc"],
                                                                                     abs=1e-9)
    assert not any(p.name.startswith(".") for p in refit_dir.parent.iterdir())   # no work folder left


def test_selection_is_todays_run_and_the_encoder_saw_both_splits(refit_dir, files, tmp_path):
    """The selection is exactly `train` without --refit (same valid AUC and best epoch); the saved encoder is
    the one fitted on train ∪ valid, not on train."""
    result = CliRunner().invoke(app, train_args(files, tmp_path / "plain"))
    assert result.exit_code == 0, result.output
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    refit = json.loads((refit_dir / "metrics.json").read_text())["refit"]
    assert refit["selection_valid"]["auc"] == pytest.approx(plain["valid"]["auc"], abs=1e-12)
    assert refit["best_epoch"] == plain["best_epoch"]
    spec = numeric_spec()
    train, valid = (pq.read_table(files / f"{s}.parquet") for s in ("train", "valid"))
    union_state = Encoder(spec).fit(union_of(train, valid, {})).state()
    assert deepcrossing.load(refit_dir).encoder.state() == union_state
    assert deepcrossing.load(tmp_path / "plain").encoder.state() == Encoder(spec).fit(train).state()
    assert union_state != Encoder(spec).fit(train).state()


def test_fixed_epochs_is_epoch_e_of_the_ordinary_schedule():
    """fit(valid=None, fixed_epochs=2) of a 4-epoch cosine config = the live weights after epoch 2 of the full
    run (same seed, same steps, same learning rates), kept although nothing was validated."""
    table = sample_table(300, seed=4)
    encoder = Encoder(numeric_spec()).fit(table)
    data = encoder.transform(table)
    config = TrainConfig(epochs=4, batch_size=32, patience=0, lr=0.01)

    def trained(**fit_args):
        torch.manual_seed(0)
        model = DeepCrossing(numeric_spec(), ModelConfig(hidden=(8,), width=12), encoder.cardinalities)
        snapshots = []
        on_epoch = lambda r: snapshots.append({k: v.clone() for k, v in model.state_dict().items()})  # noqa: E731
        fit = Trainer(DeepCrossingTrain(model), config).fit(data, fit_args.pop("valid"), on_epoch=on_epoch,
                                                            **fit_args)
        return fit, model, snapshots

    full, _, snapshots = trained(valid=data)
    fixed, model, _ = trained(valid=None, fixed_epochs=2)
    assert len(full.history) == 4 and len(fixed.history) == 2 and fixed.best_epoch == 2
    assert [r["lr"] for r in fixed.history] == [r["lr"] for r in full.history[:2]]
    assert all("valid_auc" not in r for r in fixed.history)
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshots[1][k]), k


def test_fit_refuses_no_valid_without_fixed_epochs():
    table = sample_table(100, seed=4)
    encoder = Encoder(numeric_spec()).fit(table)
    model = DeepCrossing(numeric_spec(), ModelConfig(hidden=(8,), width=12), encoder.cardinalities)
    trainer = Trainer(DeepCrossingTrain(model), TrainConfig(epochs=3))
    for kwargs in ({}, {"fixed_epochs": 4}, {"fixed_epochs": 0}):
        with pytest.raises(InputError, match="fixed_epochs"):
            trainer.fit(encoder.transform(table), None, **kwargs)


def test_union_refuses_splits_with_other_columns():
    train = sample_table(50, seed=0)
    with pytest.raises(InputError, match="columns do not match"):
        union_of(train, train.drop_columns(["movieId"]).append_column("movieId", pa.array(["x"] * 50)), {})
    with pytest.raises(InputError, match="not --stream"):
        union_of(train, None, {})


@pytest.mark.parametrize("flags", [("--resume",), ("--nproc", "2"), ("--stream",), ("--ensemble", "2")])
def test_bad_refit_flags_are_one_line_errors(files, tmp_path, flags, capsys):
    with pytest.raises(SystemExit) as exited:
        main(train_args(files, tmp_path / "m", "--refit", *flags))
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "--refit trains twice in one process" in err and f"leave out {flags[0]}" in err, err
    assert not (tmp_path / "m").exists()                                        # refused before any work


def test_refit_refuses_a_train_file_over_the_memory_budget(files, tmp_path, capsys):
    """Over --memory-budget, train would stream: --refit (train ∪ valid held in memory) says so instead."""
    with pytest.raises(SystemExit) as exited:
        main(train_args(files, tmp_path / "m", "--refit", "--memory-budget", "1K"))
    err = " ".join(capsys.readouterr().err.split())
    assert exited.value.code == 2 and "Traceback" not in err and "--refit holds train + valid in memory" in err, err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("swa", [0, 2])
def test_python_api_follows_the_selections_swa_choice(files, tmp_path, swa):
    """train_refit (what the CLI calls): with SWA the refit trains the selection's epochs and averages the same
    last ones exactly when the selection kept its average; without, E = the best epoch and no average."""
    from deepcrossing.training.refit import train_refit

    # at these settings the selection keeps its SWA average (best epoch 3 of 4; measured on CPU)
    config = ExperimentConfig(spec=numeric_spec(), model=ModelConfig(hidden=(8,), width=12, dropout=0.2),
                              train=TrainConfig(epochs=4, batch_size=64, patience=0, lr=0.02, swa=swa, seed=2,
                                                lr_schedule="constant"))
    tables = {s: pq.read_table(files / f"{s}.parquet") for s in ("train", "valid", "test")}
    seeds: list[int] = []
    summary = train_refit(tables, config, tmp_path / "m", lambda s: (seeds.append(s), torch.manual_seed(s)))
    refit = summary["refit"]
    kept = bool(refit["swa"]["selection"].get("kept"))
    assert seeds == [2, 2] and refit["epochs_run"] == 4
    assert refit["epochs"] == (4 if kept else refit["best_epoch"]) and len(summary["history"]) == refit["epochs"]
    assert refit["swa"]["averaged_epochs"] == (2 if kept else 0)
    assert deepcrossing.load(tmp_path / "m").manifest["metrics"]["refit"]["epochs"] == refit["epochs"]
