"""The store interface: what a published version holds, how it is named, published and verified.

What a published version holds (all values JSON, never pickle):

* users: ``user_id -> record``; a record is ``{"features": {userId, userRatingCount, ...}, "history":
  [[movie_id, rating, timestamp], ...] (most recent first, bounded), "rated": [movie_id, ...]}``, and for
  display (newer versions) ``"ratings"`` (like history, at most 1,000), ``"ratingCount"``,
  ``"averageRating"``, ``"highestRating"``, ``"lowestRating"``.
* movies: ``movie_id -> record``; ``{"features": {movieId, releaseYear, movieGenres, ...}, "title": str,
  "genres": [str], "year": int|None}``, and for display (newer versions) ``"imdbId"``, ``"tmdbId"`` (str or
  None), ``"ratingNumber"``, ``"averageRating"``, ``"topRatings"`` (``[[user_id, rating, timestamp], ...]``,
  at most 10, highest first).
* candidates: movie ids, most popular / best rated first (see :mod:`deepcrossing.serving.publish`).
* meta: JSON object with at least ``version``, ``id``, ``n_users``, ``n_movies``, ``n_candidates`` and
  ``checksum``.

Identity, not numbers: each published version is named by a :class:`Ref`, its version number (for people;
it restarts at 1 when the store is recreated) and a fresh ``uuid4`` (``meta["id"]``). Every table or key of a
version carries both, so a read by ``Ref`` can only ever see that very version: a recreated store's
"version 1" is a different ``Ref``, and reading the old one raises :class:`VersionGone`.

Publishing writes the whole new version under its own names, reads it back and verifies counts and a SHA-256
checksum against the meta, and only then switches one pointer atomically (Redis: one ``SET`` in a
``MULTI/EXEC``; SQLite: one transaction). Only after the switch are older versions deleted. A version that was
written only in part (the publisher was killed) has no pointer to it, is never served and is swept by the
next publish.

Example:
    >>> ref = Ref(3, "0f" * 16)
    >>> ref.tag
    'v3_0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f'
    >>> Ref.parse(ref.tag) == ref
    True
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

from deepcrossing.errors import DeepCrossingError, InputError

FORMAT = "deepcrossing-feature-store/2"
Record = dict[str, Any]
T = TypeVar("T")
_TAG = re.compile(r"^v(\d+)_([0-9a-f]{32})$")


class StoreError(DeepCrossingError):
    """The store holds nothing usable (no version published, file deleted) or its data failed verification."""


class StoreUnavailable(DeepCrossingError):
    """The store cannot be reached right now (Redis down or timing out); the service answers 503."""


class StoreConfigError(InputError):
    """The store URL is wrong, or the server refuses it (e.g. a Redis database number out of range)."""


class VersionGone(StoreError):
    """The version a request resolved was deleted (a newer publish, or the store was recreated)."""


class Ref(NamedTuple):
    """One published version: its number (for people) and its unique id (for identity).

    Attributes:
        version: 1, 2, ... within one life of the store.
        uid: 32 hex digits of a ``uuid4``, drawn when the version is created.
    """

    version: int
    uid: str

    @property
    def tag(self) -> str:
        """The suffix of the version's table or key names: ``v{version}_{uid}``."""
        return f"v{self.version}_{self.uid}"

    @classmethod
    def parse(cls, tag: str) -> Ref | None:
        """Inverse of :attr:`tag`; ``None`` for anything else (an older format's names)."""
        match = _TAG.match(tag)
        return None if match is None else cls(int(match.group(1)), match.group(2))

    def __str__(self) -> str:
        return f"version {self.version} (id {self.uid[:8]})"


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


class _Checksum:
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


