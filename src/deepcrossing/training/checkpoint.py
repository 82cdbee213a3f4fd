"""Training checkpoints: everything a killed run needs to continue exactly, and where its inputs came from.

One checkpoint folder (``checkpoint_dir/last/``, replaced atomically after every epoch) holds the weights,
the best weights so far, the optimizer state, the weight average and the RNG states as safetensors, and the
rest (epoch, history, early-stopping counters, training config, provenance fingerprint) as ``state.json``.

The fingerprint (:func:`fingerprint`) is the SHA-256 of the train and valid sample files and of the
experiment config (spec + model + train); :func:`load` refuses a checkpoint whose fingerprint differs, so a
resumed run never mixes two datasets' histories or records the wrong provenance.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "train.csv"; _ = p.write_text("label\\n1\\n")
    >>> sorted(fingerprint([p], {"features": []}))
    ['config', 'samples']
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from deepcrossing.atomic import atomic_dir
from deepcrossing.config import TrainConfig
from deepcrossing.errors import InputError
from deepcrossing.hashing import files_sha256
from deepcrossing.jsonfile import read_json_object

CHECKPOINT_VERSION = 2  # 2: state.json records the samples/config fingerprint
LAST = "last"
#: state.json's keys and their JSON types (``best_auc`` is null before the first epoch, ``fingerprint`` without
#: provenance)
_STATE_TYPES: dict[str, tuple[type, ...]] = {
    "checkpoint_version": (int,), "epochs_done": (int,), "train_config": (dict,), "fingerprint": (dict, type(None)),
    "history": (list,), "best_epoch": (int,), "best_auc": (int, float, type(None)), "stopped_early": (bool,),
    "bad_epochs": (int,), "optimizers": (list,)}
_DELETE = "; train without --resume to start over (that discards it)"


def fingerprint(samples: Iterable[str | Path], config: Mapping[str, Any]) -> dict[str, str]:
    """Provenance of a training run: ``samples`` SHA-256 of the given sample files' bytes (in order; train
    and valid) and ``config`` SHA-256 of the experiment config (``ExperimentConfig.to_dict()``), canonical
    JSON."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return {"samples": files_sha256(samples), "config": hashlib.sha256(text.encode()).hexdigest()}


@dataclass
class Progress:
    """Where a run stands after an epoch (what :func:`save` writes besides tensors and :func:`load` returns).

    Attributes:
        epochs_done: epochs completed.
        history: one record per epoch.
        best_epoch, best_auc: the best epoch so far (1-based) and its valid AUC (NaN: none yet).
        stopped_early: early stopping fired.
        bad_epochs: epochs since the last improvement.
        best_state: the best weights so far (None before the first epoch).
    """

    epochs_done: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_auc: float = float("nan")
    stopped_early: bool = False
    bad_epochs: int = 0
    best_state: dict[str, Tensor] | None = None


@dataclass
class TrainingState:
    """The live objects a checkpoint saves and restores in place.

    Attributes:
        model: the trained model (its ``state_dict`` is checkpointed, not the training wrapper's).
        optimizers: in :func:`~deepcrossing.training.optim.make_optimizers` order.
        ema_state: the weight average (empty without EMA).
        generator: the shuffling generator.
        device: where the run's tensors live.
    """

    model: nn.Module
    optimizers: list[torch.optim.Optimizer]
    ema_state: dict[str, Tensor]
    generator: torch.Generator
    device: torch.device


def _cpu(d: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in d.items()}


