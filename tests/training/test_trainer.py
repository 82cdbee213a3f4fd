"""Trainer: same seed -> identical metrics; a killed run resumed ends exactly like an uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch
from dc_synthetic import sample_table, small_spec

from deepcrossing.config import ModelConfig, TrainConfig
from deepcrossing.encoding import Encoder
from deepcrossing.errors import InputError
from deepcrossing.model import DeepCrossing, DeepCrossingTrain
from deepcrossing.training.optim import lr_at
from deepcrossing.training.trainer import Trainer, evaluate_batch

MODEL = ModelConfig(width=16, hidden=(8,), dropout=0.2, embedding_dropout=0.1, embedding_l2=1e-4)


@pytest.fixture(scope="module")
def data():
    train, valid = sample_table(600, seed=0), sample_table(300, seed=1)
    enc = Encoder(small_spec()).fit(train)
    return enc, enc.transform(train), enc.transform(valid)


def run(data, config, checkpoint_dir=None, resume=False, on_epoch=None, fingerprint=None, autocast=None):
    enc, train, valid = data
    torch.manual_seed(config.seed)  # the CLI's job; here the test plays the CLI
    model = DeepCrossing(small_spec(), MODEL, enc.cardinalities, sparse=config.optimizer == "sparse_adam")
    trainer = Trainer(DeepCrossingTrain(model), config, "cpu", checkpoint_dir, fingerprint=fingerprint,
                      autocast=autocast)
    result = trainer.fit(train, valid, resume=resume, on_epoch=on_epoch)
    return model, result


def strip_times(history):
    return [{k: v for k, v in r.items() if k not in ("train_seconds", "samples_per_s")} for r in history]


def test_learns_and_same_seed_gives_identical_metrics(data):
    config = TrainConfig(epochs=3, batch_size=128, lr=1e-2, patience=0, seed=3)
    m1, r1 = run(data, config)
    m2, r2 = run(data, config)
    assert strip_times(r1.history) == strip_times(r2.history)
    assert r1.best_auc > 0.75  # the synthetic label is learnable
    assert r1.history[-1]["train_loss"] < r1.history[0]["train_loss"]
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    _, r3 = run(data, TrainConfig(epochs=3, batch_size=128, lr=1e-2, patience=0, seed=4))
    assert strip_times(r3.history) != strip_times(r1.history)


@pytest.mark.parametrize(("optimizer", "ema"), [("adam", 0.0), ("adam", 0.9), ("sparse_adam", 0.0)])
def test_resume_after_kill_equals_uninterrupted(data, tmp_path, optimizer, ema):
    config = TrainConfig(epochs=3, batch_size=128, lr=5e-3, patience=0, seed=1, optimizer=optimizer, ema=ema)
    full_model, full = run(data, config, tmp_path / "full")

    class Killed(Exception):
        pass

    def kill_after_two(record):
        if record["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        run(data, config, tmp_path / "ckpt", on_epoch=kill_after_two)
    state = json.loads((tmp_path / "ckpt" / "last" / "state.json").read_text())
    assert state["epochs_done"] == 1  # the kill hit before epoch 2's checkpoint: epoch 1's is intact
    torch.manual_seed(12345)  # a different process state: the checkpoint must restore everything
    resumed_model, resumed = run(data, config, tmp_path / "ckpt", resume=True)
    assert strip_times(resumed.history) == strip_times(full.history)
    assert resumed.best_epoch == full.best_epoch
    for (k, a), (_, b) in zip(full_model.state_dict().items(), resumed_model.state_dict().items()):
        assert torch.equal(a, b), k


def test_early_stopping_keeps_best_weights(data):
    config = TrainConfig(epochs=6, batch_size=128, lr=3e-2, patience=1, seed=0, lr_schedule="constant")
    model, result = run(data, config)
    aucs = [r["valid_auc"] for r in result.history]
    assert result.best_auc == max(aucs) and result.best_epoch == aucs.index(max(aucs)) + 1
    # this seed stops early (a too-large constant lr overfits): exactly one epoch after the best one
    assert result.stopped_early
    assert len(aucs) == result.best_epoch + 1 < config.epochs
    assert aucs[-1] <= result.best_auc
    assert evaluate_batch(model, data[2])["auc"] == pytest.approx(result.best_auc, abs=1e-12)


def test_resume_with_other_config_is_refused(data, tmp_path):
    run(data, TrainConfig(epochs=1, batch_size=256, seed=0), tmp_path)
    with pytest.raises(InputError, match="another training config"):
        run(data, TrainConfig(epochs=2, batch_size=256, seed=0), tmp_path, resume=True)


def test_ema_weights_are_what_is_validated_and_kept(data):
    config = TrainConfig(epochs=2, batch_size=128, lr=1e-2, patience=0, seed=0, ema=0.9)
    enc, train, valid = data
    torch.manual_seed(0)
    model = DeepCrossing(small_spec(), MODEL, enc.cardinalities)
    trainer = Trainer(DeepCrossingTrain(model), config)
    result = trainer.fit(train, valid)
    # with this seed the second epoch's average is the best: the model ends holding exactly those weights
    assert result.best_epoch == 2
    assert result.history[1]["valid_auc"] == result.best_auc > result.history[0]["valid_auc"]
    assert evaluate_batch(model, valid)["auc"] == pytest.approx(result.best_auc, abs=1e-12)
    assert trainer.ema_state and set(trainer.ema_state) <= set(model.state_dict())
    for k, v in trainer.ema_state.items():
        assert torch.equal(model.state_dict()[k], v), k
    live = DeepCrossing(small_spec(), MODEL, enc.cardinalities)
    assert not all(torch.equal(live.state_dict()[k], v) for k, v in trainer.ema_state.items())


def test_lr_schedules():
    cos = TrainConfig(epochs=2, lr=1.0, lr_schedule="cosine")
    assert [lr_at(cos, e, s, 2) for e, s in ((0, 0), (1, 0))] == pytest.approx([1.0, 0.5])
    exp = TrainConfig(epochs=3, lr=1.0, lr_schedule="exponential", lr_decay=0.5)
    assert [lr_at(exp, e, 0, 5) for e in range(3)] == [1.0, 0.5, 0.25]
    assert lr_at(TrainConfig(lr=0.3, lr_schedule="constant"), 5, 7, 9) == 0.3


def test_resume_refuses_other_samples_or_spec(data, tmp_path):
    """The checkpoint records the run's fingerprint; resume compares it (same samples and spec only)."""
    config = TrainConfig(epochs=3, batch_size=128, lr=5e-3, patience=0, seed=1)
    same = {"samples": "a" * 64, "config": "b" * 64}

    def killed_in_epoch_two(record):  # before epoch 2's checkpoint: epoch 1's is the one left
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    for other, field in (({**same, "samples": "c" * 64}, "samples"), ({**same, "config": "d" * 64}, "spec")):
        with pytest.raises(KeyboardInterrupt):
            run(data, config, tmp_path, fingerprint=same, on_epoch=killed_in_epoch_two)
        with pytest.raises(InputError, match=f"field {field}: the checkpoint was (trained on other samples|"
                                             "made with another spec)") as info:
            run(data, config, tmp_path, resume=True, fingerprint=other)
        assert "\n" not in str(info.value)
    # the happy path: same fingerprint resumes and ends like an uninterrupted run
    _, full = run(data, config, tmp_path / "full", fingerprint=same)
    _, resumed = run(data, config, tmp_path, resume=True, fingerprint=same)
    assert strip_times(resumed.history) == strip_times(full.history)
    state = json.loads((tmp_path / "last" / "state.json").read_text())
    assert state["fingerprint"] == same and state["epochs_done"] == 3


