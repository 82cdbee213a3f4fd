"""Refit on train ∪ valid (``train --refit``): choose the epoch count on valid, then retrain on both splits.

On a time split the valid period lies between train and test, so the early-stopped model never learns from the
last part of the history before test. A refit runs in two parts:

1. **selection**: the ordinary early-stopped run (encoder fitted on train, :class:`Trainer` on valid), which
   picks the best epoch E (and whether the SWA average was kept), scored on valid (held out);
2. **refit**: a fresh model from the same seed, its encoder fitted on train ∪ valid the same way, trained
   :meth:`Trainer.fit` ``fixed_epochs=E`` on train ∪ valid over the same learning-rate schedule
   (``train.epochs``): no early stopping, nothing chosen on valid; EMA as configured; when the selection kept
   its SWA average, the refit trains the selection's epochs and averages the same last epochs.

The refit model is written as the usual model folder (:func:`training.pipeline.write_model_folder`).
Its metrics (manifest and ``metrics.json``) hold ``test`` as usual, ``valid_in_sample`` (the refit model on
rows it was trained on: not a held-out score) and ``refit``: ``rows`` (train, valid, both), ``epochs``,
``best_epoch`` / ``epochs_run`` / ``stopped_early`` of the selection, ``selection_valid`` (the selection
model's held-out valid metrics), ``swa`` and ``history`` (the refit's epochs: train loss only). There is no
``valid`` key: no held-out valid score of this model exists. ``metrics.jsonl`` holds both parts' epochs, each
with its ``run`` (``selection`` / ``refit``); ``curves.png`` shows the selection's (the curves that chose E).

The caller seeds the global RNGs through ``seed_run`` before each part, as the CLI owns seeding.

Measured (``benchmarks/compare_peers.py --grid small``, ``prepare --itemcf`` samples, 8 seeds, 2026-12-07;
test AUC base -> refit, paired mean difference, seeds up): ml-latest-small Deep Crossing 0.8690 -> 0.8689
(-0.0001, 2/8; log loss 0.4531 -> 0.4511), LightGBM without ids 0.8624 -> 0.8656 (+0.0032, 7/8); ml-100k Deep
Crossing 0.7710 -> 0.7720 (+0.0010, 8/8), LightGBM 0.7726 -> 0.7717 (-0.0010, 0/8). Small, and not the same
sign on both datasets: refit is an option, not the default.

Example:
    >>> summary = train_refit(tables, load_builtin("movielens"), "runs/refit", seed_everything)  # doctest: +SKIP
    >>> summary["refit"]["epochs"], summary["refit"]["rows"]["train+valid"]               # doctest: +SKIP
    (6, 90752)
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from deepcrossing.config import ExperimentConfig
from deepcrossing.errors import InputError
from deepcrossing.model.train_module import DeepCrossingTrain
from deepcrossing.outputs import Reservation, reserve
from deepcrossing.training import artifact
from deepcrossing.training.pairwise import train_users
from deepcrossing.training.pipeline import _fit_encoder, _require_finite, _require_two_classes, _Run, \
    build_model, score_splits, split_metrics, write_model_folder
from deepcrossing.training.trainer import StepInfo, Trainer, predict_logits


def train_refit(tables: Mapping[str, pa.Table | None], config: ExperimentConfig,
                out_dir: str | Path | Reservation, seed_run: Callable[[int], None], device: str = "cpu",
                sources: dict[str, str] | None = None, on_step: Callable[[StepInfo], None] | None = None,
                on_epoch: Callable[[dict[str, Any]], None] | None = None,
                *, overwrite: bool = False) -> dict[str, Any]:
    """Choose the epoch count E on valid (an early-stopped run), refit on train ∪ valid for E epochs, write
    the refit model.

    Args:
        tables: ``train`` and ``valid`` (required, same columns) and ``test`` (optional) sample tables.
        config: spec + model + train config (the same for both parts).
        out_dir: the model folder, or a :class:`~deepcrossing.outputs.Reservation` of it the caller holds.
        seed_run: seeds the global RNGs (initialization, dropout) with ``config.train.seed``; called before
            each part, so the refit starts from the selection's initial draw.
        device: where both parts train.
        sources: split -> file name (errors, the manifest; never an output).
        on_step: progress after every step.
        on_epoch: every epoch's record, with ``run`` added (``selection`` or ``refit``; refit records have no
            ``valid_*``).
        overwrite: write into a folder of other files (kept; a name clash is refused).

    Returns:
        Summary dict: ``refit`` (see the module docstring), ``test``, ``valid_in_sample``, ``history`` (the
        refit's epochs), ``files``, ``seconds``.

    Raises:
        InputError: train and valid with other columns, the output may not be written, a validation split
            without both classes, a metric that is not finite.
    """
    run = _Run(device, False, sources or {}, on_step, on_epoch, None, None)
    if isinstance(out_dir, Reservation):
        return _train(tables, config, seed_run, out_dir, run)
    with reserve(out_dir, artifact.MODEL_OUTPUT, inputs=list((sources or {}).values()),
                 overwrite=overwrite) as reservation:
        return _train(tables, config, seed_run, reservation, run)


def union_of(train: pa.Table | None, valid: pa.Table | None, sources: Mapping[str, str]) -> pa.Table:
    """Train rows then valid rows as one table (the refit's train set).

    Raises:
        InputError: a split missing, or the two with other columns or types.
    """
    if train is None or valid is None:
        raise InputError("--refit trains on train ∪ valid: both must be read into memory (not --stream)")
    try:   # "default" promotion: a column that is all null in one split takes the other's type
        return pa.concat_tables([train, valid], promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(f"--refit trains on train ∪ valid, but their columns do not match: {exc}",
                         path=sources.get("valid")) from None


def _train(tables: Mapping[str, pa.Table | None], config: ExperimentConfig, seed_run: Callable[[int], None],
           reservation: Reservation, run: _Run) -> dict[str, Any]:
    t0 = time.perf_counter()
    shutil.rmtree(reservation.sibling("work"), ignore_errors=True)
    union = union_of(tables.get("train"), tables.get("valid"), run.sources)
    history: list[dict[str, Any]] = []

    def tagged(part: str) -> Callable[[dict[str, Any]], None]:
        def epoch_done(record: dict[str, Any]) -> None:
            history.append({**record, "run": part})
            if run.on_epoch is not None:
                run.on_epoch(history[-1])
        return epoch_done

    sparse = config.train.optimizer == "sparse_adam"
    # 1. selection: the ordinary early-stopped run, scored on valid (held out)
    encoder, held_out, train_data = _fit_encoder(tables, config, run)
    _require_two_classes(held_out["valid"], run.sources.get("valid"))
    seed_run(config.train.seed)
    model = build_model(config, encoder, sparse=sparse, device=run.device)
    trainer = Trainer(DeepCrossingTrain(model), config.train, run.device)    # no checkpoints: no --resume
    fit = trainer.fit(train_data, held_out["valid"], on_step=run.on_step, on_epoch=tagged("selection"),
                      users=train_users(tables, config.train, run.sources.get("train")))
    selection_valid = split_metrics({"valid": predict_logits(model.cpu().eval(), held_out["valid"])}, held_out)
    swa = {**trainer.swa_record, "epochs_run": len(fit.history)}
    swa_kept = bool(swa.get("kept"))
    epochs = len(fit.history) if swa_kept else fit.best_epoch   # SWA averaged the run's last epochs

    # 2. refit: encoder and a fresh model (same seed) on train ∪ valid, E epochs, the last weights kept
    union_tables = {**tables, "train": union}
    union_run = dataclasses.replace(run, sources={**run.sources, "train": _union_source(run.sources)})
    encoder, encoded, union_data = _fit_encoder(union_tables, config, union_run)
    seed_run(config.train.seed)
    model = build_model(config, encoder, sparse=sparse, device=run.device)
    refit_config = dataclasses.replace(config.train, swa=0)     # the selection decided on SWA; applied below
    trainer = Trainer(DeepCrossingTrain(model), refit_config, run.device)
    recent: list[dict[str, torch.Tensor]] = []                  # the last epochs' weights, when SWA was kept
    refit_epoch = tagged("refit")

    def epoch_done(record: dict[str, Any]) -> None:
        if swa_kept and record["epoch"] > epochs - config.train.swa:
            live = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
            recent.append({k: v.detach().clone() for k, v in (trainer.ema_state or live).items()})
        refit_epoch(record)

    refit = trainer.fit(union_data, None, on_step=run.on_step, on_epoch=epoch_done, fixed_epochs=epochs,
                        users=train_users(union_tables, config.train, union_run.sources["train"]))
    if recent:
        model.load_state_dict({k: torch.stack([r[k] for r in recent]).mean(dim=0) for k in recent[0]},
                              strict=False)
    model = model.cpu().eval()
    logits = score_splits(model, encoded)                        # valid: in-sample; test: held out
    scores = split_metrics(logits, encoded)
    n_valid = len(held_out["valid"])
    results: dict[str, Any] = {
        "refit": {"rows": {"train": union.num_rows - n_valid, "valid": n_valid, "train+valid": union.num_rows},
                  "epochs": epochs, "best_epoch": fit.best_epoch, "epochs_run": len(fit.history),
                  "stopped_early": fit.stopped_early, "selection_valid": selection_valid["valid"],
                  "swa": {"selection": swa, "averaged_epochs": len(recent)},
                  "history": refit.history},
        "valid_in_sample": scores["valid"],
        **({"test": scores["test"]} if "test" in scores else {}),
        "train_seconds": round(sum(r["train_seconds"] for r in refit.history), 3),
        "selection_train_seconds": round(sum(r["train_seconds"] for r in fit.history), 3),
        "n_train": refit.samples_per_epoch, "ranks": 1}
    _require_finite(results, run.sources)
    files = write_model_folder(reservation, model, encoder, config.train, results, history, encoded,
                               {k: v for k, v in logits.items() if k == "test"} or logits, run.sources)
    shutil.rmtree(reservation.sibling("work"), ignore_errors=True)
    return {**results, "history": refit.history, "files": files, "seconds": round(time.perf_counter() - t0, 3)}


def _union_source(sources: Mapping[str, str]) -> str:
    """How errors name the refit's train set."""
    return f"{sources.get('train', 'train')} + {sources.get('valid', 'valid')}"


__all__ = ["train_refit", "union_of"]
