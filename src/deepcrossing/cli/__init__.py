"""The ``deepcrossing`` command: the one place that parses arguments, seeds, picks the device and draws
progress bars. Nothing imports this package; every verb calls into the library and prints what it did.

One module per pipeline stage, in the order data flows:
  data (download, synth, info) -> prepare -> train (train, evaluate, export), recall (train-recall) -> serve
  (publish, serve, recommend); quickstart runs them end to end.
"""

from __future__ import annotations

import importlib
import sys

import typer
from rich.markup import escape

from deepcrossing.cli import data, prepare, quickstart, recall, serve, train  # noqa: F401  (registers the verbs)
from deepcrossing.cli.common import app, console
from deepcrossing.errors import DeepCrossingError

__all__ = ["app", "main"]

# the click that typer raises from (recent typers vendor their own copy; older ones use click itself)
_click_errors = importlib.import_module(typer.BadParameter.__module__)
_ABORTS = (typer.Abort, getattr(_click_errors, "Abort", typer.Abort))


def _one_line(text: str, limit: int = 600) -> str:
    """``text`` on one line, at most ``limit`` characters, with rich markup escaped."""
    text = " ".join(text.split("\n"))
    return escape(text if len(text) <= limit else text[:limit - 3] + "...")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: people get a one-line ``error: ...`` and exit status 2 for bad input.

    Bad flag values (click's usage errors: a value out of range, not a choice, a missing option) and every
    :class:`DeepCrossingError` print one line on stderr; anything else is a bug and keeps its traceback.

    Args:
        argv: the arguments after the program name (default ``sys.argv[1:]``).
    """
    try:
        code = app(args=argv, standalone_mode=False)
    except _click_errors.UsageError as exc:
        if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help already
            where = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            console.print(f"[bold red]error:[/] {_one_line(exc.format_message() + where)}", highlight=False,
                          soft_wrap=True)
        sys.exit(exc.exit_code)
    except _click_errors.ClickException as exc:
        console.print(f"[bold red]error:[/] {_one_line(exc.format_message())}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except _ABORTS:
        console.print("aborted", highlight=False)
        sys.exit(1)
    except DeepCrossingError as exc:
        console.print(f"[bold red]error:[/] {_one_line(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    if isinstance(code, int) and code:
        sys.exit(code)
