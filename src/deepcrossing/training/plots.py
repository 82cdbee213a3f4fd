"""PNG plots of a training run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: list[dict[str, Any]], path: str | Path) -> Path:
    """Train loss and validation AUC/logloss per epoch -> one PNG with two panels (records without
    ``valid_auc``, e.g. a refit's, are left out).

    Args:
        history: one dict per epoch with ``epoch``, ``train_loss``, ``valid_logloss`` and ``valid_auc``.
        path: the PNG to write.
    """
    plt = _pyplot()
    history = [r for r in history if "valid_auc" in r]
    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [r["train_loss"] for r in history], "o-", label="train loss")
    ax1.plot(epochs, [r["valid_logloss"] for r in history], "s-", label="valid logloss")
    ax1.set_xlabel("epoch"), ax1.set_title("loss"), ax1.legend()
    ax2.plot(epochs, [r["valid_auc"] for r in history], "o-", color="tab:green")
    ax2.set_xlabel("epoch"), ax2.set_title("validation AUC")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_roc(labels: np.ndarray, scores: np.ndarray, path: str | Path, title: str = "test ROC") -> Path:
    """ROC curve (with its AUC in the legend) -> PNG; only the diagonal when the labels have one class.

    Args:
        labels: (N,) binary labels. scores: (N,) scores. path: the PNG to write. title: the plot title.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if len(np.unique(labels)) == 2:
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"AUC {roc_auc_score(labels, scores):.4f}")
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set_xlabel("false positive rate"), ax.set_ylabel("true positive rate"), ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
