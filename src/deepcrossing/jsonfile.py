"""Read a JSON object from a file (manifests, reports), with the one error every reader gives.

Example:
    >>> import json, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "manifest.json"
    >>> _ = path.write_text(json.dumps({"format": "x"}))
    >>> read_json_object(path)
    {'format': 'x'}
    >>> _ = path.write_text("[1, 2]")
    >>> read_json_object(path)
    Traceback (most recent call last):
    ...
    deepcrossing.errors.InputError: .../manifest.json: must hold a JSON object, not list
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from deepcrossing.errors import InputError

__all__ = ["nan_to_null", "read_json_object"]


def read_json_object(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path``.

    Raises:
        InputError: naming the file, when it cannot be read, is not valid JSON or holds no JSON object.
    """
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"not valid JSON: {str(exc)[:200]}", path=path) from None
    if not isinstance(value, dict):
        raise InputError(f"must hold a JSON object, not {type(value).__name__}", path=path)
    return value


def nan_to_null(value: Any) -> Any:
    """``value`` with every float NaN or infinity (in nested dicts and lists) replaced by ``None``, so that
    ``json.dumps(..., allow_nan=False)`` writes standard JSON (``NaN`` is not JSON; strict parsers refuse it).

    Example:
        >>> nan_to_null({"recall": {"50": float("nan"), "100": 0.5}, "ks": [50, 100]})
        {'recall': {'50': None, '100': 0.5}, 'ks': [50, 100]}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: nan_to_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_to_null(v) for v in value]
    return value
