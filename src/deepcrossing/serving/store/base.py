"""The store interface: what a published version holds, how it is named, published and verified.

What a published version holds (all values JSON, never pickle):

* users: ``user_id -> record``; a record is ``{"features": {userId, userRatingCount, ...}, "history":
  [[movie_id, rating, timestamp], ...] (most recent first, bounded), "rated": [movie_id, ...]}`` (versions
  published before the ``displays`` kind also hold the display keys below);
* displays (newer versions, read only by ``/getuser``, so a ranking request never parses them): ``user_id ->
  {"ratings": [[movie_id, rating, timestamp], ...] (most recent first, at most 1,000), "ratingCount",
  "averageRating", "highestRating", "lowestRating"}``;
* movies: ``movie_id -> record``; ``{"features": {movieId, releaseYear, movieGenres, ...}, "title": str,
  "genres": [str], "year": int|None}``, and for display (newer versions) ``"imdbId"``, ``"tmdbId"`` (str or
  None), ``"ratingNumber"``, ``"averageRating"``, ``"topRatings"`` (``[[user_id, rating, timestamp], ...]``,
  at most 10, highest first).
* candidates: movie ids, most popular / best rated first (see :mod:`deepcrossing.serving.publish`).
* blobs: ``name -> bytes`` (the recall channels' item vectors and ANN indexes, :mod:`..ann`), each with its
  SHA-256 in ``meta["blobs"]``; :meth:`FeatureStore.blob` checks it on every read, so bytes that differ from
  what was published are never used;
* meta: JSON object with at least ``version``, ``id``, ``n_users``, ``n_movies``, ``n_candidates`` and
  ``checksum`` (``n_displays`` and ``blobs`` when the version has them).

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
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from deepcrossing.errors import DeepCrossingError, InputError
from deepcrossing.serving.store.codec import Checksum, batches, clean, dumps, encode_record

__all__ = ["FORMAT", "FeatureStore", "Record", "Ref", "StoreConfigError", "StoreError", "StoreUnavailable",
           "VersionGone", "batches", "clean", "dumps", "encode_record"]

FORMAT = "deepcrossing-feature-store/2"
Record = dict[str, Any]
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
    def get_displays(self, user_ids: Sequence[int], *, version: Ref) -> list[Record | None]:
        """Users' display records (``/getuser``), in the given order (``None`` for unknown ids)."""

    @abstractmethod
    def iter_displays(self, *, version: Ref) -> Iterator[tuple[int, Record]]:
        """Every display record of a version (order unspecified)."""

    @abstractmethod
    def _read_blob(self, ref: Ref, name: str) -> bytes | None:
        """The stored bytes of blob ``name`` (``None`` when absent)."""

    def blob(self, ref: Ref, name: str, meta: Record | None = None) -> bytes:
        """Blob ``name`` of version ``ref``, checked against the SHA-256 in its meta.

        Raises:
            StoreError: the blob is missing or its bytes differ from what was published (never served).
        """
        meta = self.meta(version=ref) if meta is None else meta
        expected = (meta.get("blobs") or {}).get(name)
        data = self._read_blob(ref, name)
        if expected is None or data is None:
            raise StoreError(f"{self.url} {ref}: blob {name} is missing; this version will not be served")
        if hashlib.sha256(data).hexdigest() != expected:
            raise StoreError(f"{self.url} {ref}: blob {name} does not match its SHA-256 in the version's meta "
                             "(stored bytes differ from what was published); this version will not be served")
        return data

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
        displays: Iterable[tuple[int, Record]] = (),
        blobs: Mapping[str, bytes] | None = None,
        batch_size: int = 5000,
        keep_previous_s: float = 0.0,
    ) -> Ref:
        """Write a new version, verify it, switch the pointer atomically, then delete older versions.

        Args:
            users: ``(user_id, record)`` pairs (any iterable; consumed once, in batches).
            movies: ``(movie_id, record)`` pairs.
            candidates: movie ids, most popular first; each must be one of ``movies``.
            meta: extra JSON-ready meta (model, data source, ...); ``version``, ``id``, counts,
                ``checksum`` and the blobs' SHA-256 are added here.
            displays: ``(user_id, display record)`` pairs (``/getuser``'s data, apart from the user records).
            blobs: ``name -> bytes`` (item vectors, ANN indexes), each checked by SHA-256 on every read.
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
        checksum = Checksum()
        counts = {"users": 0, "movies": 0, "displays": 0}
        blob_sums = {name: hashlib.sha256(data).hexdigest() for name, data in (blobs or {}).items()}
        try:
            for kind, rows in (("users", users), ("movies", movies), ("displays", displays)):
                for batch in batches(rows, batch_size):
                    encoded = []
                    for key, record in batch:
                        payload = encode_record(record)
                        checksum.add(kind, int(key), payload)
                        encoded.append((int(key), payload))
                    self._write_rows(ref, kind, encoded)
                    counts[kind] += len(encoded)
            for name, data in (blobs or {}).items():
                self._write_blob(ref, name, data)
            ids = [int(c) for c in candidates]
            checksum.add("candidates", 0, dumps(ids))
            meta.update(format=FORMAT, version=ref.version, id=ref.uid, n_users=counts["users"],
                        n_movies=counts["movies"], n_candidates=len(ids), checksum=checksum.hexdigest(),
                        published_at=time.time())
            if counts["displays"]:
                meta["n_displays"] = counts["displays"]
            if blob_sums:
                meta["blobs"] = blob_sums
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
        checksum = Checksum()
        counts = {}
        kinds = [("users", self.iter_users(version=ref)), ("movies", self.iter_movies(version=ref))]
        if "n_displays" in meta:
            kinds.append(("displays", self.iter_displays(version=ref)))
        for kind, rows in kinds:
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
        for kind in counts:
            if counts[kind] != meta.get(f"n_{kind}"):
                raise StoreError(f"{self.url} {ref}: {counts[kind]} {kind} stored, meta says "
                                 f"{meta.get(f'n_{kind}')}; this version will not be served")
        if len(candidates) != meta.get("n_candidates"):
            raise StoreError(f"{self.url} {ref}: {len(candidates)} candidates stored, meta says "
                             f"{meta.get('n_candidates')}")
        if checksum.hexdigest() != meta.get("checksum"):
            raise StoreError(f"{self.url} {ref}: checksum mismatch (stored data differs from what "
                             "was published); this version will not be served")
        for name in meta.get("blobs") or {}:
            self.blob(ref, name, meta)
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
    def _write_blob(self, ref: Ref, name: str, data: bytes) -> None: ...

    @abstractmethod
    def _write_candidates_and_meta(self, ref: Ref, candidates: list[int], meta_json: str) -> None: ...

    @abstractmethod
    def _switch(self, ref: Ref) -> list[Ref]:
        """Point readers at ``ref`` atomically; return the older versions now unreferenced (to delete)."""

    @abstractmethod
    def _delete_version(self, ref: Ref) -> None: ...
