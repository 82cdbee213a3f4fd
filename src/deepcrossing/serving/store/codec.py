"""The store's encoding: canonical JSON of records, the order-independent version checksum, write batches.

Example:
    >>> dumps({"b": 1, "a": (2, 3)})
    '{"a":[2,3],"b":1}'
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["Checksum", "batches", "clean", "dumps", "encode_record"]


def dumps(value: Any) -> str:
    """Canonical JSON (sorted keys, no NaN) so that checksums are stable across backends.

    Example:
        >>> dumps({"b": 1, "a": (2, 3)})
        '{"a":[2,3],"b":1}'
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_json_default)


def _json_default(value: Any) -> Any:
    # numpy scalars and similar: anything with .item() becomes a Python scalar.
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def clean(value: Any) -> Any:
    """Turn NaN/inf into None recursively (JSON has no NaN); maps given as (key, value) pairs become dicts.

    Example:
        >>> clean({"a": float("nan"), "b": [1.5, float("inf")]})
        {'a': None, 'b': [1.5, None]}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return clean(value.item())
    return value


def encode_record(record: Any) -> str:
    """``dumps(clean(record))``, without walking the record when it holds no NaN/inf (the common case:
    :func:`dumps` refuses NaN, and only then is the record cleaned).

    Example:
        >>> encode_record({"a": 1.5, "b": [2]}), encode_record({"a": float("nan")})
        ('{"a":1.5,"b":[2]}', '{"a":null}')
    """
    try:
        return dumps(record)
    except ValueError:  # NaN or inf somewhere (allow_nan=False)
        return dumps(clean(record))


class Checksum:
    """Order-independent SHA-256 over (kind, id, json) entries, via sorted per-kind digests."""

    def __init__(self) -> None:
        self._parts: dict[str, list[bytes]] = {}

    def add(self, kind: str, key: int | str, payload: str) -> None:
        self._parts.setdefault(kind, []).append(hashlib.sha256(f"{key}\x00{payload}".encode()).digest())

    def hexdigest(self) -> str:
        total = hashlib.sha256()
        for kind in sorted(self._parts):
            total.update(kind.encode())
            for digest in sorted(self._parts[kind]):
                total.update(digest)
        return total.hexdigest()


def batches(rows: Iterable[T], size: int) -> Iterator[list[T]]:
    """``rows`` in lists of at most ``size``.

    Example:
        >>> list(batches(range(5), 2))
        [[0, 1], [2, 3], [4]]
    """
    batch: list[T] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
