"""The one strict-config mechanism: frozen pydantic v2 dataclasses that validate on construction.

Every config of the package (:mod:`deepcrossing.config`'s feature spec, model and training configs,
:class:`~deepcrossing.features.config.FeatureConfig`, :class:`~deepcrossing.serving.settings.ServingSettings`)
is a :class:`StrictConfig` made by :func:`strict_config`. That gives each of them, from one place:

- pydantic's strict types (no ``"2"`` for an int, no ``3.5`` for an int, no ``true`` for a number, finite
  floats only), unknown keys refused, ``frozen``, and ``dataclasses.replace`` / ``fields`` / ``asdict``;
- errors as :class:`~deepcrossing.errors.InputError` naming the key (``features[3].pooling``), never a
  pydantic ``ValidationError``; rules across fields stay in ``__post_init__`` and raise ``InputError`` too;
- ``to_dict`` (JSON/TOML-ready) and ``from_dict`` (strict inverse, key names prefixed for nested sections).

Lists from TOML/JSON become tuples (:data:`AS_TUPLE`) and strings become paths (:data:`AS_PATH`).

Example:
    >>> from deepcrossing.config import ModelConfig
    >>> ModelConfig.from_dict({"mlp": "plain", "hidden": [128, 128]}).hidden
    (128, 128)
    >>> ModelConfig(width="3")
    Traceback (most recent call last):
    ...
    deepcrossing.errors.InputError: field width: must be an integer, not '3'
    >>> ModelConfig.from_dict({"norm": "group"}, prefix="model.")
    Traceback (most recent call last):
    ...
    deepcrossing.errors.InputError: field model.norm: must be one of none, batch, layer, not 'group'
"""

from __future__ import annotations

import dataclasses
import functools
import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar, dataclass_transform

import pydantic
import pydantic.dataclasses
from pydantic import AfterValidator, BeforeValidator, ConfigDict, ValidationError

from deepcrossing.errors import InputError

T = TypeVar("T")

_CONFIG = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _as_path(value: Any) -> Any:
    return Path(value) if isinstance(value, str) else value


AS_TUPLE = BeforeValidator(_as_tuple)
"""``Annotated[tuple[...], AS_TUPLE]``: a list (TOML/JSON has no tuples) is taken as a tuple."""
AS_PATH = BeforeValidator(_as_path)
"""``Annotated[Path, AS_PATH]``: a string is taken as a path."""


def one_of(*choices: str) -> AfterValidator:
    """``Annotated[str, one_of("a", "b")]``: the value must be one of ``choices`` (a plain ``str`` to mypy)."""

    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return AfterValidator(check)


class StrictConfig:
    """Base of every strict config: ``to_dict`` and ``from_dict``. Subclasses are made by :func:`strict_config`."""

    def to_dict(self) -> dict[str, Any]:
        """JSON/TOML-ready dict: ``None`` fields left out (TOML has no null), tuples as lists, paths as str."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = _plain(getattr(self, f.name))
            if value is not None:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Any, prefix: str = "") -> Self:
        """Strict inverse of :meth:`to_dict`; ``prefix`` (``"model."``) is put before key names in errors."""
        if not isinstance(data, dict):
            raise InputError(f"must be a table of keys, not {_short(data)}", field=prefix.rstrip(".") or cls.__name__)
        try:
            return cls(**data)
        except InputError as exc:
            raise relocate(exc, prefix) from None


def _plain(value: Any) -> Any:
    if isinstance(value, StrictConfig):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def relocate(exc: InputError, prefix: str) -> InputError:
    """``exc`` with ``prefix`` put before its field name (once), for errors of a nested section."""
    if not prefix or (exc.field is not None and exc.field.startswith(prefix)):
        return exc
    return InputError(exc.message, path=exc.path, line=exc.line, field=f"{prefix}{exc.field or ''}".rstrip("."))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _field(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_WORDS = {
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "finite_number": "must be finite",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "tuple_type": "must be a list",
    "path_type": "must be a path",
    "missing": "is required",
    "missing_argument": "is required",
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "too_short": "must have {min_length} item(s)",
    "too_long": "must have at most {max_length} item(s)",
    "string_too_short": "must not be empty",
}


def _input_error(cls: type, exc: ValidationError) -> InputError:
    """The first error of ``exc`` as an :class:`InputError` naming the key."""
    err = exc.errors()[0]
    loc, names = err["loc"], [f.name for f in dataclasses.fields(cls)]
    if loc and isinstance(loc[0], int):  # a positional argument: name its field
        loc = (names[loc[0]] if loc[0] < len(names) else f"argument {loc[0] + 1}", *loc[1:])
    key = _field(loc)
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "unexpected_keyword_argument":
        return InputError(f"unknown {cls.__name__} key {key!r} (known: {', '.join(names)})", field=key)
    if kind == "unexpected_positional_argument":
        return InputError(f"{cls.__name__} takes at most {len(names)} arguments", field=key)
    if kind == "value_error":
        why = str(ctx.get("error", err["msg"]))
    elif kind in _WORDS:
        why = _WORDS[kind].format(**ctx)
    else:
        why = err["msg"]
    if kind not in ("missing", "missing_argument"):
        why += f", not {_short(value)}"
    return InputError(why, field=key or cls.__name__)


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, pydantic.Field))
def strict_config(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen, strict pydantic dataclass whose constructor raises :class:`InputError`."""
    made: Any = pydantic.dataclasses.dataclass(frozen=True, config=_CONFIG)(cls)
    init: Callable[..., None] = made.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValidationError as exc:
            raise _input_error(made, exc) from None

    made.__init__ = __init__
    return made  # type: ignore[no-any-return]


# ---------------------------------------------------------------- files


def read_table(path: Path) -> Any:
    """Parse a ``.json`` or TOML file; unreadable files and bad syntax are an :class:`InputError` naming it."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the file: {exc.strerror}", path=path) from None
    is_json = path.suffix.lower() == ".json"
    try:
        return json.loads(raw) if is_json else tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"not valid {'JSON' if is_json else 'TOML'}: {exc}", path=path) from None


def toml_value(value: Any) -> str:
    """One TOML value (bool, number, string or list of them).

    Example:
        >>> toml_value([1, "a", True])
        '[1, "a", true]'
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")  # pragma: no cover - programming error
