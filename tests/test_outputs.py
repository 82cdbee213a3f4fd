"""Output safety: every verb that writes refuses its own input, foreign folders, files and `--out .`; never
deletes a file it did not write; swaps model folders in whole; locks an output against a second run.

Real files, the real CLI (in process with CliRunner, or as subprocesses where a kill or a second process is the
point), small synthetic data.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import deepcrossing
from deepcrossing.cli import app
from deepcrossing.errors import InputError
from deepcrossing.hashing import file_sha256
from deepcrossing.outputs import OutputKind, reserve

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def cli_error(*args: str | Path, cwd: Path | None = None) -> str:
    """The one-line error of a refused command (exit 2, no traceback)."""
    done = subprocess.run([sys.executable, "-m", "deepcrossing.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=120, env=_env(), cwd=cwd)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]  # progress lines of the run may come before it
    assert last.startswith("error: ") and done.stderr.count("error: ") == 1, done.stderr
    return last


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or p.name.endswith((".lock", ".work")))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic raw data, its samples and a one-epoch model, built once; tests copy what they change."""
    root = tmp_path_factory.mktemp("outputs")
    assert cli("data", "synth", "--ratings", "3000", "--out", root / "raw", "--seed", "1")[0] == 0
    assert cli("prepare", "--data", root / "raw", "--out", root / "samples")[0] == 0
    code, output = cli("train", "--samples", root / "samples", "--out", root / "model", "--epochs", "1",
                       "--device", "cpu")
    assert code == 0, output
    return {"root": root, "raw": root / "raw", "samples": root / "samples", "model": root / "model"}


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------ folders: input, ancestor, foreign, file, .

def test_prepare_into_its_own_input_is_refused(world, tmp_path):
    raw = copy(world["raw"], tmp_path / "raw")
    before = snapshot(raw)
    assert "is an input of this command" in cli_error("prepare", "--data", raw, "--out", raw)
    assert snapshot(raw) == before and leftovers(tmp_path) == []


def test_prepare_into_an_ancestor_of_its_input_is_refused(world, tmp_path):
    raw = copy(world["raw"], tmp_path / "logs" / "raw")
    before = snapshot(tmp_path)
    message = cli_error("prepare", "--data", raw, "--out", tmp_path / "logs", "--overwrite")
    assert "is an input of this command or a folder holding one" in message
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


def test_train_into_its_samples_folder_is_refused(world, tmp_path):
    samples = copy(world["samples"], tmp_path / "samples")
    before = snapshot(samples)
    assert "is an input" in cli_error("train", "--samples", samples, "--out", samples, "--epochs", "1")
    assert snapshot(samples) == before


