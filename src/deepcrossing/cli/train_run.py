"""The body of `deepcrossing train` once its flags are checked: one process, one local rank of
``--nproc N``, or one rank started by ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment).

Rank 0 draws the progress bars and prints the summary; every rank reads the samples, fits the same encoder
and trains on its shard (see :mod:`deepcrossing.training.distributed`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepcrossing.cli.common import console, out, seed_everything, set_threads
from deepcrossing.errors import DeepCrossingError

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.progress import Progress

    from deepcrossing.config import ExperimentConfig
    from deepcrossing.training.distributed import DistContext
    from deepcrossing.training.trainer import StepInfo

def default_budget() -> int:
    """A quarter of the machine's physical memory: encoded samples take ~2-3x their Parquet size in memory."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4)
    except (ValueError, OSError):  # pragma: no cover - every Linux has these
        return 4 * 1024**3


@dataclass(frozen=True)
class TrainJob:
    """Everything a training process needs (picklable: it is handed to spawned ranks)."""

    files: dict[str, Path]
    config: ExperimentConfig
    out_dir: Path
    device: str
    threads: int
    resume: bool
    overwrite: bool
    stream: bool
    budget: int | None
    window: int = 4
    ensemble: int = 1
    refit: bool = False


def run_rank(ctx: DistContext, job: TrainJob) -> None:
    """Entry point of one local rank spawned by ``train --nproc N``."""
    run(job, ctx)


def run(job: TrainJob, ctx: DistContext | None) -> None:
    """Train (as one process, or as rank ``ctx``) and, on rank 0, print the summary.

    A rank that finished waits for the others, then leaves the process group: a gloo rank leaving while another
    still talked to it, or exiting with the group still up (under torchrun nothing else ends it), sometimes
    aborted in gloo's threads ("terminate called without an active exception", SIGABRT; about 1 run in 7 of
    tests/training/test_distributed.py). After an error no barrier: the other ranks may be gone."""
    from deepcrossing.training import distributed

    _run(job, ctx)
    if ctx is not None:
        ctx.barrier()
        distributed.shutdown()


def _run(job: TrainJob, ctx: DistContext | None) -> None:
    from deepcrossing.features import read_samples
    from deepcrossing.training import distributed
    from deepcrossing.training.pipeline import train_model
    from deepcrossing.training.stream import StreamOptions, should_stream

    config, world = job.config, 1 if ctx is None else ctx.world_size
    device = job.device if ctx is None or job.device != "cuda" else f"cuda:{ctx.local_rank}"
    if ctx is not None:
        distributed.init(ctx)
    main = ctx is None or ctx.is_main
    seed_everything(config.train.seed)
    set_threads(job.threads or None, world)
    started = time.perf_counter()
    stream = job.stream or should_stream(job.files["train"], job.budget)
    # only the spec's columns are read; streamed, the Parquet splits are read row group by row group
    streamed = {name for name, path in job.files.items()
                if stream and (name == "train" or Path(path).suffix.lower() == ".parquet")}
    tables = {name: read_samples(path, [*config.spec.columns, "label"]) for name, path in job.files.items()
              if name not in streamed}
    if main:
        how = f"train streamed from {job.files['train']}" if stream else ""
        sizes = ", ".join([how] * bool(how) + [f"{n} {t.num_rows:,}" for n, t in tables.items()]
                          + [f"{n} streamed" for n in ("valid", "test") if n in streamed])
        ranks = f", {world} ranks ({'nccl' if ctx and ctx.backend == 'nccl' else 'gloo'})" if world > 1 else ""
        out.print(f"read {sizes} samples ({time.perf_counter() - started:.1f} s); device {job.device}, "
                  f"{job.threads or max(1, (os.cpu_count() or 1) // world)} thread(s){' per rank' * (world > 1)}"
                  f"{ranks}", highlight=False)
    options = StreamOptions(window=job.window) if stream else None
    sources = {k: str(v) for k, v in job.files.items()}
    if job.ensemble > 1:
        _run_ensemble(job, tables, sources, device)
        return
    if job.refit:
        if stream:
            raise DeepCrossingError(f"--refit holds train + valid in memory, but the train file exceeds the memory "
                                    f"budget (--memory-budget {job.budget:,} bytes); raise it")
        _run_refit(job, tables, sources, device)
        return
    if not main:
        train_model(tables, config, job.out_dir, device=device, resume=job.resume, overwrite=job.overwrite,
                    sources=sources, dist=ctx, stream=options)
        return
    with _progress() as progress:
        on_step = _step_bar(progress, config.train.epochs)

        def on_epoch(r: dict[str, Any]) -> None:
            progress.console.print(
                f"epoch {r['epoch']}: train loss {r['train_loss']:.4f}  valid AUC {r['valid_auc']:.4f}  "
                f"logloss {r['valid_logloss']:.4f}  ({r['samples_per_s']:,.0f} samples/s, {r['train_seconds']:.1f} s)",
                highlight=False)

        summary = train_model(tables, config, job.out_dir, device=device, resume=job.resume,
                              overwrite=job.overwrite, sources=sources, on_step=on_step, on_epoch=on_epoch,
                              dist=ctx, stream=options)
    best = summary["best_epoch"]
    out.print(f"best epoch {best} of {summary['epochs_run']}"
              + (" (stopped early)" if summary["stopped_early"] else "")
              + f": valid AUC {summary['valid']['auc']:.4f}  logloss {summary['valid']['logloss']:.4f}",
              highlight=False)
    if "test" in summary:
        out.print(f"test AUC {summary['test']['auc']:.4f}  logloss {summary['test']['logloss']:.4f}", highlight=False)
    out.print(f"wrote {job.out_dir}: model.safetensors, manifest.json, metrics.jsonl, metrics.json, curves.png, "
              f"roc.png in {summary['seconds']:.1f} s", highlight=False)