def test_train_model_resume_checks_the_sample_files_and_spec(tmp_path):
    """Through the pipeline: the fingerprint is taken from the train/valid files and the experiment config."""
    import dataclasses

    import pyarrow.parquet as pq

    from deepcrossing.config import ExperimentConfig
    from deepcrossing.training.pipeline import train_model

    folders = {}
    for name, seed in (("a", 0), ("b", 5)):
        folder = folders[name] = tmp_path / name
        folder.mkdir()
        pq.write_table(sample_table(400, seed=seed), folder / "train.parquet")
        pq.write_table(sample_table(200, seed=seed + 1), folder / "valid.parquet")

    class Interrupted(Exception):
        pass

    def stop_in_second_epoch(info):
        if info.epoch == 2:
            raise Interrupted  # a run cut after its first checkpoint (the work folder stays for --resume)

    def train(samples, config, resume, on_step=None):
        files = {split: str(samples / f"{split}.parquet") for split in ("train", "valid")}
        tables = {split: pq.read_table(path) for split, path in files.items()}
        torch.manual_seed(0)
        return train_model(tables, config, tmp_path / "model", resume=resume, sources=files, on_step=on_step)

    config = ExperimentConfig(small_spec(), MODEL, TrainConfig(epochs=2, batch_size=128, seed=0))
    first = train(folders["a"], config, resume=False)
    with pytest.raises(Interrupted):
        train(folders["a"], config, resume=False, on_step=stop_in_second_epoch)
    with pytest.raises(InputError, match="field samples: the checkpoint was trained on other samples"):
        train(folders["b"], config, resume=True)
    other_spec = dataclasses.replace(config, model=dataclasses.replace(MODEL, dropout=0.3))
    with pytest.raises(InputError, match="field spec: the checkpoint was made with another spec"):
        train(folders["a"], other_spec, resume=True)
    again = train(folders["a"], config, resume=True)  # the second epoch from the checkpoint: the same history
    assert strip_times(again["history"]) == strip_times(first["history"])


