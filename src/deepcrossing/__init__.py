"""deepcrossing: the Deep Crossing (Embedding+MLP) ranking model and the pipeline around it.

raw logs -> ``deepcrossing.data`` -> ``deepcrossing.features`` (samples) -> ``deepcrossing.encoding``
-> ``deepcrossing.model`` -> ``deepcrossing.training`` -> ``deepcrossing.serving``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from deepcrossing._version import __version__
from deepcrossing.errors import DeepCrossingError, InputError

if TYPE_CHECKING:
    from deepcrossing.training.artifact import LoadedModel

__all__ = ["DeepCrossingError", "InputError", "__version__", "load"]


def load(model_dir: str | Path) -> LoadedModel:
    """Load a trained model folder (``model.safetensors`` + ``manifest.json``); see ``training.artifact.load``.

    Example:
        >>> import deepcrossing
        >>> model = deepcrossing.load("models/movielens")   # doctest: +SKIP
    """
    from deepcrossing.training.artifact import load as _load

    return _load(model_dir)
