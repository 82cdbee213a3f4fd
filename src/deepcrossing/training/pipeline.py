"""From sample tables to a model folder: fit the encoder, encode once, train, test, plot, save.

The model folder gets ``model.safetensors`` + ``manifest.json`` (see :mod:`training.artifact`),
``metrics.jsonl`` (one JSON line per epoch, rewritten atomically after each epoch), ``metrics.json`` (final
valid/test metrics), ``curves.png`` (loss and AUC per epoch), ``roc.png`` (test ROC, else valid) and
``checkpoints/last/`` (for ``resume``).

The caller (the CLI) seeds the global RNGs before calling; initialization and dropout then follow that seed
and the shuffling follows ``TrainConfig.seed``.

Example:
    >>> cli.seed_everything(0)                                                          # doctest: +SKIP
    >>> summary = train_model(tables, load_builtin("movielens"), "runs/ml-small")     # doctest: +SKIP
    >>> summary["test"]["auc"]                                                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from deepcrossing.atomic import write_text_atomic
from deepcrossing.config import ExperimentConfig
from deepcrossing.encoding.encoder import Encoder
from deepcrossing.model.deep_crossing import DeepCrossing
from deepcrossing.model.train_module import DeepCrossingTrain
from deepcrossing.hashing import file_sha256
from deepcrossing.training import artifact
from deepcrossing.training.checkpoint import fingerprint
from deepcrossing.training.plots import plot_history, plot_roc
from deepcrossing.training.trainer import StepInfo, Trainer, evaluate_batch, predict_logits


def train_model(tables: dict[str, pa.Table], config: ExperimentConfig, out_dir: str | Path,
                device: str = "cpu", resume: bool = False,
                sources: dict[str, str] | None = None,
                on_step: Callable[[StepInfo], None] | None = None,
                on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train a DeepCrossing model on ``tables["train"]``, early-stopped on ``tables["valid"]``.

    Args:
        tables: ``train`` and ``valid`` (required) and ``test`` (optional) sample tables.
        config: spec + model + train config.
        out_dir: the model folder.
        device: ``cpu`` or ``cuda``.
        resume: continue from ``out_dir/checkpoints/last`` (same config and samples) instead of starting over.
        sources: split -> file name, for error messages and the manifest.
        on_step, on_epoch: progress callbacks (see :class:`Trainer`).

    Returns:
        Summary dict: ``history``, ``best_epoch``, ``valid``/``test`` metrics, ``files``, ``seconds``.
    """
    t0 = time.perf_counter()
    sources = sources or {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = out_dir / "checkpoints"
    if not resume and checkpoints.exists():
        shutil.rmtree(checkpoints)
    encoder = Encoder(config.spec).fit(tables["train"], source=sources.get("train"))
    encoded = {name: encoder.transform(t, source=sources.get(name)) for name, t in tables.items()
               if t is not None}
    cfg_train = config.train
    model = DeepCrossing(config.spec, config.model, encoder.cardinalities,
                         sparse=cfg_train.optimizer == "sparse_adam").to(device)
    history_lines: list[dict[str, Any]] = []

    def epoch_done(record: dict[str, Any]) -> None:
        history_lines.append(record)
        write_text_atomic(out_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history_lines))
        if on_epoch is not None:
            on_epoch(record)

    provenance = fingerprint([sources[k] for k in ("train", "valid") if k in sources], config.to_dict())
    trainer = Trainer(DeepCrossingTrain(model), cfg_train, device, checkpoints, fingerprint=provenance)
    if resume and (checkpoints / "last" / "state.json").exists():
        history_lines.extend(json.loads((checkpoints / "last" / "state.json").read_text())["history"])
    fit = trainer.fit(encoded["train"], encoded["valid"], resume=resume, on_step=on_step, on_epoch=epoch_done)
    write_text_atomic(out_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in fit.history))
    model = model.cpu().eval()
    results: dict[str, Any] = {"best_epoch": fit.best_epoch, "epochs_run": len(fit.history),
                               "stopped_early": fit.stopped_early,
                               "valid": evaluate_batch(model, encoded["valid"])}
    roc_split = "valid"
    if "test" in encoded:
        results["test"] = evaluate_batch(model, encoded["test"])
        roc_split = "test"
    files = {"curves": str(plot_history(fit.history, out_dir / "curves.png"))}
    scores = torch.sigmoid(predict_logits(model, encoded[roc_split])).numpy().astype(np.float64)
    files["roc"] = str(plot_roc(encoded[roc_split].labels.numpy(), scores, out_dir / "roc.png",
                                f"{roc_split} ROC"))
    results["train_seconds"] = round(sum(r["train_seconds"] for r in fit.history), 3)
    results["n_train"] = len(encoded["train"])
    samples = {"files": dict(sources)}
    manifest_path = Path(sources["train"]).parent / "manifest.json" if "train" in sources else None
    if manifest_path is not None and manifest_path.exists():
        try:
            samples["manifest"] = str(manifest_path)
            samples["sha256"] = file_sha256(manifest_path)
        except OSError:
            pass
    artifact.save(out_dir, model, encoder, cfg_train, {"metrics": results, "samples": samples})
    write_text_atomic(out_dir / "metrics.json", json.dumps(results, indent=1))
    files.update(model=str(out_dir / artifact.WEIGHTS), manifest=str(out_dir / artifact.MANIFEST),
                 metrics=str(out_dir / "metrics.jsonl"), checkpoint=str(checkpoints / "last"))
    return {**results, "history": fit.history, "files": files,
            "seconds": round(time.perf_counter() - t0, 3)}
