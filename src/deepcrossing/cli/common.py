"""What every verb shares: the Typer apps, the two consoles, seeding, device and thread choice."""

from __future__ import annotations

import math
import os
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from deepcrossing.errors import DeepCrossingError, InputError

T = TypeVar("T")
INT64 = {"min": -(2**63), "max": 2**63 - 1}   # typer.Option(**INT64): ids that fit the stores' BIGINT
PORT = {"min": 1, "max": 65535}
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
DEVICES = ("cpu", "cuda", "auto")
FEATURE_CONFIG = "deepcrossing.features.config:FeatureConfig"   # for checked_by (imported when used)
TRAIN_CONFIG = "deepcrossing.config:TrainConfig"

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


def set_threads(threads: int | None, world_size: int = 1) -> None:
    """Use one intra-op thread per core (2 here) unless told otherwise; more only adds contention. Under
    data-parallel training the cores are shared: ``cores // world_size`` per rank."""
    import torch

    n = threads or max(1, min(os.cpu_count() or 1, 8) // world_size)
    torch.set_num_threads(n)


# ---- flag validation: typer callbacks, so a bad value is a one-line usage error before any work starts


def _resolve(ref: Any) -> Any:
    """``"package.module:NAME"`` -> that object, imported only when a command runs (keeps ``--help`` fast)."""
    if not isinstance(ref, str):
        return ref
    import importlib

    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def one_of(*allowed: str, source: str | None = None) -> Callable[[str | None], str | None]:
    """A typer callback accepting only ``allowed`` values, or those of the tuple ``source`` names
    (``"package.module:NAME"``, the library's own list); ``None`` (an unset option) passes.

    Example:
        >>> try:
        ...     one_of("cpu", "cuda")("gpu")
        ... except typer.BadParameter as exc:
        ...     print(exc)
        must be one of cpu, cuda, not 'gpu'
        >>> one_of(source="deepcrossing.config:MLPS")("plain")
        'plain'
    """

    def check(value: str | None) -> str | None:
        choices = tuple(_resolve(source)) if source is not None else allowed
        if value is not None and value not in choices:
            raise typer.BadParameter(f"must be one of {', '.join(choices)}, not {value[:40]!r}")
        return value

    return check


def checked_by(factory: Callable[..., object] | str, key: str,
               parse: Callable[[Any], Any] | None = None) -> Callable[[T], T]:
    """A typer callback that validates a value the way the library does: by building ``factory(**{key: v})``.

    The config classes are the one place that knows a field's valid range; the CLI reuses their check (and
    their message) instead of writing a second copy of it.

    Args:
        factory: a config class whose other fields all have defaults (``TrainConfig``, ``FeatureConfig``, ...),
            or its ``"package.module:NAME"`` (imported when the command runs).
        key: the field the option sets.
        parse: turns the option's text into the field's value first (e.g. ``--fractions 0.8,0.1,0.1``).

    Example:
        >>> from deepcrossing.config import TrainConfig
        >>> try:
        ...     checked_by(TrainConfig, "epochs")(0)
        ... except typer.BadParameter as exc:
        ...     print(exc)
        must be >= 1, not 0
    """

    def check(value: T) -> T:
        if value is None:
            return value
        cls = _resolve(factory)
        try:
            cls(**{key: parse(value) if parse is not None else value})
        except InputError as exc:
            message = exc.message.split(": ", 1)[1] if exc.message.startswith(cls.__name__ + ".") \
                else exc.message
            raise typer.BadParameter(message) from None
        return value

    return check


def parse_fractions(text: str) -> tuple[float, ...]:
    """``"0.8,0.1,0.1"`` -> ``(0.8, 0.1, 0.1)``; a one-line error for anything that is not numbers.

    Example:
        >>> parse_fractions("0.8, 0.1,0.1")
        (0.8, 0.1, 0.1)
    """
    try:
        shares = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"must be three numbers like 0.8,0.1,0.1, not {text[:40]!r}") from None
    if not all(math.isfinite(x) for x in shares):
        raise typer.BadParameter(f"must be finite numbers, not {text[:40]!r}")
    return shares


def positive_ints(value: str | None) -> str | None:
    """A typer callback for a list of cut-offs (``--k 50,100``): positive integers, comma-separated.

    Example:
        >>> try:
        ...     positive_ints("10,x")
        ... except typer.BadParameter as exc:
        ...     print(exc)
        must be positive integers like 50,100,200,800, not '10,x'
    """
    if value is not None:
        from deepcrossing.training.retrieval import parse_ks

        try:
            parse_ks(value)
        except InputError as exc:
            raise typer.BadParameter(exc.message) from None
    return value


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"2G"``, ``"512M"``, ``"1.5GiB"``, ``"1000000"`` -> bytes (powers of 1024).

    Example:
        >>> parse_size("1.5G"), parse_size("512m")
        (1610612736, 536870912)
    """
    m = _SIZE.match(text)
    if m is None:
        raise DeepCrossingError(f"must be a size like 4G or 512M, not {text[:40]!r}")
    return int(float(m.group(1)) * 1024 ** " kmgt".index((m.group(2) or " ").lower()))


def byte_size(value: str | None) -> str | None:
    """A typer callback for a memory size (``--memory-budget 4G``), checked by :func:`parse_size`."""
    if value is not None:
        try:
            parse_size(value)
        except DeepCrossingError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


def model_folder(value: Path | None) -> Path | None:
    """A typer callback for ``--model``: a model folder written by ``deepcrossing train`` (not missing, not a
    file, not a samples folder), checked by :func:`deepcrossing.training.artifact.require_model_dir` before any
    other work; its :class:`InputError` (which names the folder) is the one-line error."""
    if value is None:
        return value
    from deepcrossing.training.model_dir import require_model_dir

    require_model_dir(value)
    return value


def not_a_file(value: Path | None) -> Path | None:
    """A typer callback for an output folder: an existing *file* there is refused (never replaced by a folder).

    Whether an existing folder may be written into is the command's own (output-ownership) check.
    """
    if value is not None and value.exists() and not value.is_dir():
        raise typer.BadParameter(f"{value} is a file; give a folder (it is created when missing)")
    return value


def existing_folder(value: Path | None) -> Path | None:
    """A typer callback for an input folder (``serve --webroot``): it must exist and be a folder; resolved."""
    if value is not None:
        if not value.exists():
            raise typer.BadParameter(f"{value}: no such folder")
        if not value.is_dir():
            raise typer.BadParameter(f"{value} is a file; give a folder")
        value = value.resolve()
    return value


def bind_host(value: str) -> str:
    """A typer callback for ``serve --host``: a name or address that resolves. An empty string is refused:
    uvicorn would listen on every interface (0.0.0.0 and ::) while the banner showed ``http://:PORT/``."""
    import socket

    if not value.strip():
        raise typer.BadParameter("must be an address or host name, not empty (an empty host listens on every "
                                 "interface; say 0.0.0.0 if you mean that)")
    try:
        socket.getaddrinfo(value, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise typer.BadParameter(f"cannot resolve {value[:60]!r} ({getattr(exc, 'strerror', None) or exc})") from None
    return value


def require_free_port(host: str, port: int) -> None:
    """Refuse, before any model is loaded or banner printed, a ``host:port`` this process cannot listen on (in
    use by another server, an address of another machine, a privileged port), with uvicorn's own socket options."""
    import errno
    import socket

    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            hint = ("stop the other server or pick another --port" if exc.errno == errno.EADDRINUSE else
                    "give an address of this machine (--host) and a port you may bind")
            raise DeepCrossingError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); {hint}") from None


# ---- verbs are registered below, one section per pipeline stage ----