def test_foreign_folder_is_refused_and_with_overwrite_its_files_survive(world, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    message = cli_error("prepare", "--data", world["raw"], "--out", out)
    assert "holds files that are not a samples folder (thesis.tex)" in message and "--overwrite" in message
    assert snapshot(out) == {"thesis.tex": b"years of work"}

    code, output = cli("prepare", "--data", world["raw"], "--out", out, "--overwrite")
    assert code == 0, output
    assert (out / "thesis.tex").read_text() == "years of work"
    assert {"manifest.json", "train.parquet", "items.parquet"} <= set(os.listdir(out))
    # now a samples folder with one foreign file: a re-run (another format) replaces only what prepare wrote
    code, output = cli("prepare", "--data", world["raw"], "--out", out, "--format", "sparrow")
    assert code == 0, output
    assert sorted(os.listdir(out)) == ["items.parquet", "manifest.json", "test.csv", "thesis.tex", "train.csv",
                                       "valid.csv"]
    assert leftovers(tmp_path) == []


def test_a_foreign_file_of_our_name_is_never_replaced(world, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "manifest.json").write_text('{"mine": true}')
    assert "never replaced" in cli_error("prepare", "--data", world["raw"], "--out", out, "--overwrite")
    assert snapshot(out) == {"manifest.json": b'{"mine": true}'}
    (out / "manifest.json").unlink()
    (out / "train.parquet").write_text("not ours")
    assert "train.parquet, not written by deepcrossing" in cli_error(
        "prepare", "--data", world["raw"], "--out", out, "--overwrite")
    assert snapshot(out) == {"train.parquet": b"not ours"} and leftovers(tmp_path) == []


@pytest.mark.parametrize("verb", ["prepare", "synth", "train"])
def test_an_existing_file_is_never_replaced_by_a_folder(world, tmp_path, verb):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    args = {"prepare": ["prepare", "--data", world["raw"]], "synth": ["data", "synth", "--ratings", "2000"],
            "train": ["train", "--samples", world["samples"], "--epochs", "1"]}[verb]
    assert "is a file" in cli_error(*args, "--out", target, "--overwrite")
    assert target.read_text() == "keep me" and leftovers(tmp_path) == []


def test_out_dot_is_refused_without_a_trace(world, tmp_path):
    raw = copy(world["raw"], tmp_path / "raw")
    before = snapshot(tmp_path)
    for args in (["prepare", "--data", "raw"], ["data", "synth", "--ratings", "2000"],
                 ["train", "--samples", world["samples"], "--epochs", "1"]):
        assert "is the current folder" in cli_error(*args, "--out", ".", cwd=tmp_path)
    assert snapshot(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["raw"]
    assert raw.exists()


def test_synth_over_real_data_is_refused(tmp_path):
    data = tmp_path / "ml"
    data.mkdir()
    (data / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,1\n")
    message = cli_error("data", "synth", "--ratings", "2000", "--out", data)
    assert "not a synthetic data folder (ratings.csv)" in message
    assert (data / "ratings.csv").read_text().count("\n") == 2


def test_rerunning_into_previous_outputs_works(world, tmp_path):
    raw = copy(world["raw"], tmp_path / "raw")
    samples = copy(world["samples"], tmp_path / "samples")
    assert cli("data", "synth", "--ratings", "2500", "--out", raw, "--seed", "2")[0] == 0
    assert json.loads((raw / "synth.json").read_text())["n_ratings"] == 2500
    code, output = cli("prepare", "--data", raw, "--out", samples, "--recent-n", "6")
    assert code == 0, output
    assert json.loads((samples / "manifest.json").read_text())["config"]["recent_n"] == 6
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------ model folders: whole, verified, resumable

def _one_class(samples: Path, tmp_path: Path, split: str, label: int = 1) -> dict[str, Path]:
    files = {name: samples / f"{name}.parquet" for name in ("train", "valid", "test")}
    table = pq.read_table(files[split])
    files[split] = tmp_path / f"{split}-{label}.parquet"
    pq.write_table(table.filter(pc.equal(table["label"], label)), files[split])
    return files


def test_train_failing_late_leaves_the_previous_model_loadable(world, tmp_path):
    model = copy(world["model"], tmp_path / "model")
    weights = file_sha256(model / "model.safetensors")
    files = _one_class(world["samples"], tmp_path, "test")  # trains fine, then the test AUC is NaN
    message = cli_error("train", "--train", files["train"], "--valid", files["valid"], "--test", files["test"],
                        "--out", model, "--epochs", "1", "--seed", "5")
    assert "the test auc is nan" in message and "previous one is untouched" in message
    assert deepcrossing.load(model).manifest["weights_sha256"] == weights == file_sha256(model / "model.safetensors")
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_a_one_class_validation_split_is_refused_before_training(world, tmp_path):
    model = copy(world["model"], tmp_path / "model")
    files = _one_class(world["samples"], tmp_path, "valid")
    message = cli_error("train", "--train", files["train"], "--valid", files["valid"], "--out", model,
                        "--epochs", "1")
    assert "validation split has only positive labels" in message
    files = _one_class(world["samples"], tmp_path, "valid", label=7)  # no rows at all
    message = cli_error("train", "--train", files["train"], "--valid", files["valid"], "--out", model,
                        "--epochs", "1")
    assert "validation split is empty" in message
    deepcrossing.load(model)


def test_kill_9_mid_train_keeps_the_previous_model_and_resume_finishes(world, tmp_path):
    model = copy(world["model"], tmp_path / "model")
    before = snapshot(model)
    args = [sys.executable, "-m", "deepcrossing.cli", "train", "--samples", str(world["samples"]), "--out",
            str(model), "--epochs", "3", "--batch-size", "8", "--seed", "3", "--device", "cpu"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    state = tmp_path / ".model.work" / "checkpoints" / "last" / "state.json"
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before its first checkpoint could be killed"
    assert snapshot(model) == before
    deepcrossing.load(model)

    done = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stderr
    assert "epoch 1:" not in done.stderr and "epoch 3:" in done.stderr  # epoch 1 came from the checkpoint
    loaded = deepcrossing.load(model)
    assert [json.loads(x)["epoch"] for x in (model / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert loaded.manifest["train_config"]["batch_size"] == 8
    assert leftovers(tmp_path) == []  # the work folder is gone once the new model is in place


def test_train_keeps_foreign_files_and_removes_stale_exports(world, tmp_path):
    model = copy(world["model"], tmp_path / "model")
    (model / "README.txt").write_text("my notes")
    code, output = cli("export", "--model", model, "--format", "torchscript")
    assert code == 0, output
    code, output = cli("train", "--samples", world["samples"], "--out", model, "--epochs", "1", "--seed", "9")
    assert code == 0, output
    assert (model / "README.txt").read_text() == "my notes"
    assert not (model / "model.torchscript.pt").exists()  # an export of the previous weights is stale
    deepcrossing.load(model)


# ------------------------------------------------------------------ files: export and evaluate

def test_export_into_a_missing_folder_is_a_clear_error(world, tmp_path):
    message = cli_error("export", "--model", world["model"], "--out", tmp_path / "nowhere" / "m.onnx")
    assert "does not exist; create it first" in message
    assert not (tmp_path / "nowhere").exists()


def test_export_never_replaces_a_foreign_file_without_overwrite(world, tmp_path):
    target = tmp_path / "m.pt"
    target.write_text("mine")
    assert "is not a torchscript export" in cli_error("export", "--model", world["model"], "--format",
                                                      "torchscript", "--out", target)
    assert target.read_text() == "mine"
    assert cli("export", "--model", world["model"], "--format", "torchscript", "--out", target,
               "--overwrite")[0] == 0
    assert cli("export", "--model", world["model"], "--format", "torchscript", "--out", target)[0] == 0  # ours now
    message = cli_error("export", "--model", world["model"], "--format", "torchscript", "--out",
                        world["model"] / "model.safetensors", "--overwrite")
    assert "is an input" in message
    deepcrossing.load(world["model"])


def test_evaluate_over_a_foreign_file_is_refused(world, tmp_path):
    target = tmp_path / "report.json"
    target.write_text('{"budget": 1}')
    assert "is not a metrics report" in cli_error("evaluate", "--model", world["model"], "--samples",
                                                  world["samples"], "--out", target)
    assert target.read_text() == '{"budget": 1}'
    assert "is a folder" in cli_error("evaluate", "--model", world["model"], "--samples", world["samples"],
                                      "--out", tmp_path)
    code, output = cli("evaluate", "--model", world["model"], "--samples", world["samples"], "--out", target,
                       "--overwrite")
    assert code == 0, output
    assert json.loads(target.read_text())["kind"] == "deepcrossing.evaluation"


# ------------------------------------------------------------------ the lock and killed runs' leftovers

def test_a_second_prepare_into_the_same_out_is_refused_by_the_lock(world, tmp_path):
    out = tmp_path / "samples"
    first = subprocess.Popen([sys.executable, "-m", "deepcrossing.cli", "prepare", "--data", str(world["raw"]),
                              "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=_env())
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".samples.tmp-*")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    first.send_signal(signal.SIGSTOP)  # hold the first run inside its lock while the second one starts
    try:
        work = list(tmp_path.glob(".samples.tmp-*"))
        assert work, "the first run never took the lock"
        message = cli_error("prepare", "--data", world["raw"], "--out", out)
        assert "another run (pid " in message and "is writing this output now" in message
        assert all(p.exists() for p in work)  # the second run never removes the first one's work folder
    finally:
        first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert json.loads((out / "manifest.json").read_text())["kind"] == "deepcrossing.samples"
    assert leftovers(tmp_path) == []


def test_work_folders_of_killed_runs_are_removed_by_the_next_run(world, tmp_path):
    stale = tmp_path / ".samples.tmp-killed"
    stale.mkdir()
    (stale / "train.parquet").write_text("half")
    (tmp_path / ".samples.lock").write_text("12345\n")  # a killed run's lock file: present but not held
    assert cli("prepare", "--data", world["raw"], "--out", tmp_path / "samples")[0] == 0
    assert leftovers(tmp_path) == []


def test_a_swap_cut_between_its_renames_is_completed(tmp_path):
    kind = OutputKind("notes folder", "notes.json", lambda m: m.get("kind") == "notes", lambda m: ("*.txt",))
    old = tmp_path / ".out.old-99"
    old.mkdir()
    (old / "notes.json").write_text('{"kind": "notes"}')
    with reserve(tmp_path / "out", kind) as reservation:  # the previous output is put back first
        assert (reservation.target / "notes.json").exists()
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_reserve_refuses_without_touching_anything(tmp_path):
    kind = OutputKind("notes folder", "notes.json", lambda m: m.get("kind") == "notes", lambda m: ())
    target = tmp_path / "a" / "b" / "out"
    with pytest.raises(InputError, match="is an input"):
        with reserve(target, kind, inputs=[target / "x.csv"]):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with reserve(target, kind) as reservation, reservation.write():
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []  # the parents it made for the lock are gone again


def test_a_symlinked_or_unwritable_target_is_a_clear_error(world, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert "symbolic link" in cli_error("data", "synth", "--ratings", "2000", "--out", tmp_path / "link")
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root writes anywhere
            pytest.skip("running as root: permissions are not enforced")
        assert "cannot" in cli_error("data", "synth", "--ratings", "2000", "--out", locked / "syn")
    finally:
        locked.chmod(0o700)


def test_quickstart_refuses_a_foreign_sub_output_before_any_work(tmp_path):
    (tmp_path / "q" / "model").mkdir(parents=True)
    (tmp_path / "q" / "model" / "plan.md").write_text("mine")
    message = cli_error("quickstart", "--out", tmp_path / "q", "--ratings", "2000", "--epochs", "1")
    assert "holds files that are not a model folder (plan.md)" in message
    assert sorted(os.listdir(tmp_path / "q")) == ["model"]  # no data generated, no samples written


def test_a_persons_files_kept_by_overwrite_survive_the_next_run(tmp_path):
    """`train --out DIR --overwrite` into a folder holding a person's `checkpoints/x` and `metrics-mine.json`
    kept them, but the next `train --out DIR` deleted both: they match the model folder's patterns (the legacy
    checkpoints folder, evaluate's metrics-*.json). The same for a recall folder and a person's
    `mine.safetensors`. Now only entries that are ours by content (or listed by the manifest) are replaced."""
    import json

    from dc_synthetic import sample_table, small_spec

    from deepcrossing.config import ExperimentConfig, ModelConfig, TrainConfig
    from deepcrossing.training.pipeline import train_model
    from deepcrossing.training.recall_model import FORMAT as RECALL_FORMAT
    from deepcrossing.training.recall_model import RECALL_OUTPUT

    out = tmp_path / "model"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "x").write_text("mine")
    (out / "metrics-mine.json").write_text('{"my": "notes"}')
    tables = {"train": sample_table(300, seed=0), "valid": sample_table(150, seed=1)}
    config = ExperimentConfig(small_spec(), ModelConfig(width=8, hidden=(4,)), TrainConfig(epochs=1, batch_size=64))
    train_model(tables, config, out, overwrite=True)
    (out / "metrics-valid.json").write_text(json.dumps({"kind": "deepcrossing.evaluation", "n_samples": 1}))
    train_model(tables, config, out)
    assert (out / "checkpoints" / "x").read_text() == "mine"
    assert (out / "metrics-mine.json").read_text() == '{"my": "notes"}'
    assert not (out / "metrics-valid.json").exists()  # a report of the previous model: ours, stale, gone

    recall = tmp_path / "recall"
    recall.mkdir()
    (recall / "manifest.json").write_text(json.dumps({"format": RECALL_FORMAT,
                                                       "channels": {"two_tower": {"file": "two_tower.safetensors"}}}))
    for name in ("two_tower.safetensors", "mine.safetensors", "metrics.json"):
        (recall / name).write_text("x")
    assert RECALL_OUTPUT.owned_names(recall) == {"manifest.json", "two_tower.safetensors", "metrics.json"}