def test_swa_average_of_the_last_epochs_is_kept_only_when_valid_auc_improves(data):
    enc, train, valid = data
    epochs = []
    config = TrainConfig(epochs=4, batch_size=128, lr=1e-2, patience=0, seed=0, swa=3)
    torch.manual_seed(0)
    model = DeepCrossing(small_spec(), MODEL, enc.cardinalities)
    trainer = Trainer(DeepCrossingTrain(model), config)
    # record each epoch's weights as the trainer sees them after the epoch
    result = trainer.fit(train, valid, on_epoch=lambda r: epochs.append(
        {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}))
    record = trainer.swa_record
    assert record["epochs"] == 3 and len(epochs) == 4
    average = {k: torch.stack([e[k] for e in epochs[1:]]).mean(dim=0) for k in epochs[0]}
    check = DeepCrossing(small_spec(), MODEL, enc.cardinalities)
    check.load_state_dict(average, strict=False)
    assert evaluate_batch(check, valid)["auc"] == pytest.approx(record["valid_auc"], abs=1e-12)
    best_epoch_auc = max(r["valid_auc"] for r in result.history)
    assert record["kept"] == (record["valid_auc"] > best_epoch_auc)
    assert result.best_auc == max(best_epoch_auc, record["valid_auc"])
    assert evaluate_batch(model, valid)["auc"] == pytest.approx(result.best_auc, abs=1e-12)
    assert TrainConfig().swa == 0 and Trainer(DeepCrossingTrain(check), TrainConfig()).swa_record == {}


@pytest.mark.parametrize("optimizer", ["adam", "sparse_adam"])
def test_bf16_autocast_of_the_forward_pass_learns_like_fp32(data, optimizer):
    # autocast wraps the forward pass and loss only: wrapping backward and the optimizer steps too left the
    # loss stuck at log 2 with sparse Adam (benchmarks/throughput.py --bf16 before the Trainer option)
    config = TrainConfig(epochs=3, batch_size=128, lr=1e-2, patience=0, seed=3, optimizer=optimizer)
    fp32_model, fp32 = run(data, config)
    bf16_model, bf16 = run(data, config, autocast=torch.bfloat16)
    assert bf16.best_auc > 0.75 and abs(bf16.best_auc - fp32.best_auc) < 0.03
    assert bf16.history[-1]["train_loss"] < bf16.history[0]["train_loss"] < 0.69
    assert all(p.dtype == torch.float32 for p in bf16_model.parameters())  # weights stay fp32
    assert not all(torch.equal(a, b) for a, b in zip(fp32_model.parameters(), bf16_model.parameters()))


def test_batches_gathered_in_blocks_are_the_per_step_takes(data, monkeypatch):
    """Rows gathered ~64k at a time and sliced give exactly the minibatches of one take per step (here blocks
    of 2 steps of 7 rows, and a row count that 7 does not divide)."""
    from deepcrossing.training import trainer as trainer_module

    _, train, _ = data
    monkeypatch.setattr(trainer_module, "GATHER_ROWS", 15)  # blocks of 2 steps of 7 rows: several blocks
    trainer = Trainer(DeepCrossingTrain(DeepCrossing(small_spec(), MODEL, data[0].cardinalities)),
                      TrainConfig(batch_size=7), "cpu")
    rows = len(train) - 5  # fewer rows than the batch holds (as under DDP): the last step is short
    got = list(trainer._batches(train, 0, rows, 7, torch.Generator().manual_seed(3)))
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(3))
    want = [train.take(perm[s:min(s + 7, rows)]) for s in range(0, rows, 7)]
    assert len(got) == len(want) > 4 and len(got[-1]) == (rows % 7 or 7)
    for g, w in zip(got, want, strict=True):
        for a, b in zip(g._tensors(), w._tensors(), strict=True):
            assert torch.equal(a, b)
