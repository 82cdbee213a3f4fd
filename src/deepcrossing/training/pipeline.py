"""From sample tables to a model folder: fit the encoder, encode once, train, test, plot, save.

The model folder gets ``model.safetensors`` + ``manifest.json`` (see :mod:`training.artifact`),
``metrics.jsonl`` (one JSON line per epoch), ``metrics.json`` (final valid/test metrics), ``curves.png``
(loss and AUC per epoch) and ``roc.png`` (test ROC, else valid). It is written as a whole into a temporary
sibling, loaded back with :func:`training.artifact.load`, and only then swapped in (see
:mod:`deepcrossing.outputs`): a run that fails or is killed leaves the previous model loadable.

During training, the checkpoints (``checkpoints/last/``, for ``resume``) and the live ``metrics.jsonl`` live
in the work folder ``.NAME.work/`` next to the model folder; ``resume`` reuses it after a kill, a run without
``resume`` starts it afresh, and it is removed once the new model is in place.

The caller (the CLI) seeds the global RNGs before calling; initialization and dropout then follow that seed
and the shuffling follows ``TrainConfig.seed``.

Example:
    >>> cli.seed_everything(0)                                                          # doctest: +SKIP
    >>> summary = train_model(tables, load_builtin("movielens"), "runs/ml-small")     # doctest: +SKIP
    >>> summary["test"]["auc"]                                                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from deepcrossing.atomic import write_text_atomic
from deepcrossing.config import ExperimentConfig, TrainConfig
from deepcrossing.encoding.batch import Batch
from deepcrossing.encoding.encoder import Encoder
from deepcrossing.errors import InputError
from deepcrossing.hashing import file_sha256
from deepcrossing.model.deep_crossing import DeepCrossing
from deepcrossing.model.train_module import DeepCrossingTrain
from deepcrossing.outputs import Reservation, reserve
from deepcrossing.training import artifact, checkpoint
from deepcrossing.training.checkpoint import fingerprint
from deepcrossing.training.distributed import DistContext, shard_rows
from deepcrossing.training.pairwise import train_users
from deepcrossing.training.stream import ParquetSplit, ParquetStream, StreamOptions, fit_streaming
from deepcrossing.training.plots import plot_history, plot_roc
from deepcrossing.training.trainer import StepInfo, Trainer, logit_metrics, predict_logits


def train_model(tables: Mapping[str, pa.Table | None], config: ExperimentConfig, out_dir: str | Path | Reservation,
                device: str = "cpu", resume: bool = False,
                sources: dict[str, str] | None = None,
                on_step: Callable[[StepInfo], None] | None = None,
                on_epoch: Callable[[dict[str, Any]], None] | None = None,
                *, overwrite: bool = False, dist: DistContext | None = None,
                stream: StreamOptions | None = None) -> dict[str, Any]:
    """Train a DeepCrossing model on ``tables["train"]``, early-stopped on ``tables["valid"]``.

    Args:
        tables: ``train`` and ``valid`` (required) and ``test`` (optional) sample tables.
        config: spec + model + train config.
        out_dir: the model folder (new, empty or a previous model folder; other files in it are kept), or a
            :class:`~deepcrossing.outputs.Reservation` of it that the caller holds.
        device: ``cpu`` or ``cuda``.
        resume: continue from the checkpoint in ``.NAME.work/`` (same config and samples) after a kill.
        sources: split -> file name, for error messages and the manifest (and never an output).
        on_step, on_epoch: progress callbacks (see :class:`Trainer`).
        overwrite: write into a folder of other files (they are kept; a name clash is refused).
        dist: this rank of a data-parallel run (see :mod:`training.distributed`): every rank fits the encoder
            on the whole train file (refused if the ranks' fits differ) and trains on its shard; only rank 0
            reserves and writes the model folder (the others return ``{}``).
        stream: read the train file incrementally (``tables["train"]`` is then not needed, ``sources["train"]``
            is read; see :mod:`training.stream`); a valid/test split with a Parquet source and no table is
            then scored row group by row group (:class:`~deepcrossing.training.stream.ParquetSplit`).

    Returns:
        Summary dict: ``history``, ``best_epoch``, ``valid``/``test`` metrics, ``files``, ``seconds``.

    Raises:
        InputError: the output may not be written (see :mod:`deepcrossing.outputs`), a validation split that
            is empty or has one class, a metric that is not finite. The previous model is then untouched.
    """
    run = _Run(device, resume, sources or {}, on_step, on_epoch, dist, stream)
    if dist is not None and not dist.is_main:  # rank 0 owns the output; the others only train
        target = out_dir.target if isinstance(out_dir, Reservation) else Path(out_dir)
        return _train(tables, config, target.parent / f".{target.name}.work", run)
    if isinstance(out_dir, Reservation):
        return _train(tables, config, out_dir, run)
    with reserve(out_dir, artifact.MODEL_OUTPUT, inputs=list((sources or {}).values()),
                 overwrite=overwrite) as reservation:
        return _train(tables, config, reservation, run)


@dataclass(frozen=True)
class _Run:
    """How one call of :func:`train_model` runs (its keyword arguments, passed on as one)."""

    device: str
    resume: bool
    sources: dict[str, str]
    on_step: Callable[[StepInfo], None] | None
    on_epoch: Callable[[dict[str, Any]], None] | None
    dist: DistContext | None
    stream: StreamOptions | None


def _require_two_classes(batch: Batch | ParquetSplit, source: str | None) -> None:
    labels = batch.labels
    n_pos = 0 if labels is None else int(labels.sum().item())
    n = len(batch)
    if n == 0 or n_pos in (0, n):
        what = "is empty" if n == 0 else f"has only {'positive' if n_pos else 'negative'} labels ({n:,} rows)"
        raise InputError(f"the validation split {what}: early stopping needs AUC, which needs both classes; "
                         "prepare other fractions or another --label-threshold", path=source)


def _require_finite(results: dict[str, Any], sources: dict[str, str]) -> None:
    for split in ("valid", "test"):
        for name, value in results.get(split, {}).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise InputError(f"the {split} {name} is {value} (a split with one class or no rows?); the "
                                 "model was not saved, the previous one is untouched", path=sources.get(split))


def _train_table(tables: Mapping[str, pa.Table | None]) -> pa.Table:
    train = tables.get("train")
    if train is None:
        raise InputError("no train samples to train on (only train --stream reads the train file itself)")
    return train


def _fit_encoder(tables: Mapping[str, pa.Table | None], config: ExperimentConfig, run: _Run
                 ) -> tuple[Encoder, dict[str, Batch | ParquetSplit], Batch | ParquetStream]:
    """The encoder (fitted on the whole train file), the encoded valid/test (streamed: a valid/test split
    given as a Parquet source without a table is scored row group by row group), and this rank's train data."""
    sources, dist = run.sources, run.dist
    if run.stream is not None:
        encoder = fit_streaming(Path(sources["train"]), config.spec, run.stream)
    else:
        encoder = Encoder(config.spec).fit(_train_table(tables), source=sources.get("train"))
    if dist is not None:
        dist.require_same("encoder vocabularies and statistics", encoder.state())
    encoded: dict[str, Batch | ParquetSplit] = {}
    for name in ("valid", "test"):
        table = tables.get(name)
        if table is not None:
            encoded[name] = encoder.transform(table, source=sources.get(name))
        elif run.stream is not None and name in sources:
            encoded[name] = ParquetSplit(sources[name], encoder)
    if run.stream is not None:
        return encoder, encoded, ParquetStream(Path(sources["train"]), encoder, dist, run.stream)
    train = _train_table(tables)
    if dist is not None:
        train = train.take(shard_rows(train.num_rows, dist).numpy())
    return encoder, encoded, encoder.transform(train, source=sources.get("train"))


def _train(tables: Mapping[str, pa.Table | None], config: ExperimentConfig, reservation: Reservation | Path,
           run: _Run) -> dict[str, Any]:
    t0 = time.perf_counter()
    device, resume, sources, on_epoch = run.device, run.resume, run.sources, run.on_epoch
    main = not isinstance(reservation, Path)
    work = reservation.sibling("work") if isinstance(reservation, Reservation) else reservation
    checkpoints = work / "checkpoints"  # kept after a kill, for --resume
    if main and not resume and work.exists():
        shutil.rmtree(work)
    if isinstance(reservation, Reservation):
        legacy = reservation.target / "checkpoints"  # where versions before the work folder kept them
        if resume and not checkpoints.exists() and (legacy / "last").is_dir():
            shutil.copytree(legacy, checkpoints)
        work.mkdir(parents=True, exist_ok=True)
    resuming = resume and (checkpoints / checkpoint.LAST / "state.json").exists()
    if resume and not resuming and isinstance(reservation, Reservation):
        warnings.warn(f"--resume: no checkpoint in {checkpoints} (no killed run of this model to continue); "
                      "training from the start", stacklevel=2)
    users = train_users(tables, config.train, sources.get("train"), run.dist, streaming=run.stream is not None)
    encoder, encoded, train_data = _fit_encoder(tables, config, run)
    _require_two_classes(encoded["valid"], sources.get("valid"))
    cfg_train = config.train
    # NCCL has no sparse all-reduce: on GPUs under DDP the tables get dense gradients (and the dense Adam)
    sparse = cfg_train.optimizer == "sparse_adam" and (run.dist is None or run.dist.backend == "gloo")
    model = build_model(config, encoder, sparse=sparse, device=device)
    history_lines: list[dict[str, Any]] = []

    def epoch_done(record: dict[str, Any]) -> None:
        history_lines.append(record)
        write_text_atomic(work / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history_lines))
        if on_epoch is not None:
            on_epoch(record)

    provenance = fingerprint([sources[k] for k in ("train", "valid") if k in sources], config.to_dict())
    # under DDP every rank resumes from rank 0's checkpoint; only rank 0 writes one
    trainer = Trainer(DeepCrossingTrain(model), cfg_train, device, checkpoints, fingerprint=provenance,
                      dist=run.dist)
    if resuming:
        history_lines.extend(checkpoint.read_state(checkpoints)["history"])
    fit = trainer.fit(train_data, encoded["valid"], resume=resume, on_step=run.on_step, on_epoch=epoch_done,
                      users=users)
    if not isinstance(reservation, Reservation):
        return {}
    model = model.cpu().eval()
    logits = score_splits(model, encoded)                            # each split scored once
    results: dict[str, Any] = {"best_epoch": fit.best_epoch, "epochs_run": len(fit.history),
                               "stopped_early": fit.stopped_early}
    if trainer.swa_record:
        results["swa"] = trainer.swa_record
    results.update(split_metrics(logits, encoded))
    _require_finite(results, sources)
    results["train_seconds"] = round(sum(r["train_seconds"] for r in fit.history), 3)
    results["n_train"] = fit.samples_per_epoch
    results["ranks"] = 1 if run.dist is None else run.dist.world_size
    files = write_model_folder(reservation, model, encoder, cfg_train, results, fit.history, encoded, logits,
                               sources)
    shutil.rmtree(work, ignore_errors=True)
    return {**results, "history": fit.history, "files": files,
            "seconds": round(time.perf_counter() - t0, 3)}


