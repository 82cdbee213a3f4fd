"""A damaged checkpoint (a truncated file, a state.json that is not a checkpoint's) is refused with one error
naming the file, never a traceback: ``train --resume`` crashed on each of these (SafetensorError, KeyError,
TypeError) before."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch
from dc_synthetic import sample_table, small_spec

from deepcrossing.config import ExperimentConfig, ModelConfig, TrainConfig
from deepcrossing.errors import InputError
from deepcrossing.training.pipeline import train_model

MODEL = ModelConfig(width=16, hidden=(8,), dropout=0.2)


class Interrupted(Exception):
    pass


def _stop_in_second_epoch(info):
    if info.epoch == 2:
        raise Interrupted


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """A run killed after its first checkpoint: (samples files, config, model folder, checkpoint folder)."""
    root = tmp_path_factory.mktemp("ckpt")
    files = {"train": root / "train.parquet", "valid": root / "valid.parquet"}
    pq.write_table(sample_table(400, seed=0), files["train"])
    pq.write_table(sample_table(200, seed=1), files["valid"])
    config = ExperimentConfig(small_spec(), MODEL, TrainConfig(epochs=2, batch_size=128, seed=0))
    with pytest.raises(Interrupted):
        _train(files, config, root / "model", resume=False, on_step=_stop_in_second_epoch)
    last = root / ".model.work" / "checkpoints" / "last"
    assert (last / "state.json").is_file()
    return files, config, root / "model", last


def _train(files, config, out, resume, on_step=None):
    tables = {split: pq.read_table(path) for split, path in files.items()}
    torch.manual_seed(0)
    return train_model(tables, config, out, resume=resume, sources={k: str(v) for k, v in files.items()},
                       on_step=on_step)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def _state(edit):
    def apply(path):
        state = json.loads(path.read_text())
        path.write_text(json.dumps(edit(state)))
    return apply


DAMAGE = {
    "best.safetensors truncated": ("best.safetensors", _truncate, "best.safetensors: the checkpoint cannot be read"),
    "model.safetensors truncated": ("model.safetensors", _truncate, "model.safetensors: the checkpoint cannot"),
    "rng.safetensors empty": ("rng.safetensors", lambda p: p.write_bytes(b""), "rng.safetensors: the checkpoint"),
    "state.json truncated": ("state.json", _truncate, "state.json: the checkpoint cannot be read (not valid JSON"),
    "state.json a list": ("state.json", lambda p: p.write_text("[]"), "state.json: the checkpoint cannot be read"),
    "state.json without history": ("state.json", _state(lambda s: {k: v for k, v in s.items() if k != "history"}),
                                   "state.json: field history: the checkpoint's state is malformed"),
    "state.json history not a list": ("state.json", _state(lambda s: {**s, "history": 3}),
                                      "field history: the checkpoint's state is malformed"),
    "state.json optimizers garbage": ("state.json", _state(lambda s: {**s, "optimizers": [{"state": 1}]}),
                                      "field optimizers: the checkpoint's optimizer state does not fit"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_resume_from_a_damaged_checkpoint_is_one_input_error(killed_run, case, tmp_path):
    import shutil

    files, config, _, last = killed_run
    model = tmp_path / "model"
    work = tmp_path / ".model.work" / "checkpoints" / "last"
    shutil.copytree(last, work)
    name, damage, message = DAMAGE[case]
    damage(work / name)
    with pytest.raises(InputError, match="train without --resume to start over") as refused:
        _train(files, config, model, resume=True)
    assert message in str(refused.value)
    assert not model.exists()


def test_resume_from_the_intact_checkpoint_still_works(killed_run, tmp_path):
    import shutil

    files, config, _, last = killed_run
    shutil.copytree(last, tmp_path / ".model.work" / "checkpoints" / "last")
    result = _train(files, config, tmp_path / "model", resume=True)
    assert [r["epoch"] for r in result["history"]] == [1, 2]


def test_resume_without_a_checkpoint_says_so_and_trains_from_the_start(killed_run, tmp_path):
    files, config, _, _ = killed_run
    with pytest.warns(UserWarning, match="no checkpoint in .*training from the start"):
        result = _train(files, config, tmp_path / "model", resume=True)
    assert [r["epoch"] for r in result["history"]][0] == 1


def test_resume_from_a_checkpoint_gives_no_warning(killed_run, tmp_path):
    import shutil
    import warnings

    files, config, _, last = killed_run
    shutil.copytree(last, tmp_path / ".model.work" / "checkpoints" / "last")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="--resume")
        _train(files, config, tmp_path / "model", resume=True)
