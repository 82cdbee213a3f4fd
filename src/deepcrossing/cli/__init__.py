"""The ``deepcrossing`` command: the one place that parses arguments, seeds, picks the device and draws
progress bars. Nothing imports this package; every verb calls into the library and prints what it did.

One module per pipeline stage, in the order data flows:
  data (download, synth, info) -> prepare -> train (train, evaluate, export) -> serve (publish, serve,
  recommend); quickstart runs them end to end.
"""

from __future__ import annotations

import sys

from deepcrossing.cli import data, prepare, quickstart, serve, train  # noqa: F401  (registers the verbs)
from deepcrossing.cli.common import app, console
from deepcrossing.errors import DeepCrossingError

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point: people get a one-line error and exit status 2 for bad input."""
    try:
        app()
    except DeepCrossingError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)

