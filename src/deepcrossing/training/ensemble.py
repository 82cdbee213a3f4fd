"""An ensemble of K seeds trained on one fitted encoder and written as ONE model folder (``train --ensemble K``).

Each member is an ordinary early-stopped run (:class:`~deepcrossing.training.trainer.Trainer`, seed
``train.seed + i``, the caller seeding the global RNGs through ``seed_member`` before each, as the CLI owns
seeding); the members are then fused by :func:`deepcrossing.model.ensemble.fuse` into one
:class:`~deepcrossing.model.DeepCrossing` whose logit is their mean, checked on the validation split, scored on
valid (and test), and written as the usual model folder (:func:`training.pipeline.write_model_folder`: atomic,
loaded back, swapped in). The manifest's and ``metrics.json``'s ``ensemble`` record the members' seeds, each
member's valid metrics and the fused valid AUC; ``valid`` / ``test`` are the fused model's. ``metrics.jsonl``
holds every member's epochs, each with its ``member`` and ``seed``.

Example:
    >>> summary = train_ensemble(tables, load_builtin("movielens"), "runs/ens3", 3, seed_everything)  # doctest: +SKIP
    >>> ens = summary["ensemble"]                                                      # doctest: +SKIP
    >>> ens["seeds"], summary["valid"]["auc"] == ens["fused_valid_auc"]                # doctest: +SKIP
    ([0, 1, 2], True)
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
from deepcrossing.errors import DeepCrossingError, InputError
from deepcrossing.model.deep_crossing import DeepCrossing
from deepcrossing.model.ensemble import check_fusable, fuse
from deepcrossing.model.train_module import DeepCrossingTrain
from deepcrossing.outputs import Reservation, reserve
from deepcrossing.training import artifact
from deepcrossing.training.pairwise import train_users
from deepcrossing.training.pipeline import _fit_encoder, _require_finite, _require_two_classes, _Run, \
    build_model, score_splits, split_metrics, write_model_folder
from deepcrossing.training.trainer import StepInfo, Trainer, predict_logits

#: The fused model's valid logits may differ from the members' mean by float rounding only.
MEAN_TOLERANCE = 1e-3


def train_ensemble(tables: Mapping[str, pa.Table | None], config: ExperimentConfig,
                   out_dir: str | Path | Reservation, k: int, seed_member: Callable[[int], None],
                   device: str = "cpu", sources: dict[str, str] | None = None,
                   on_step: Callable[[StepInfo], None] | None = None,
                   on_epoch: Callable[[dict[str, Any]], None] | None = None,
                   *, overwrite: bool = False) -> dict[str, Any]:
    """Train K members (seeds ``config.train.seed + i``), fuse them, write one model folder.

    Args:
        tables: ``train`` and ``valid`` (required) and ``test`` (optional) sample tables.
        config: spec + model + train config, the same for every member but the seed.
        out_dir: the model folder, or a :class:`~deepcrossing.outputs.Reservation` of it the caller holds.
        k: the number of members (1: one model, fused with itself, i.e. the same model).
        seed_member: seeds the global RNGs (initialization, dropout) with a member's seed before it is built.
        device: where the members train.
        sources: split -> file name (errors, the manifest; never an output).
        on_step: progress after every step.
        on_epoch: every epoch's record, with ``member`` (0-based) and ``seed`` added.
        overwrite: write into a folder of other files (kept; a name clash is refused).

    Returns:
        Summary dict: the fused model's ``valid``/``test`` metrics, ``ensemble`` (``k``, ``seeds``,
        ``members``: each one's seed, best epoch, epochs, seconds and valid metrics, ``member_valid_auc``,
        ``fused_valid_auc``, ``max_abs_logit_diff``), ``history``, ``files``, ``seconds``.

    Raises:
        InputError: a model config that cannot be fused (checked before any training), the output may not
            be written, a validation split without both classes, a metric that is not finite.
    """
    if k < 1:
        raise InputError(f"an ensemble needs at least 1 member, not {k}", field="--ensemble")
    check_fusable(config.model, config.spec)
    run = _Run(device, False, sources or {}, on_step, on_epoch, None, None)
    if isinstance(out_dir, Reservation):
        return _train(tables, config, k, seed_member, out_dir, run)
    with reserve(out_dir, artifact.MODEL_OUTPUT, inputs=list((sources or {}).values()),
                 overwrite=overwrite) as reservation:
        return _train(tables, config, k, seed_member, reservation, run)


def _train(tables: Mapping[str, pa.Table | None], config: ExperimentConfig, k: int,
           seed_member: Callable[[int], None], reservation: Reservation, run: _Run) -> dict[str, Any]:
    t0 = time.perf_counter()
    work = reservation.sibling("work")
    shutil.rmtree(work, ignore_errors=True)
    users = train_users(tables, config.train, run.sources.get("train"))   # train.pairwise > 0: the user of each row
    encoder, encoded, train_data = _fit_encoder(tables, config, run)    # fitted once for every member
    valid = encoded["valid"]
    _require_two_classes(valid, run.sources.get("valid"))
    members: list[DeepCrossing] = []
    member_logits: list[torch.Tensor] = []                             # (B,) valid logits of each member
    records: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    n_train = 0
    for i in range(k):
        seed = config.train.seed + i
        seed_member(seed)
        train_config = dataclasses.replace(config.train, seed=seed)
        model = build_model(config, encoder, sparse=train_config.optimizer == "sparse_adam", device=run.device)

        def epoch_done(record: dict[str, Any], i: int = i, seed: int = seed) -> None:
            history.append({**record, "member": i, "seed": seed})
            if run.on_epoch is not None:
                run.on_epoch(history[-1])

        trainer = Trainer(DeepCrossingTrain(model), train_config, run.device)   # no checkpoints: no --resume
        fit = trainer.fit(train_data, valid, on_step=run.on_step, on_epoch=epoch_done, users=users)
        model, n_train = model.cpu().eval(), fit.samples_per_epoch
        members.append(model)
        member_logits.append(predict_logits(model, valid))
        records.append({"seed": seed, "best_epoch": fit.best_epoch, "epochs_run": len(fit.history),
                        "stopped_early": fit.stopped_early,
                        "train_seconds": round(sum(r["train_seconds"] for r in fit.history), 3),
                        "valid": split_metrics({"valid": member_logits[-1]}, encoded)["valid"]})
    fused = fuse(members)
    logits = score_splits(fused, encoded)                            # each split scored once
    diff = _mean_difference(logits["valid"], member_logits)
    results: dict[str, Any] = split_metrics(logits, encoded)
    results["ensemble"] = {"k": k, "seeds": [r["seed"] for r in records], "members": records,
                           "member_valid_auc": [r["valid"]["auc"] for r in records],
                           "fused_valid_auc": results["valid"]["auc"], "max_abs_logit_diff": diff}
    _require_finite(results, run.sources)
    results["train_seconds"] = round(sum(r["train_seconds"] for r in records), 3)
    results["n_train"] = n_train
    results["ranks"] = 1
    files = write_model_folder(reservation, fused, encoder, config.train, results, history, encoded, logits,
                               run.sources)
    shutil.rmtree(work, ignore_errors=True)
    return {**results, "history": history, "files": files, "seconds": round(time.perf_counter() - t0, 3)}


def _mean_difference(fused: torch.Tensor, members: list[torch.Tensor]) -> float:
    """Max |fused logit - mean of the members' logits| over valid ((B,) logits each); refuses a fusion that is
    not their mean."""
    mean = torch.stack(members).mean(dim=0)
    diff = float((fused - mean).abs().max()) if len(mean) else 0.0
    if not diff <= MEAN_TOLERANCE:
        raise DeepCrossingError(f"the fused model's valid logits differ from the members' mean by {diff:.3g} "
                                f"(> {MEAN_TOLERANCE}); the model was not saved")
    return diff


__all__ = ["MEAN_TOLERANCE", "train_ensemble"]
