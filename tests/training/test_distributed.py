"""Data-parallel training (`train --nproc N`): real gloo process groups on loopback, real rank processes.

* 2 ranks vs 1 process on the same global batches: the same weights (1e-5) after several steps, with dense
  Adam and with sparse embedding gradients (SparseAdam);
* `train --nproc 2` on ml-latest-small reaches the single-process valid AUC (within 0.003);
* a killed rank makes the run fail with an error (no hang), and `--resume --nproc 2` then finishes it.

Locally these skip when gloo is unavailable; under CI=true such a skip is a failure.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from dc_synthetic import optimizer_step
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from deepcrossing.cli import app
from deepcrossing.config import Feature, FeatureSpec, ModelConfig, TrainConfig
from deepcrossing.encoding import Batch
from deepcrossing.errors import DeepCrossingError
from deepcrossing.model import DeepCrossing, DeepCrossingTrain
from deepcrossing.training import distributed
from deepcrossing.training.distributed import DistContext, epoch_seed, shard_rows
from deepcrossing.training.optim import lr_at, make_optimizers, set_lr
from deepcrossing.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")
N, BATCH, WORLD = 512, 64, 2  # 256 rows per rank, local batches of 32: 8 steps


@pytest.fixture(autouse=True)
def _gloo() -> None:
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        if IN_CI:
            pytest.fail("torch.distributed with gloo is unavailable, but CI must run the DDP tests")
        pytest.skip("torch.distributed with gloo is unavailable")


def _spec() -> FeatureSpec:
    return FeatureSpec((Feature("movieId", "categorical", "item", dim=4),
                        Feature("genres", "multi_hot", "item", dim=3, max_len=3),
                        Feature("x", "numeric", transform="standardize"),
                        Feature("y", "numeric", transform="standardize")))


def _data() -> Batch:
    g = torch.Generator().manual_seed(1)
    dense = torch.randn(N, 2, generator=g)
    ids = torch.randint(1, 30, (N,), generator=g)
    bags = torch.randint(0, 8, (N, 3), generator=g)
    labels = ((dense[:, 0] + (ids % 3 == 0).float() + 0.3 * torch.randn(N, generator=g)) > 0.5).float()
    return Batch(dense, {"movieId": ids}, {"genres": bags}, {}, labels)


def _model(optimizer: str) -> DeepCrossing:
    torch.manual_seed(0)
    return DeepCrossing(_spec(), ModelConfig(hidden=(8,), width=8, dropout=0.0, embedding_dropout=0.0,
                                             embedding_l2=1e-3), {"movieId": 32, "genres": 10},
                        sparse=optimizer == "sparse_adam")


def _config(optimizer: str) -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=BATCH, lr=1e-2, lr_schedule="cosine", optimizer=optimizer, patience=0,
                       seed=5, weight_decay=0.0)


OPTIMIZERS = ("adam", "sparse_adam")


def _rank_worker(ctx: DistContext, out: str) -> None:
    """One rank: train its shard with the Trainer under DDP (each optimizer); rank 0 saves the weights."""
    distributed.init(ctx)
    torch.set_num_threads(1)
    data = _data()
    for optimizer in OPTIMIZERS:
        model = _model(optimizer)
        Trainer(DeepCrossingTrain(model), _config(optimizer), dist=ctx).fit(data.take(shard_rows(N, ctx)), data)
        if ctx.is_main:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out}-{optimizer}")


def _reference(optimizer: str) -> dict[str, torch.Tensor]:
    """One process on the concatenation of the ranks' local batches (their shards, their epoch permutations)."""
    data, c = _data(), _config(optimizer)
    model = _model(optimizer)
    module = DeepCrossingTrain(model)
    opts = make_optimizers(module.parameter_groups(), c)
    local, rows = BATCH // WORLD, N // WORLD
    shards = []
    for rank in range(WORLD):
        shard = data.take(shard_rows(N, DistContext(rank, WORLD, rank, "gloo")))
        perm = torch.randperm(len(shard), generator=torch.Generator().manual_seed(epoch_seed(c.seed, rank, 0)))
        shards.append(shard.take(perm[:rows]))
    steps = math.ceil(rows / local)
    for step in range(steps):
        parts = [s.slice(step * local, (step + 1) * local) for s in shards]
        set_lr(opts, lr_at(c, 0, step, steps))
        objective, _ = module(Batch.cat(parts))
        optimizer_step(opts, objective)
    return model.state_dict()


