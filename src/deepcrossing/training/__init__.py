"""Training: the loop (Trainer), model files (artifact.save / load), export (ONNX, TorchScript).

Public API:
    Trainer(DeepCrossingTrain(model), train_config, device, checkpoint_dir, fingerprint).fit(train, valid, ...)
    optim (make_optimizers, RowSparseAdam, lr_at), checkpoint (save / load / fingerprint)
    train_model(tables, experiment_config, out_dir, ...)      encoder + model + trainer + files
    refit.train_refit(tables, experiment_config, out_dir, seed_run, ...)   epochs chosen on valid, refit on both
    save(model_dir, model, encoder, train_config, extra) / load(model_dir) -> LoadedModel
    export_model(model_dir, "onnx" | "torchscript", out)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deepcrossing.training.artifact import LoadedModel, load, save

__all__ = ["LoadedModel", "load", "save"]


def __getattr__(name: str) -> Any:
    """``LoadedModel``, ``load`` and ``save`` on first use: importing a light submodule (``model_dir``) of this
    package must not pull in PyTorch."""
    if name in __all__:
        from deepcrossing.training import artifact

        return getattr(artifact, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