def build_model(config: ExperimentConfig, encoder: Encoder, *, sparse: bool, device: torch.device | str
                ) -> DeepCrossing:
    """A fresh :class:`DeepCrossing` for the fitted ``encoder`` on ``device``.

    Raises:
        InputError: the model does not fit in memory (a spec with a huge ``hash_buckets`` or ``dim``),
            naming the largest embedding table's features.
    """
    try:
        return DeepCrossing(config.spec, config.model, encoder.cardinalities, sparse=sparse).to(device)
    except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        if not isinstance(exc, MemoryError) and "memory" not in str(exc).lower():
            raise
        name, rows = max(encoder.cardinalities.items(), key=lambda kv: kv[1])
        features = config.spec.tables()[name].features
        raise InputError(f"the model does not fit in memory: its largest embedding table ({', '.join(features)}) "
                         f"has {rows:,} rows; lower hash_buckets or dim", field=features[0]) from None


def score_splits(model: DeepCrossing, encoded: Mapping[str, Batch | ParquetSplit]) -> dict[str, torch.Tensor]:
    """(B,) logits of ``model`` on valid (and test), each split scored once (a streamed split is read once).
    A test split without rows (``prepare --fractions 0.9,0.1,0``) is left out, as if there were none."""
    return {name: predict_logits(model, encoded[name]) for name in ("valid", "test")
            if name in encoded and (name == "valid" or len(encoded[name]) > 0)}