class FeatureStore(ABC):
    """Interface of the online store; see the module docstring for what a version holds.

    Every read takes ``version=None`` (the current one) or a :class:`Ref` resolved earlier in the same
    request. Reads raise :class:`StoreUnavailable` when the backend cannot be reached, :class:`StoreError`
    when nothing has been published (or the store's file is gone) and :class:`VersionGone` when the named
    version no longer exists.
    """

    url: str

    # ---- reads ----
    @abstractmethod
    def current(self) -> Ref | None:
        """The published version readers get now, or ``None`` when nothing is published."""

    def current_version(self) -> int | None:
        """The number of :meth:`current` (for people and logs; identity is the whole :class:`Ref`)."""
        ref = self.current()
        return None if ref is None else ref.version

    @abstractmethod
    def exists(self, ref: Ref) -> bool:
        """Whether version ``ref`` is still in the store (readable)."""

    @abstractmethod
    def read_user(self, user_id: int) -> tuple[Ref, Record | None]:
        """Resolve the current version and fetch one user's record from it, atomically."""

    @abstractmethod
    def get_users(self, user_ids: Sequence[int], *, version: Ref | None = None) -> list[Record | None]:
        """User records in the given order (``None`` for unknown ids)."""

    @abstractmethod
    def get_movies(self, movie_ids: Sequence[int], *, version: Ref | None = None) -> list[Record | None]:
        """Movie records in the given order (``None`` for unknown ids)."""

    @abstractmethod
    def iter_movies(self, *, version: Ref | None = None) -> Iterator[tuple[int, Record]]:
        """Every movie of a version as ``(movie_id, record)`` (order unspecified)."""

    @abstractmethod
    def iter_users(self, *, version: Ref | None = None) -> Iterator[tuple[int, Record]]:
        """Every user of a version as ``(user_id, record)`` (order unspecified)."""

    @abstractmethod
    def get_candidates(self, n: int | None = None, *, version: Ref | None = None) -> list[int]:
        """The first ``n`` candidate movie ids (all when ``None``), most popular first."""

    @abstractmethod
    def meta(self, *, version: Ref | None = None) -> Record:
        """The meta object of a version."""

    @abstractmethod
    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` (or :class:`StoreError`) when the backend cannot be used."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    def get_user(self, user_id: int, *, version: Ref | None = None) -> Record | None:
        """One user's record, or ``None`` when unknown."""
        return self.get_users([user_id], version=version)[0]

    def get_movie(self, movie_id: int, *, version: Ref | None = None) -> Record | None:
        """One movie's record, or ``None`` when unknown."""
        return self.get_movies([movie_id], version=version)[0]

    def nothing_published(self) -> StoreError:
        """The error of a store with no version to serve."""
        return StoreError(f"{self.url}: nothing published yet; run `deepcrossing publish`")

    # ---- writes ----
    def publish(
        self,
        users: Iterable[tuple[int, Record]],
        movies: Iterable[tuple[int, Record]],
        candidates: Sequence[int],
        meta: Record | None = None,
        *,
        batch_size: int = 5000,
        keep_previous_s: float = 0.0,
    ) -> Ref:
        """Write a new version, verify it, switch the pointer atomically, then delete older versions.

        Args:
            users: ``(user_id, record)`` pairs (any iterable; consumed once, in batches).
            movies: ``(movie_id, record)`` pairs.
            candidates: movie ids, most popular first; each must be one of ``movies``.
            meta: extra JSON-ready meta (model, data source, ...); ``version``, ``id``, counts and
                ``checksum`` are added here.
            batch_size: rows per write batch.
            keep_previous_s: seconds to wait after the switch before deleting the previous version, so that
                a service still reading it (it polls the pointer) moves over first.

        Returns:
            The new version's :class:`Ref` (its number is greater than any this store has held).

        Raises:
            StoreError: when the written version fails verification (it is then deleted, never served).
        """
        meta = dict(meta or {})
        ref = self._new_version()
        checksum = _Checksum()
        counts = {"users": 0, "movies": 0}
        try:
            for kind, rows in (("users", users), ("movies", movies)):
                for batch in batches(rows, batch_size):
                    encoded = []
                    for key, record in batch:
                        payload = encode_record(record)
                        checksum.add(kind, int(key), payload)
                        encoded.append((int(key), payload))
                    self._write_rows(ref, kind, encoded)
                    counts[kind] += len(encoded)
            ids = [int(c) for c in candidates]
            checksum.add("candidates", 0, dumps(ids))
            meta.update(format=FORMAT, version=ref.version, id=ref.uid, n_users=counts["users"],
                        n_movies=counts["movies"], n_candidates=len(ids), checksum=checksum.hexdigest(),
                        published_at=time.time())
            self._write_candidates_and_meta(ref, ids, dumps(meta))
            self.verify(ref)
        except BaseException:
            self._delete_version(ref)
            raise
        previous = self._switch(ref)
        if previous and keep_previous_s > 0:
            time.sleep(keep_previous_s)
        for old in previous:
            self._delete_version(old)
        return ref

    def verify(self, ref: Ref) -> Record:
        """Re-read a whole version and check its id, counts and checksum against its meta; return the meta.

        Raises:
            StoreError: naming what differs (id, count or checksum).
        """
        meta = self.meta(version=ref)
        checksum = _Checksum()
        counts = {}
        for kind, rows in (("users", self.iter_users(version=ref)), ("movies", self.iter_movies(version=ref))):
            n = 0
            for key, record in rows:
                checksum.add(kind, int(key), dumps(record))
                n += 1
            counts[kind] = n
        candidates = self.get_candidates(version=ref)
        checksum.add("candidates", 0, dumps(candidates))
        if meta.get("id") != ref.uid or meta.get("version") != ref.version:
            raise StoreError(f"{self.url} {ref}: its meta names version {meta.get('version')} id "
                             f"{meta.get('id')}; this version will not be served")
        for kind in ("users", "movies"):
            if counts[kind] != meta.get(f"n_{kind}"):
                raise StoreError(f"{self.url} {ref}: {counts[kind]} {kind} stored, meta says "
                                 f"{meta.get(f'n_{kind}')}; this version will not be served")
        if len(candidates) != meta.get("n_candidates"):
            raise StoreError(f"{self.url} {ref}: {len(candidates)} candidates stored, meta says "
                             f"{meta.get('n_candidates')}")
        if checksum.hexdigest() != meta.get("checksum"):
            raise StoreError(f"{self.url} {ref}: checksum mismatch (stored data differs from what "
                             "was published); this version will not be served")
        return meta

    def versions_present(self) -> list[int]:
        """The numbers of every version with any data in the store, published or not (tests, sweeping)."""
        return sorted({ref.version for ref in self.refs_present()})

    @abstractmethod
    def refs_present(self) -> list[Ref]:
        """Every version with any data in the store, published or not."""

    @abstractmethod
    def _new_version(self) -> Ref: ...

    @abstractmethod
    def _write_rows(self, ref: Ref, kind: str, rows: list[tuple[int, str]]) -> None: ...

    @abstractmethod
    def _write_candidates_and_meta(self, ref: Ref, candidates: list[int], meta_json: str) -> None: ...

    @abstractmethod
    def _switch(self, ref: Ref) -> list[Ref]:
        """Point readers at ``ref`` atomically; return the older versions now unreferenced (to delete)."""

    @abstractmethod
    def _delete_version(self, ref: Ref) -> None: ...
