"""Model files: ``model.safetensors`` (state dict) + ``manifest.json``; strict, pickle-free load.

``manifest.json`` keys (all required, no others): ``format`` ("deepcrossing-model"), ``format_version``,
``package_version``, ``spec``, ``model_config``, ``train_config``, ``encoder`` (fitted vocabularies,
statistics, bag widths), ``metrics``, ``samples`` (what it was trained on: paths and the samples
manifest's checksums when known), ``weights_sha256`` (of ``model.safetensors``).

Example:
    >>> m = load("runs/ml-small")                       # doctest: +SKIP
    >>> m.predict(pyarrow.parquet.read_table("samples/test.parquet"))[:3]   # doctest: +SKIP
    array([0.81, 0.42, 0.66], dtype=float32)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from deepcrossing.atomic import share_like_new_file
from deepcrossing.config import FeatureSpec, ModelConfig, TrainConfig
from deepcrossing.encoding.batch import Batch
from deepcrossing.encoding.encoder import Encoder
from deepcrossing.errors import InputError
from deepcrossing.jsonfile import read_json_object
from deepcrossing.hashing import file_sha256
from deepcrossing.model.deep_crossing import DeepCrossing
from deepcrossing.outputs import OutputKind

from deepcrossing.training.model_dir import FORMAT as FORMAT
from deepcrossing.training.model_dir import MANIFEST as MANIFEST
from deepcrossing.training.model_dir import WEIGHTS as WEIGHTS
from deepcrossing.training.model_dir import require_model_dir as require_model_dir

FORMAT_VERSION = 1
#: A model with ``model_config.groups`` (blocks stored as ``(K, out/K, in/K)`` tensors) is written as version 2,
#: which older readers refuse by its number; any other model stays version 1, byte for byte.
GROUPED_FORMAT_VERSION = 2
MANIFEST_KEYS = {"format", "format_version", "package_version", "spec", "model_config", "train_config",
                 "encoder", "metrics", "samples", "weights_sha256"}
#: Files of a model folder that deepcrossing writes: ``train`` (weights, manifest, metrics, plots, and the
#: ``checkpoints/`` folder of earlier versions), ``evaluate`` (``metrics-*.json``) and ``export`` (ONNX /
#: TorchScript files and their ``.json``). A new model replaces exactly these; any other file stays.
MODEL_FILES = (WEIGHTS, MANIFEST, "metrics.jsonl", "metrics.json", "metrics-*.json", "curves.png", "roc.png",
               "model.onnx", "model.onnx.json", "model.torchscript.pt", "model.torchscript.pt.json",
               "checkpoints", ".*.tmp-*")


def _ours_in_model_folder(path: Path) -> bool:
    """Whether an entry of a model folder that matches :data:`MODEL_FILES` is deepcrossing's: the names a person's
    file can have too are checked by content (an evaluate report or export sidecar names its kind or weights,
    the legacy ``checkpoints`` folder holds only ``last``), so that a file kept by ``--overwrite`` is never
    deleted by the next ``train``."""
    name = path.name
    if name == "checkpoints":
        return path.is_dir() and all(p.name == "last" or p.name.startswith(".") for p in path.iterdir())
    if name in ("model.onnx", "model.torchscript.pt"):
        path = path.with_name(name + ".json")
    elif not (name.startswith("metrics-") or name.endswith((".onnx.json", ".pt.json"))):
        return True                                  # names train writes itself (a clash is refused before)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and (str(data.get("kind", "")).startswith("deepcrossing.")
                                       or "weights_sha256" in data or {"model_dir", "n_samples", "split"} <= set(data))


#: A model folder, recognised by its manifest's ``format``.
MODEL_OUTPUT = OutputKind("model folder", MANIFEST, lambda m: m.get("format") == FORMAT, lambda m: MODEL_FILES,
                          _ours_in_model_folder)



def save(model_dir: str | Path, model: DeepCrossing, encoder: Encoder, train_config: TrainConfig,
         extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and ``manifest.json`` into ``model_dir`` (other files there are kept).

    Each file is written under a temporary name and renamed; the manifest goes last and records the
    weights' SHA-256, so a folder caught between the two renames fails to load instead of mixing versions.

    Args:
        model_dir: the model folder (created if needed).
        model: the trained model (its spec and config go into the manifest).
        encoder: the fitted encoder.
        train_config: how it was trained.
        extra: ``{"metrics": {...}, "samples": {...}}`` (both optional).

    Returns:
        ``model_dir`` as a Path.
    """
    from deepcrossing._version import __version__

    extra = extra or {}
    unknown = set(extra) - {"metrics", "samples"}
    if unknown:
        raise ValueError(f"unknown extra keys {sorted(unknown)}")
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".{WEIGHTS}.tmp-{os.getpid()}"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={"format": FORMAT})
    share_like_new_file(tmp)
    digest = file_sha256(tmp)
    os.replace(tmp, model_dir / WEIGHTS)
    manifest = {
        "format": FORMAT,
        "format_version": GROUPED_FORMAT_VERSION if model.config.groups else FORMAT_VERSION,
        "package_version": __version__,
        "spec": model.spec.to_dict(),
        "model_config": model.config.to_dict(),
        "train_config": train_config.to_dict(),
        "encoder": encoder.state(),
        "metrics": extra.get("metrics", {}),
        "samples": extra.get("samples", {}),
        "weights_sha256": digest,
    }
    from deepcrossing.atomic import write_text_atomic

    write_text_atomic(model_dir / MANIFEST, json.dumps(manifest, indent=1, allow_nan=False))
    return model_dir