def split_metrics(logits: Mapping[str, torch.Tensor], encoded: Mapping[str, Batch | ParquetSplit]
                  ) -> dict[str, dict[str, float]]:
    """``{"valid": {auc, logloss}, "test": ...}`` of :func:`score_splits`' logits against the splits' labels."""
    out = {}
    for name, split_logits in logits.items():
        labels = encoded[name].labels
        if labels is None:
            raise InputError(f"the {name} samples have no label column", field="label")
        out[name] = logit_metrics(split_logits, labels)
    return out


def write_model_folder(reservation: Reservation, model: DeepCrossing, encoder: Encoder, cfg_train: TrainConfig,
                       results: dict[str, Any], history: list[dict[str, Any]],
                       encoded: Mapping[str, Batch | ParquetSplit], logits: Mapping[str, torch.Tensor],
                       sources: dict[str, str]) -> dict[str, str]:
    """Write the model folder as a whole (weights, manifest with ``results`` as its metrics, ``metrics.jsonl``
    of ``history``, ``metrics.json``, curves, the ROC of test, else valid, from ``logits``: the model's
    :func:`score_splits`), load it back, swap it in.

    Returns:
        The files written: ``curves``, ``roc``, ``model``, ``manifest``, ``metrics``.
    """
    out_dir = reservation.target
    samples: dict[str, Any] = {"files": dict(sources)}
    manifest_path = Path(sources["train"]).parent / "manifest.json" if "train" in sources else None
    if manifest_path is not None and manifest_path.exists():
        try:
            samples["manifest"] = str(manifest_path)
            samples["sha256"] = file_sha256(manifest_path)
        except OSError:
            pass
    roc_split = "test" if "test" in logits else "valid"
    scores = torch.sigmoid(logits[roc_split]).numpy().astype(np.float64)
    roc_labels = encoded[roc_split].labels
    assert roc_labels is not None  # the encoder always fills labels (zeros without a label column)
    with reservation.write() as tmp:  # the whole folder, verified, then swapped in
        (tmp / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
        plot_history(history, tmp / "curves.png")
        plot_roc(roc_labels.numpy(), scores, tmp / "roc.png", f"{roc_split} ROC")
        artifact.save(tmp, model, encoder, cfg_train, {"metrics": results, "samples": samples})
        (tmp / "metrics.json").write_text(json.dumps(results, indent=1))
        artifact.load(tmp)
    return {"curves": str(out_dir / "curves.png"), "roc": str(out_dir / "roc.png"),
            "model": str(out_dir / artifact.WEIGHTS), "manifest": str(out_dir / artifact.MANIFEST),
            "metrics": str(out_dir / "metrics.jsonl")}