def test_two_gloo_ranks_match_one_process_on_the_same_global_batches(tmp_path):
    out = tmp_path / "rank0"
    for attempt in range(3):  # one launch for both optimizers (start-up is slow)
        try:
            distributed.launch(WORLD, _rank_worker, str(out))
            break
        except DeepCrossingError as exc:
            # PyTorch's gloo sparse all-reduce (sparse_adam's embedding gradients) aborts a rank now and then:
            # "terminate called without an active exception", SIGABRT, ~1 launch in 10 with sparse_adam, none in
            # 10 with dense Adam; also at commits before 2026-12-01. A relaunch must then agree exactly.
            if "SIGABRT" not in str(exc) or attempt == 2:
                raise
    for optimizer in OPTIMIZERS:  # dense Adam; sparse embedding gradients all-reduced by gloo + SparseAdam
        got, want = load_file(f"{out}-{optimizer}"), _reference(optimizer)
        initial = _model(optimizer).state_dict()
        assert set(got) == set(want)
        for name, value in want.items():
            torch.testing.assert_close(got[name], value, atol=1e-5, rtol=1e-5, msg=f"{optimizer}: {name}")
        moved = max(float((want[k] - initial[k]).abs().max()) for k in want)
        assert moved > 1e-2  # the weights did train: the equality is not of untouched weights


@pytest.mark.slow
def test_a_rank_error_is_one_line_for_people(tmp_path):
    with pytest.raises(DeepCrossingError, match="smaller than the 2 ranks"):
        distributed.launch(WORLD, _small_batch_worker, None)


def _small_batch_worker(ctx: DistContext, job: None) -> None:
    distributed.init(ctx)
    data = _data()
    Trainer(DeepCrossingTrain(_model("adam")), TrainConfig(epochs=1, batch_size=1), dist=ctx).fit(data, data)


# ---------------------------------------------------------------- the command, on real samples


@pytest.fixture(scope="module")
def ml_samples(ml_small_dir, tmp_path_factory):
    from deepcrossing.data import load_dataset
    from deepcrossing.features import FeatureConfig, build_samples

    root = tmp_path_factory.mktemp("ml-ddp")
    build_samples(load_dataset(ml_small_dir, workdir=root / "work"), FeatureConfig(), root / "parquet")
    return root / "parquet"


def _valid_auc(model_dir: Path) -> float:
    return float(json.loads((model_dir / "metrics.json").read_text())["valid"]["auc"])


@pytest.mark.slow
def test_two_rank_train_reaches_the_single_process_auc(ml_samples, tmp_path):
    runner = CliRunner()
    common = ["--samples", str(ml_samples), "--epochs", "3", "--seed", "0", "--device", "cpu"]
    single = runner.invoke(app, ["train", *common, "--out", str(tmp_path / "one")])
    assert single.exit_code == 0, single.output
    ddp = runner.invoke(app, ["train", *common, "--out", str(tmp_path / "two"), "--nproc", "2"])
    assert ddp.exit_code == 0, ddp.output
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["ranks"] == 2
    import deepcrossing

    deepcrossing.load(tmp_path / "two")  # the same model folder format
    assert abs(_valid_auc(tmp_path / "two") - _valid_auc(tmp_path / "one")) < 0.003


def _rank_pids(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(p) for p in children if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


@pytest.mark.slow
def test_a_killed_rank_fails_the_run_and_resume_finishes_it(ml_samples, tmp_path):
    out = tmp_path / "model"
    cmd = [sys.executable, "-m", "deepcrossing.cli", "train", "--samples", str(ml_samples), "--out", str(out),
           "--epochs", "4", "--seed", "0", "--device", "cpu", "--nproc", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    state = tmp_path / ".model.work" / "checkpoints" / "last" / "state.json"
    deadline = time.monotonic() + 150
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert state.exists() and proc.poll() is None, "no checkpoint after the first epoch"
    ranks = _rank_pids(proc.pid)
    assert len(ranks) == 2
    os.kill(max(ranks), signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=60)  # the others are stopped: an error, not a hang
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the run hung after a rank was killed")
    assert proc.returncode == 2, err
    assert "error:" in err and "died" in err and "--resume" in err
    assert not (out / "manifest.json").exists()
    done = json.loads(state.read_text())["epochs_done"]
    assert 1 <= done < 4

    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=env, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history][:done + 1] == list(range(1, done + 2))
    assert f"epoch {done + 1}:" in resumed.stdout + resumed.stderr and "epoch 1:" not in resumed.stdout
    import deepcrossing

    assert deepcrossing.load(out).manifest["metrics"]["epochs_run"] == len(history)


@pytest.mark.slow
def test_the_same_command_runs_under_torchrun(ml_samples, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        if IN_CI:
            pytest.fail(f"{torchrun} is missing, but CI must run the DDP tests")
        pytest.skip(f"{torchrun} is missing")
    out = tmp_path / "model"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "deepcrossing.cli", "train",
                           "--samples", str(ml_samples), "--out", str(out), "--epochs", "1", "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["ranks"] == 2
    assert proc.stdout.count("best epoch 1 of 1") == 1  # rank 0 alone reports