@dataclass
class LoadedModel:
    """A model folder, rebuilt.

    Attributes:
        model: the :class:`DeepCrossing` module (eval mode, CPU).
        encoder: the fitted :class:`Encoder`.
        spec: the feature spec.
        manifest: the parsed ``manifest.json``.
        path: the folder.
    """

    model: DeepCrossing
    encoder: Encoder
    spec: FeatureSpec
    manifest: dict[str, Any]
    path: Path

    @torch.no_grad()
    def logits(self, batch: Batch) -> Tensor:
        """(B,) logits of an encoded batch."""
        self.model.eval()
        logits: Tensor = self.model(batch)
        return logits

    def predict(self, table: pa.Table, batch_size: int = 65536, source: str | Path | None = None) -> np.ndarray:
        """Probabilities (B,) float32 for a sample table (unseen ids use the OOV rows).

        Args:
            table: rows with the spec's columns.
            batch_size: rows scored per forward pass.
            source: the file the table came from (for error messages).
        """
        batch = self.encoder.transform(table, source=source)
        out = [torch.sigmoid(self.logits(batch.slice(i, min(i + batch_size, len(batch)))))
               for i in range(0, len(batch), batch_size)]
        return (torch.cat(out) if out else torch.zeros(0)).numpy().astype(np.float32)


def load(model_dir: str | Path) -> LoadedModel:
    """Rebuild a model folder written by :func:`save`, strictly.

    Raises:
        InputError: a missing file, a manifest with missing or extra keys, another format version, weights
            whose checksum, tensor names or shapes do not match (naming the file and the key).
    """
    model_dir = require_model_dir(model_dir)
    manifest_path, weights_path = model_dir / MANIFEST, model_dir / WEIGHTS
    for path in (manifest_path, weights_path):
        if not path.is_file():
            raise InputError(f"the model folder has no {path.name}; is it a folder written by "
                             "`deepcrossing train`?", path=path)
    manifest = read_json_object(manifest_path)
    missing, extra = MANIFEST_KEYS - set(manifest), set(manifest) - MANIFEST_KEYS
    if missing:
        raise InputError(f"the manifest lacks key(s) {sorted(missing)}", path=manifest_path,
                         field=sorted(missing)[0])
    if extra:
        raise InputError(f"the manifest has unknown key(s) {sorted(extra)}", path=manifest_path,
                         field=sorted(extra)[0])
    if manifest["format"] != FORMAT:
        raise InputError(f"format is {manifest['format']!r}, not {FORMAT!r}", path=manifest_path,
                         field="format")
    if manifest["format_version"] not in (FORMAT_VERSION, GROUPED_FORMAT_VERSION):
        raise InputError(f"format_version {manifest['format_version']!r} is not supported (this is "
                         f"deepcrossing's model format {GROUPED_FORMAT_VERSION}); retrain or use the matching "
                         "deepcrossing version", path=manifest_path, field="format_version")
    try:
        spec = FeatureSpec.from_dict(manifest["spec"])
        model_config = ModelConfig.from_dict(manifest["model_config"], "model_config.")
        TrainConfig.from_dict(manifest["train_config"], "train_config.")
        encoder = Encoder.from_state(spec, manifest["encoder"])
    except InputError as exc:
        raise InputError(exc.message, path=manifest_path, field=exc.field) from None
    except (TypeError, KeyError, ValueError) as exc:
        raise InputError(f"the manifest's encoder state is malformed: {exc!r}", path=manifest_path,
                         field="encoder") from None
    if file_sha256(weights_path) != manifest["weights_sha256"]:
        raise InputError("the weights do not match the manifest's weights_sha256 (a half-written or "
                         "tampered folder); retrain or restore both files", path=weights_path)
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"cannot read the weights: {exc}", path=weights_path) from None
    with torch.device("meta"):  # shapes first, allocating nothing: a manifest edited to a huge table is refused
        expected = DeepCrossing(spec, model_config, encoder.cardinalities).state_dict()
    missing_t, extra_t = set(expected) - set(state), set(state) - set(expected)
    if missing_t or extra_t:
        raise InputError(f"tensor names do not match the model: missing {sorted(missing_t)}, "
                         f"unexpected {sorted(extra_t)}", path=weights_path,
                         field=sorted(missing_t | extra_t)[0])
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape or state[name].dtype != tensor.dtype:
            raise InputError(f"tensor {name} has shape {tuple(state[name].shape)} {state[name].dtype}, the "
                             f"manifest's model needs {tuple(tensor.shape)} {tensor.dtype}",
                             path=weights_path, field=name)
    model = DeepCrossing(spec, model_config, encoder.cardinalities)
    model.load_state_dict(state, strict=True)
    model.eval()
    return LoadedModel(model, encoder, spec, manifest, model_dir)
