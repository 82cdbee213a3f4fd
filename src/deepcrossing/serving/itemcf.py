"""The item-CF data of a store version: every movie's co-occurrence list, stored as checksummed blobs.

``userItemCFScore`` (:mod:`deepcrossing.features.itemcf`) of a (user, candidate) pair needs the co-occurrence
rows of the user's last ``itemcf_history`` rated movies, for any candidate. They are stored as five flat
little-endian int64 arrays (the CSR of :class:`~deepcrossing.features.itemcf.CoOccurrence`: ``movies``,
``positives``, ``offsets``, ``neighbours``, ``co``), blobs ``itemcf/<array>/<k>`` (parts of at most
:data:`PART_BYTES`: a Redis value holds at most 512 MiB) with their SHA-256 in the meta (checked on every read,
like the vector channels), and ``meta["itemcf"]`` records the ``history`` and ``window`` the samples used, the
sizes and the number of parts of each array. Why blobs and not per-movie records: the service needs the whole
table in memory anyway (any history movie may be asked for), and five byte strings load in one read each
and become numpy arrays without parsing (``np.frombuffer``), where ~10,000 JSON records would be parsed one
by one; the memory is bounded by the edges (16 bytes each: 838,032 edges, 13 MB, on ml-latest-small).

Only a service whose model reads ``userItemCFScore`` loads them (:func:`load_itemcf`).

Example:
    >>> import pyarrow as pa
    >>> from deepcrossing.features.itemcf import COOCCURRENCE_SCHEMA
    >>> t = pa.table({"movieId": [1, 2], "positives": [1, 4], "neighbours": [[2], [1]], "co": [[1], [1]]},
    ...              schema=COOCCURRENCE_SCHEMA)
    >>> blobs, meta = itemcf_blobs(t, history=20, window=10)
    >>> sorted(blobs)[:2], meta["edges"], meta["parts"]["co"]
    (['itemcf/co/0', 'itemcf/movies/0'], 2, 1)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from deepcrossing.features.itemcf import CoOccurrence
from deepcrossing.serving.store import FeatureStore, Record, Ref, StoreError

__all__ = ["ARRAYS", "ItemCF", "history_arrays", "itemcf_blobs", "load_itemcf"]

PREFIX = "itemcf"
ARRAYS = ("movies", "positives", "offsets", "neighbours", "co")
"""The :class:`CoOccurrence` arrays, stored as blobs ``itemcf/<name>/<k>`` (little-endian int64)."""
PART_BYTES = 1 << 27   # 128 MiB per blob (ml-latest-small's largest array: 6.7 MB, one part)


@dataclass(frozen=True, eq=False)
class ItemCF:
    """What the scorer needs for ``userItemCFScore``: the co-occurrence lists at the version's ``t_end`` and
    the number of the user's latest ratings the samples scored (``FeatureConfig.itemcf_history``). Compared
    and hashed by identity (one per store version: the key of each user's memoised sums)."""

    table: CoOccurrence
    history: int


def itemcf_blobs(cooccurrence: pa.Table, *, history: int, window: int) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The blobs and the ``meta["itemcf"]`` entry of a version holding these co-occurrence lists.

    Args:
        cooccurrence: ``OnlineRecords.cooccurrence`` (:func:`~deepcrossing.features.itemcf.cooccurrence_sql`).
        history, window: the samples' ``FeatureConfig.itemcf_history`` / ``itemcf_window``.
    """
    table = CoOccurrence.from_table(cooccurrence)
    blobs: dict[str, bytes] = {}
    parts: dict[str, int] = {}
    for name in ARRAYS:
        data = np.ascontiguousarray(getattr(table, name), dtype="<i8").tobytes()
        parts[name] = max(1, -(-len(data) // PART_BYTES))
        blobs |= {f"{PREFIX}/{name}/{k}": data[k * PART_BYTES:(k + 1) * PART_BYTES] for k in range(parts[name])}
    meta = {"history": int(history), "window": int(window), "movies": int(len(table.movies)),
            "edges": int(len(table.neighbours)), "parts": parts}
    return blobs, meta


def load_itemcf(store: FeatureStore, ref: Ref, meta: Record) -> ItemCF:
    """The item-CF data of version ``ref`` (every blob checked by SHA-256 and the arrays by their sizes).

    Raises:
        StoreError: the version has no item-CF data (one line saying what to do), or a blob differs from what
            was published or has the wrong size.
    """
    info = meta.get("itemcf")
    if not isinstance(info, dict):
        raise StoreError(f"{store.url} {ref}: the model reads userItemCFScore but this store version has no item-CF "
                         "data; build the model's samples with `prepare --itemcf`, train, and publish again")
    parts = info.get("parts") or {}
    arrays = {name: np.frombuffer(b"".join(store.blob(ref, f"{PREFIX}/{name}/{k}", meta)
                                           for k in range(int(parts.get(name, 1)))), dtype="<i8").astype(np.int64)
              for name in ARRAYS}
    m, e = int(info.get("movies", -1)), int(info.get("edges", -1))
    sizes = {"movies": m, "positives": m, "offsets": m + 1, "neighbours": e, "co": e}
    wrong = [name for name, size in sizes.items() if len(arrays[name]) != size]
    if wrong or (m >= 0 and (arrays["offsets"][0] != 0 or arrays["offsets"][-1] != e)):
        raise StoreError(f"{store.url} {ref}: item-CF blobs {', '.join(wrong) or 'offsets'} do not match "
                         "meta['itemcf']; this version will not be served")
    return ItemCF(CoOccurrence(**arrays), int(info["history"]))


def history_arrays(history: Sequence[Sequence[Any]] | None) -> tuple[np.ndarray, np.ndarray]:
    """A user record's ``history`` (``[[movie_id, rating, timestamp], ...]``, most recent first) as ``(movies
    int64, ratings float64)``, a NULL rating as NaN (skipped by the score); ``None``: empty arrays.

    Example:
        >>> history_arrays([[5, 4.5, 100], [3, None, 90]])
        (array([5, 3]), array([4.5, nan]))
    """
    rows = list(history or ())
    movies = np.fromiter((int(h[0]) for h in rows), np.int64, count=len(rows))
    ratings = np.fromiter((np.nan if h[1] is None else float(h[1]) for h in rows), np.float64, count=len(rows))
    return movies, ratings