def save(checkpoint_dir: Path, live: TrainingState, progress: Progress, config: TrainConfig,
         provenance: Mapping[str, str] | None) -> None:
    """Write ``checkpoint_dir/last`` atomically (the previous one stays intact until the new one is whole)."""
    opt_tensors: dict[str, Tensor] = {}
    opt_meta = []
    for i, opt in enumerate(live.optimizers):
        sd = opt.state_dict()
        meta_state: dict[str, dict[str, Any]] = {}
        for pid, st in sd["state"].items():
            for key, value in st.items():
                if torch.is_tensor(value):
                    opt_tensors[f"{i}.{pid}.{key}"] = value.detach().cpu().contiguous()
                else:
                    meta_state.setdefault(str(pid), {})[key] = value
        groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
                  for g in sd["param_groups"]]
        opt_meta.append({"state": meta_state, "param_groups": groups})
    rng = {"torch": torch.get_rng_state(), "generator": live.generator.get_state()}
    if torch.cuda.is_available() and live.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(live.device)
    state = {
        "checkpoint_version": CHECKPOINT_VERSION,
        "epochs_done": progress.epochs_done,
        "train_config": config.to_dict(),
        "fingerprint": None if provenance is None else dict(provenance),
        "history": progress.history,
        "best_epoch": progress.best_epoch,
        "best_auc": None if math.isnan(progress.best_auc) else progress.best_auc,
        "stopped_early": progress.stopped_early,
        "bad_epochs": progress.bad_epochs,
        "optimizers": opt_meta,
    }
    weights = live.model.state_dict()
    with atomic_dir(checkpoint_dir / LAST) as tmp:
        save_file(_cpu(weights), str(tmp / "model.safetensors"))
        save_file(_cpu(progress.best_state or weights), str(tmp / "best.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng, str(tmp / "rng.safetensors"))
        save_file(_cpu(live.ema_state), str(tmp / "ema.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state, indent=1))


def _check_provenance(state: dict[str, Any], provenance: Mapping[str, str] | None, folder: Path) -> None:
    if provenance is None:
        return
    recorded = state.get("fingerprint") or {}
    if recorded.get("samples") != provenance.get("samples"):
        raise InputError("the checkpoint was trained on other samples (the train/valid files differ); resume "
                         "with the same samples folder, or train without --resume to start over",
                         path=folder, field="samples")
    if recorded.get("config") != provenance.get("config"):
        raise InputError("the checkpoint was made with another spec (features or model config); resume with "
                         "the same spec, or train without --resume to start over", path=folder, field="spec")


def _load_optimizers(live: TrainingState, metas: list[Any], opt_tensors: Mapping[str, Tensor]) -> None:
    for i, (opt, meta) in enumerate(zip(live.optimizers, metas, strict=True)):
        opt_state: dict[int, dict[str, Any]] = {}
        for key, value in opt_tensors.items():
            oi, pid, name = key.split(".", 2)
            if int(oi) == i:
                opt_state.setdefault(int(pid), {})[name] = value.to(live.device)
        for pid, extra in meta["state"].items():
            opt_state.setdefault(int(pid), {}).update(extra)
        opt.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})


def load(checkpoint_dir: Path, live: TrainingState, config: TrainConfig,
         provenance: Mapping[str, str] | None) -> Progress:
    """Restore ``checkpoint_dir/last`` into ``live`` (weights, optimizers, EMA, RNGs) and return the progress.

    Raises:
        InputError: unreadable, another version, another training config, other samples or spec
            (``provenance`` given and different), or weights that do not fit the model.
    """
    folder = checkpoint_dir / LAST
    state = read_state(checkpoint_dir)
    tensors = {}
    for name in ("model", "best", "optimizer", "rng", "ema"):
        path = folder / f"{name}.safetensors"
        try:
            tensors[name] = load_file(str(path))
        except (OSError, ValueError, SafetensorError) as exc:
            raise InputError(f"the checkpoint cannot be read ({str(exc)[:200]}){_DELETE}", path=path) from None
    weights, best, opt_tensors, rng, ema = (tensors[k] for k in ("model", "best", "optimizer", "rng", "ema"))
    if state.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise InputError(f"checkpoint version {state.get('checkpoint_version')} is not "
                         f"{CHECKPOINT_VERSION}", path=folder)
    if state["train_config"] != config.to_dict():
        raise InputError("the checkpoint was made with another training config; resume with the same "
                         "settings or delete the checkpoint", path=folder, field="train_config")
    _check_provenance(state, provenance, folder)
    try:
        live.model.load_state_dict(weights)
    except RuntimeError as exc:
        raise InputError(f"the checkpoint does not fit this model: {exc}", path=folder) from None
    try:
        _load_optimizers(live, state["optimizers"], opt_tensors)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise InputError(f"the checkpoint's optimizer state does not fit this run ({str(exc)[:200]}){_DELETE}",
                         path=folder, field="optimizers") from None
    if set(ema) != set(live.ema_state) or not {"torch", "generator"} <= set(rng):
        raise InputError(f"the checkpoint's weight average or RNG state does not fit this model{_DELETE}",
                         path=folder)
    for k, v in ema.items():
        live.ema_state[k].copy_(v)
    torch.set_rng_state(rng["torch"])
    live.generator.set_state(rng["generator"])
    if "cuda" in rng and live.device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], live.device)
    return Progress(
        epochs_done=int(state["epochs_done"]),
        history=list(state["history"]),
        best_epoch=int(state["best_epoch"]),
        best_auc=float("nan") if state["best_auc"] is None else float(state["best_auc"]),
        stopped_early=bool(state["stopped_early"]),
        bad_epochs=int(state["bad_epochs"]),
        best_state={k: v.to(live.device) for k, v in best.items()},
    )


def read_state(checkpoint_dir: Path) -> dict[str, Any]:
    """``checkpoint_dir/last/state.json``, checked: a JSON object with every key of the right JSON type.

    Raises:
        InputError: naming the file (and the key), when it is unreadable, truncated or not a checkpoint's.
    """
    path = checkpoint_dir / LAST / "state.json"
    try:
        state = read_json_object(path)
    except InputError as exc:
        raise InputError(f"the checkpoint cannot be read ({exc.message}){_DELETE}", path=path) from None
    for key, types in _STATE_TYPES.items():
        value = state.get(key)
        if key not in state or not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise InputError(f"the checkpoint's state is malformed (no {key} of type "
                             f"{' or '.join(t.__name__ for t in types)}){_DELETE}", path=path, field=key)
    return state


def exists(checkpoint_dir: Path | None) -> bool:
    """True if ``checkpoint_dir`` holds a checkpoint to resume from."""
    return checkpoint_dir is not None and (checkpoint_dir / LAST).exists()


__all__ = ["CHECKPOINT_VERSION", "Progress", "TrainingState", "exists", "fingerprint", "load", "read_state",
           "save"]
