"""What every verb shares: the Typer apps, the two consoles, seeding, device and thread choice."""

from __future__ import annotations

import os
import random

import typer
from rich.console import Console

from deepcrossing.errors import DeepCrossingError

app = typer.Typer(
    help="Deep Crossing (Embedding+MLP) recommender: data -> samples -> model -> service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Get rating logs: download MovieLens, or generate synthetic MovieLens-format data.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console(stderr=True)
out = Console()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (the CLI owns seeding; library code never seeds)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass


def pick_device(name: str | None) -> str:
    """Resolve ``--device``: ``cuda`` when asked or available (with ``auto``), else ``cpu``."""
    import torch

    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise DeepCrossingError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise DeepCrossingError(f"--device must be cpu, cuda or auto, not {name!r}")
    return name


def set_threads(threads: int | None) -> None:
    """Use one intra-op thread per core (2 here) unless told otherwise; more only adds contention."""
    import torch

    n = threads or max(1, min(os.cpu_count() or 1, 8))
    torch.set_num_threads(n)


# ---- verbs are registered below, one section per pipeline stage ----
