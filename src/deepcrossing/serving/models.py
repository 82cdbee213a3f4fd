"""Model folders as the service loads them: the loader, the NaN/inf check and the fingerprint (model version).

Example:
    >>> model_fingerprint("/nonexistent")      # no files: the hash of nothing
    'e3b0c44298fc'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from deepcrossing.errors import InputError
from deepcrossing.hashing import files_sha256

__all__ = ["check_finite", "load_model_dir", "model_fingerprint"]


def model_fingerprint(model_dir: str | Path) -> str:
    """Short SHA-256 of the model files: the model version shown in /metrics and responses, and the source
    of a store version's ``emb`` vectors."""
    return files_sha256(Path(model_dir) / name for name in ("manifest.json", "model.safetensors"))[:12]


def load_model_dir(model_dir: Path) -> Any:
    """The loaded model folder (:func:`deepcrossing.training.artifact.load`)."""
    from deepcrossing.training.artifact import load

    return load(model_dir)  # checks that it is a model folder (training.artifact.require_model_dir)


def check_finite(loaded: Any, model_dir: Path) -> None:
    """Refuse a model whose weights hold NaN or inf (it would answer NaN scores to every request)."""
    model = getattr(loaded, "model", None)
    if not isinstance(model, torch.nn.Module):
        return
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InputError(f"weight {name} holds NaN or inf; this model is not served", path=model_dir,
                             field=name)
