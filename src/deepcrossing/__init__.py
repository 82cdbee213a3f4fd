"""deepcrossing: the Deep Crossing (Embedding+MLP) ranking model and the pipeline around it.

raw logs -> ``deepcrossing.data`` -> ``deepcrossing.features`` (samples) -> ``deepcrossing.encoding``
-> ``deepcrossing.model`` -> ``deepcrossing.training`` -> ``deepcrossing.serving``.
"""

from __future__ import annotations

from deepcrossing.errors import DeepCrossingError, InputError

__version__ = "0.1.0"

__all__ = ["DeepCrossingError", "InputError", "__version__", "load"]


def load(model_dir):
    """Load a trained model folder (``model.safetensors`` + ``manifest.json``); see ``training.artifact.load``."""
    from deepcrossing.training.artifact import load as _load

    return _load(model_dir)