def _progress() -> Progress:
    """The transient progress bar of a training run."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), console=console, transient=True)


def _step_bar(progress: Progress, epochs: int) -> Callable[[StepInfo], None]:
    """An ``on_step`` callback drawing the epoch's bar (steps, loss, samples/s) in ``progress``."""
    task = progress.add_task("epoch", total=None, info="")

    def on_step(info: StepInfo) -> None:
        progress.update(task, description=f"epoch {info.epoch}/{epochs}", total=info.steps,
                        completed=info.step, info=f"loss {info.loss:.4f}  {info.samples_per_s:,.0f} samples/s")

    return on_step


def _run_ensemble(job: TrainJob, tables: dict[str, Any], sources: dict[str, str], device: str) -> None:
    """``train --ensemble K``: K members, fused into one model folder; print each member's and the fused AUC."""
    from deepcrossing.training.ensemble import train_ensemble

    k, epochs = job.ensemble, job.config.train.epochs
    with _progress() as progress:
        on_step = _step_bar(progress, epochs)

        def on_epoch(r: dict[str, Any]) -> None:
            progress.console.print(
                f"member {r['member'] + 1}/{k} (seed {r['seed']}) epoch {r['epoch']}: train loss "
                f"{r['train_loss']:.4f}  valid AUC {r['valid_auc']:.4f}  ({r['train_seconds']:.1f} s)", highlight=False)

        summary = train_ensemble(tables, job.config, job.out_dir, k, seed_everything, device=device,
                                 sources=sources, on_step=on_step, on_epoch=on_epoch, overwrite=job.overwrite)
    ens = summary["ensemble"]
    for m in ens["members"]:
        out.print(f"member seed {m['seed']}: best epoch {m['best_epoch']} of {m['epochs_run']}, valid AUC "
                  f"{m['valid']['auc']:.4f}", highlight=False)
    out.print(f"fused {k} members: valid AUC {summary['valid']['auc']:.4f}  logloss {summary['valid']['logloss']:.4f}"
              f" (max |logit - members' mean| {ens['max_abs_logit_diff']:.1e})", highlight=False)
    _print_written(summary, job.out_dir, "one fused model")


def _run_refit(job: TrainJob, tables: dict[str, Any], sources: dict[str, str], device: str) -> None:
    """``train --refit``: the early-stopped selection run, then the refit on train + valid; print both."""
    from deepcrossing.training.refit import train_refit

    epochs = job.config.train.epochs
    with _progress() as progress:
        on_step = _step_bar(progress, epochs)

        def on_epoch(r: dict[str, Any]) -> None:
            held_out = f"  valid AUC {r['valid_auc']:.4f}" if "valid_auc" in r else ""
            progress.console.print(f"{r['run']} epoch {r['epoch']}: train loss {r['train_loss']:.4f}{held_out}  "
                                   f"({r['train_seconds']:.1f} s)", highlight=False)

        summary = train_refit(tables, job.config, job.out_dir, seed_everything, device=device, sources=sources,
                              on_step=on_step, on_epoch=on_epoch, overwrite=job.overwrite)
    info = summary["refit"]
    out.print(f"selection: best epoch {info['best_epoch']} of {info['epochs_run']}: valid AUC "
              f"{info['selection_valid']['auc']:.4f}  logloss {info['selection_valid']['logloss']:.4f} (held out)",
              highlight=False)
    out.print(f"refit: {info['epochs']} epochs on train + valid ({info['rows']['train+valid']:,} rows); valid AUC "
              f"{summary['valid_in_sample']['auc']:.4f} (in-sample, not held out)", highlight=False)
    _print_written(summary, job.out_dir, "the refit model")


def _print_written(summary: dict[str, Any], out_dir: Path, what: str) -> None:
    """The test metrics (when there is a test split) and where the model went."""
    if "test" in summary:
        out.print(f"test AUC {summary['test']['auc']:.4f}  logloss {summary['test']['logloss']:.4f}", highlight=False)
    out.print(f"wrote {out_dir}: {what} (model.safetensors, manifest.json, metrics.json) in "
              f"{summary['seconds']:.1f} s", highlight=False)


__all__ = ["TrainJob", "default_budget", "run", "run_rank"]
