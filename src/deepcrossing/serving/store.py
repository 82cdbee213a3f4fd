"""The online feature store: one small interface, two backends (SQLite, the embedded default; Redis).

What a published version holds (all values JSON, never pickle):

* users: ``user_id -> record``; a record is ``{"features": {userId, userRatingCount, ...}, "history":
  [[movie_id, rating, timestamp], ...] (most recent first, bounded), "rated": [movie_id, ...]}``.
* movies: ``movie_id -> record``; ``{"features": {movieId, releaseYear, movieGenres, ...}, "title": str,
  "genres": [str], "year": int|None}``.
* candidates: movie ids, most popular / best rated first (see :mod:`deepcrossing.serving.publish`).
* meta: JSON object with at least ``version``, ``n_users``, ``n_movies``, ``n_candidates`` and ``checksum``.

Publishing is versioned. :meth:`FeatureStore.publish` writes the whole new version under its own key prefix
(Redis) or its own tables (SQLite), reads it back and verifies counts and a SHA-256 checksum against the
meta, and only then switches one pointer atomically (Redis: one ``SET`` in a ``MULTI/EXEC``; SQLite: one
transaction). Only after the switch is the previous version deleted. A version that was written only in
part (the publisher was killed) has no pointer to it, is never served and is swept by the next publish.

Readers resolve the version once per request: :meth:`FeatureStore.read_user` returns ``(version, record)``
in one atomic step (a Lua script on Redis, one read transaction on SQLite), and every later call of that
request passes ``version=`` explicitly, so a request sees the old version or the new one, never a mix. If
the version a request resolved is deleted under it, :class:`VersionGone` is raised and the caller retries.

Example:
    >>> store = open_store("sqlite:///tmp/features.db")            # doctest: +SKIP
    >>> v = store.publish(users, movies, candidates, meta={})       # doctest: +SKIP
    >>> version, record = store.read_user(42)                      # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import threading
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from deepcrossing.errors import DeepCrossingError, InputError

FORMAT = "deepcrossing-feature-store/1"


class StoreError(DeepCrossingError):
    """The store holds nothing usable (no version published) or its data failed verification."""


class StoreUnavailable(DeepCrossingError):
    """The store cannot be reached right now (Redis down or timing out); the service answers 503."""


class VersionGone(StoreError):
    """The version a request resolved was deleted by a newer publish before the request finished reading."""


def dumps(value: Any) -> str:
    """Canonical JSON (sorted keys, no NaN) so that checksums are stable across backends."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_json_default)


def _json_default(value: Any) -> Any:
    # numpy scalars and similar: anything with .item() becomes a Python scalar.
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def clean(value: Any) -> Any:
    """Turn NaN/inf into None recursively (JSON has no NaN); maps given as (key, value) pairs become dicts."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return clean(value.item())
    return value


class _Checksum:
    """Order-independent SHA-256 over (kind, id, json) entries: XOR-free, via sorted per-kind digests."""

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


class FeatureStore(ABC):
    """Interface of the online store; see the module docstring for what a version holds.

    Every read takes ``version=None`` (the current one) or an explicit version number resolved earlier in the
    same request. Reads raise :class:`StoreUnavailable` when the backend cannot be reached, and
    :class:`StoreError` when nothing has been published yet.
    """

    url: str

    # ---- reads ----
    @abstractmethod
    def current_version(self) -> int | None:
        """The published version number readers get now, or ``None`` when nothing is published."""

    @abstractmethod
    def read_user(self, user_id: int) -> tuple[int, dict | None]:
        """Resolve the current version and fetch one user's record from it, atomically."""

    @abstractmethod
    def get_users(self, user_ids: Sequence[int], *, version: int | None = None) -> list[dict | None]:
        """User records in the given order (``None`` for unknown ids)."""

    @abstractmethod
    def get_movies(self, movie_ids: Sequence[int], *, version: int | None = None) -> list[dict | None]:
        """Movie records in the given order (``None`` for unknown ids)."""

    @abstractmethod
    def iter_movies(self, *, version: int | None = None) -> Iterator[tuple[int, dict]]:
        """Every movie of a version as ``(movie_id, record)`` (order unspecified)."""

    @abstractmethod
    def iter_users(self, *, version: int | None = None) -> Iterator[tuple[int, dict]]:
        """Every user of a version as ``(user_id, record)`` (order unspecified)."""

    @abstractmethod
    def get_candidates(self, n: int | None = None, *, version: int | None = None) -> list[int]:
        """The first ``n`` candidate movie ids (all when ``None``), most popular first."""

    @abstractmethod
    def meta(self, *, version: int | None = None) -> dict:
        """The meta object of a version."""

    @abstractmethod
    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` when the backend cannot be reached."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    def get_user(self, user_id: int, *, version: int | None = None) -> dict | None:
        """One user's record, or ``None`` when unknown."""
        return self.get_users([user_id], version=version)[0]

    def get_movie(self, movie_id: int, *, version: int | None = None) -> dict | None:
        """One movie's record, or ``None`` when unknown."""
        return self.get_movies([movie_id], version=version)[0]

    # ---- writes ----
    def publish(
        self,
        users: Iterable[tuple[int, dict]],
        movies: Iterable[tuple[int, dict]],
        candidates: Sequence[int],
        meta: dict | None = None,
        *,
        batch_size: int = 5000,
        keep_previous_s: float = 0.0,
    ) -> int:
        """Write a new version, verify it, switch the pointer atomically, then delete older versions.

        Args:
            users: ``(user_id, record)`` pairs (any iterable; consumed once, in batches).
            movies: ``(movie_id, record)`` pairs.
            candidates: movie ids, most popular first; each must be one of ``movies``.
            meta: extra JSON-ready meta (model, data source, ...); ``version``, counts and ``checksum`` are
                added here.
            batch_size: rows per write batch.
            keep_previous_s: seconds to wait after the switch before deleting the previous version, so that
                a service still reading it (it polls the pointer) moves over first.

        Returns:
            The new version number (greater than any version this store has held).

        Raises:
            StoreError: when the written version fails verification (it is then deleted, never served).
        """
        meta = dict(meta or {})
        version = self._new_version()
        checksum = _Checksum()
        counts = {"users": 0, "movies": 0}
        try:
            for kind, rows in (("users", users), ("movies", movies)):
                for batch in _batches(rows, batch_size):
                    encoded = []
                    for key, record in batch:
                        payload = dumps(clean(record))
                        checksum.add(kind, int(key), payload)
                        encoded.append((int(key), payload))
                    self._write_rows(version, kind, encoded)
                    counts[kind] += len(encoded)
            candidates = [int(c) for c in candidates]
            checksum.add("candidates", 0, dumps(candidates))
            meta.update(
                format=FORMAT,
                version=version,
                n_users=counts["users"],
                n_movies=counts["movies"],
                n_candidates=len(candidates),
                checksum=checksum.hexdigest(),
                published_at=time.time(),
            )
            self._write_candidates_and_meta(version, candidates, dumps(meta))
            self.verify(version)
        except BaseException:
            self._delete_version(version)
            raise
        previous = self._switch(version)
        if previous and keep_previous_s > 0:
            time.sleep(keep_previous_s)
        for old in previous:
            self._delete_version(old)
        return version

    def verify(self, version: int) -> dict:
        """Re-read a whole version and check its counts and checksum against its meta; return the meta.

        Raises:
            StoreError: naming what differs (count or checksum).
        """
        meta = self.meta(version=version)
        checksum = _Checksum()
        counts = {}
        for kind, rows in (("users", self.iter_users(version=version)), ("movies", self.iter_movies(version=version))):
            n = 0
            for key, record in rows:
                checksum.add(kind, int(key), dumps(record))
                n += 1
            counts[kind] = n
        candidates = self.get_candidates(version=version)
        checksum.add("candidates", 0, dumps(candidates))
        for kind in ("users", "movies"):
            if counts[kind] != meta.get(f"n_{kind}"):
                raise StoreError(f"{self.url} version {version}: {counts[kind]} {kind} stored, meta says "
                                 f"{meta.get(f'n_{kind}')}; this version will not be served")
        if len(candidates) != meta.get("n_candidates"):
            raise StoreError(f"{self.url} version {version}: {len(candidates)} candidates stored, meta says "
                             f"{meta.get('n_candidates')}")
        if checksum.hexdigest() != meta.get("checksum"):
            raise StoreError(f"{self.url} version {version}: checksum mismatch (stored data differs from what "
                             "was published); this version will not be served")
        return meta

    @abstractmethod
    def _new_version(self) -> int: ...

    @abstractmethod
    def _write_rows(self, version: int, kind: str, rows: list[tuple[int, str]]) -> None: ...

    @abstractmethod
    def _write_candidates_and_meta(self, version: int, candidates: list[int], meta_json: str) -> None: ...

    @abstractmethod
    def _switch(self, version: int) -> list[int]:
        """Point readers at ``version`` atomically; return the versions now unreferenced (to delete)."""

    @abstractmethod
    def _delete_version(self, version: int) -> None: ...

    @abstractmethod
    def versions_present(self) -> list[int]:
        """Every version that has any data in the store, published or not (for tests and sweeping)."""


def _batches(rows: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# ---------------------------------------------------------------- SQLite


class SQLiteStore(FeatureStore):
    """Feature store in one SQLite file (WAL mode), one table set per version.

    Tables: ``dc_pointer(id=1, version)`` (the one pointer), ``dc_counter(id=1, last)``, and per version
    ``dc_users_v{N}(id, data)``, ``dc_movies_v{N}(id, data)``, ``dc_meta_v{N}(id=1, meta, candidates)``.
    Each reading thread gets its own connection; a request's reads run in one read transaction or name their
    version, and WAL gives every read transaction a consistent snapshot while a publisher writes.

    Args:
        path: database file (created when missing).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if not self.path.parent.exists():
                raise InputError(f"folder {self.path.parent} does not exist", path=self.path)
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("CREATE TABLE IF NOT EXISTS dc_pointer (id INTEGER PRIMARY KEY CHECK (id = 1), "
                         "version INTEGER NOT NULL)")
            conn.execute("CREATE TABLE IF NOT EXISTS dc_counter (id INTEGER PRIMARY KEY CHECK (id = 1), "
                         "last INTEGER NOT NULL)")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def current_version(self) -> int | None:
        row = self._conn().execute("SELECT version FROM dc_pointer WHERE id = 1").fetchone()
        return None if row is None else int(row[0])

    def _resolve(self, conn: sqlite3.Connection, version: int | None) -> int:
        if version is not None:
            return int(version)
        row = conn.execute("SELECT version FROM dc_pointer WHERE id = 1").fetchone()
        if row is None:
            raise StoreError(f"{self.url}: nothing published yet; run `deepcrossing publish`")
        return int(row[0])

    def _select(self, version: int | None, sql: str, args: Sequence = ()) -> tuple[int, list]:
        conn = self._conn()
        if version is not None:  # one statement is a consistent read on its own: no transaction round trips
            return int(version), self._fetch(conn, int(version), sql, args)
        conn.execute("BEGIN")  # pointer and rows from the same snapshot
        try:
            v = self._resolve(conn, version)
            rows = self._fetch(conn, v, sql, args)
        finally:
            conn.execute("COMMIT")
        return v, rows

    def _fetch(self, conn: sqlite3.Connection, v: int, sql: str, args: Sequence) -> list:
        try:
            return conn.execute(sql.format(v=v), args).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                raise VersionGone(f"{self.url}: version {v} is gone") from exc
            raise

    def read_user(self, user_id: int) -> tuple[int, dict | None]:
        v, rows = self._select(None, "SELECT data FROM dc_users_v{v} WHERE id = ?", (int(user_id),))
        return v, (json.loads(rows[0][0]) if rows else None)

    def _get_many(self, kind: str, ids: Sequence[int], version: int | None) -> list[dict | None]:
        ids = [int(i) for i in ids]
        if not ids:
            return []
        found: dict[int, dict] = {}
        for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
            chunk = ids[start:start + 900]
            marks = ",".join("?" * len(chunk))
            version, rows = self._select(version, f"SELECT id, data FROM dc_{kind}_v{{v}} WHERE id IN ({marks})",
                                         chunk)
            found.update((int(i), json.loads(d)) for i, d in rows)
        return [found.get(i) for i in ids]

    def get_users(self, user_ids: Sequence[int], *, version: int | None = None) -> list[dict | None]:
        return self._get_many("users", user_ids, version)

    def get_movies(self, movie_ids: Sequence[int], *, version: int | None = None) -> list[dict | None]:
        return self._get_many("movies", movie_ids, version)

    def _iter(self, kind: str, version: int | None) -> Iterator[tuple[int, dict]]:
        _, rows = self._select(version, f"SELECT id, data FROM dc_{kind}_v{{v}}")
        for i, d in rows:
            yield int(i), json.loads(d)

    def iter_movies(self, *, version: int | None = None) -> Iterator[tuple[int, dict]]:
        return self._iter("movies", version)

    def iter_users(self, *, version: int | None = None) -> Iterator[tuple[int, dict]]:
        return self._iter("users", version)

    def get_candidates(self, n: int | None = None, *, version: int | None = None) -> list[int]:
        _, rows = self._select(version, "SELECT candidates FROM dc_meta_v{v} WHERE id = 1")
        if not rows:
            raise VersionGone(f"{self.url}: version {version} has no meta")
        ids = json.loads(rows[0][0])
        return ids if n is None else ids[:n]

    def meta(self, *, version: int | None = None) -> dict:
        v, rows = self._select(version, "SELECT meta FROM dc_meta_v{v} WHERE id = 1")
        if not rows:
            raise VersionGone(f"{self.url}: version {v} has no meta")
        return json.loads(rows[0][0])

    def ping(self) -> None:
        self._conn().execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.ProgrammingError:
                    pass
            self._all.clear()
        self._local = threading.local()

    # ---- writes ----
    def _new_version(self) -> int:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT last FROM dc_counter WHERE id = 1").fetchone()
            present = self.versions_present()
            last = max([row[0] if row else 0, *present])
            version = last + 1
            conn.execute("INSERT OR REPLACE INTO dc_counter (id, last) VALUES (1, ?)", (version,))
            for kind in ("users", "movies"):
                conn.execute(f"CREATE TABLE dc_{kind}_v{version} (id INTEGER PRIMARY KEY, data TEXT NOT NULL)")
            conn.execute(f"CREATE TABLE dc_meta_v{version} (id INTEGER PRIMARY KEY CHECK (id = 1), "
                         "meta TEXT NOT NULL, candidates TEXT NOT NULL)")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return version

    def _write_rows(self, version: int, kind: str, rows: list[tuple[int, str]]) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(f"INSERT INTO dc_{kind}_v{version} (id, data) VALUES (?, ?)", rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _write_candidates_and_meta(self, version: int, candidates: list[int], meta_json: str) -> None:
        conn = self._conn()
        conn.execute(f"INSERT INTO dc_meta_v{version} (id, meta, candidates) VALUES (1, ?, ?)",
                     (meta_json, dumps(candidates)))

    def _switch(self, version: int) -> list[int]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("INSERT OR REPLACE INTO dc_pointer (id, version) VALUES (1, ?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return [v for v in self.versions_present() if v < version]

    def _delete_version(self, version: int) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table in (f"dc_users_v{version}", f"dc_movies_v{version}", f"dc_meta_v{version}"):
                conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def versions_present(self) -> list[int]:
        rows = self._conn().execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'dc\\_%\\_v%' ESCAPE '\\'"
        ).fetchall()
        versions = set()
        for (name,) in rows:
            tail = name.rsplit("_v", 1)[-1]
            if tail.isdigit():
                versions.add(int(tail))
        return sorted(versions)


# ---------------------------------------------------------------- Redis

# Resolve the current version and fetch one user in one atomic step (one round trip).
_READ_USER_LUA = """
local v = redis.call('GET', KEYS[1])
if not v then return {false, false} end
local data = redis.call('HGET', ARGV[1] .. ':v' .. v .. ':users', ARGV[2])
return {v, data}
"""


class RedisStore(FeatureStore):
    """Feature store in a Redis server (redis-py), one key prefix per version.

    Keys (``P`` is the prefix, ``deepcrossing`` by default): ``P:current`` (the pointer), ``P:counter``, and per
    version ``P:vN:users`` / ``P:vN:movies`` (hashes id -> JSON), ``P:vN:meta`` (JSON) and ``P:vN:candidates``
    (JSON list). Short socket timeouts and no retries: when Redis is down every call fails within
    ``timeout`` seconds with :class:`StoreUnavailable`, and the connection pool reconnects by itself once
    Redis is back.

    Args:
        url: ``redis://host:port/db``.
        prefix: key prefix (lets several stores share a database).
        timeout: socket connect/read timeout in seconds.
    """

    def __init__(self, url: str, *, prefix: str = "deepcrossing", timeout: float = 0.5) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url = url
        self.prefix = prefix
        self._redis_errors = (redis.ConnectionError, redis.TimeoutError, OSError)
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            decode_responses=False,
        )
        self._read_user = self.client.register_script(_READ_USER_LUA)

    def _k(self, version: int, what: str) -> str:
        return f"{self.prefix}:v{version}:{what}"

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except self._redis_errors as exc:
            raise StoreUnavailable(f"Redis at {self.url} is unavailable: {exc}") from exc

    def current_version(self) -> int | None:
        raw = self._call(self.client.get, f"{self.prefix}:current")
        return None if raw is None else int(raw)

    def _resolve(self, version: int | None) -> int:
        if version is not None:
            return int(version)
        v = self.current_version()
        if v is None:
            raise StoreError(f"{self.url}: nothing published yet under prefix {self.prefix!r}; "
                             "run `deepcrossing publish`")
        return v

    def read_user(self, user_id: int) -> tuple[int, dict | None]:
        v, data = self._call(self._read_user, keys=[f"{self.prefix}:current"], args=[self.prefix, int(user_id)])
        if v is None:
            raise StoreError(f"{self.url}: nothing published yet under prefix {self.prefix!r}; "
                             "run `deepcrossing publish`")
        return int(v), (None if data is None else json.loads(data))

    def _get_many(self, kind: str, ids: Sequence[int], version: int | None) -> list[dict | None]:
        ids = [int(i) for i in ids]
        if not ids:
            return []
        v = self._resolve(version)
        pipe = self.client.pipeline(transaction=False)
        pipe.exists(self._k(v, "meta"))
        pipe.hmget(self._k(v, kind), ids)
        exists, values = self._call(pipe.execute)
        if not exists:
            raise VersionGone(f"{self.url}: version {v} is gone")
        return [None if d is None else json.loads(d) for d in values]

    def get_users(self, user_ids: Sequence[int], *, version: int | None = None) -> list[dict | None]:
        return self._get_many("users", user_ids, version)

    def get_movies(self, movie_ids: Sequence[int], *, version: int | None = None) -> list[dict | None]:
        return self._get_many("movies", movie_ids, version)

    def _iter(self, kind: str, version: int | None) -> Iterator[tuple[int, dict]]:
        v = self._resolve(version)
        cursor = 0
        while True:
            cursor, chunk = self._call(self.client.hscan, self._k(v, kind), cursor, count=5000)
            for key, data in chunk.items():
                yield int(key), json.loads(data)
            if cursor == 0:
                break

    def iter_movies(self, *, version: int | None = None) -> Iterator[tuple[int, dict]]:
        return self._iter("movies", version)

    def iter_users(self, *, version: int | None = None) -> Iterator[tuple[int, dict]]:
        return self._iter("users", version)

    def get_candidates(self, n: int | None = None, *, version: int | None = None) -> list[int]:
        v = self._resolve(version)
        raw = self._call(self.client.get, self._k(v, "candidates"))
        if raw is None:
            raise VersionGone(f"{self.url}: version {v} has no candidates")
        ids = json.loads(raw)
        return ids if n is None else ids[:n]

    def meta(self, *, version: int | None = None) -> dict:
        v = self._resolve(version)
        raw = self._call(self.client.get, self._k(v, "meta"))
        if raw is None:
            raise VersionGone(f"{self.url}: version {v} has no meta")
        return json.loads(raw)

    def ping(self) -> None:
        self._call(self.client.ping)

    def close(self) -> None:
        self.client.close()
        self.client.connection_pool.disconnect()

    # ---- writes ----
    def _new_version(self) -> int:
        version = int(self._call(self.client.incr, f"{self.prefix}:counter"))
        present = self.versions_present()
        if present and version <= max(present):  # counter lost (e.g. flushed) but data remains
            version = max(present) + 1
            self._call(self.client.set, f"{self.prefix}:counter", version)
        return version

    def _write_rows(self, version: int, kind: str, rows: list[tuple[int, str]]) -> None:
        self._call(self.client.hset, self._k(version, kind), mapping=dict(rows))

    def _write_candidates_and_meta(self, version: int, candidates: list[int], meta_json: str) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self._k(version, "candidates"), dumps(candidates))
        pipe.set(self._k(version, "meta"), meta_json)
        self._call(pipe.execute)

    def _switch(self, version: int) -> list[int]:
        pipe = self.client.pipeline(transaction=True)  # MULTI/EXEC
        pipe.set(f"{self.prefix}:current", version)
        self._call(pipe.execute)
        return [v for v in self.versions_present() if v < version]

    def _delete_version(self, version: int) -> None:
        keys = [self._k(version, w) for w in ("users", "movies", "meta", "candidates")]
        self._call(self.client.unlink, *keys)

    def versions_present(self) -> list[int]:
        versions = set()
        for key in self._call(lambda: list(self.client.scan_iter(match=f"{self.prefix}:v*:*", count=1000))):
            middle = key.decode().split(":")[-2]
            if middle.startswith("v") and middle[1:].isdigit():
                versions.add(int(middle[1:]))
        return sorted(versions)


def open_store(url: str) -> FeatureStore:
    """Open a store from its URL: ``sqlite:///path.db`` (relative or absolute path) or ``redis://host:port/db``.

    Example:
        >>> open_store("sqlite:///tmp/x.db").path.name
        'x.db'
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "sqlite":
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else parsed.path
        if not path:
            raise InputError(f"store URL {url!r} has no file path; use sqlite:///path/to/features.db",
                             field="store")
        # sqlite:///rel.db is relative; sqlite:////abs/path.db is absolute (SQLAlchemy's convention), and a
        # path that already exists as given is taken as is.
        return SQLiteStore(Path(path))
    if parsed.scheme in ("redis", "rediss", "unix"):
        return RedisStore(url)
    raise InputError(f"store URL {url!r} is not sqlite:///path.db or redis://host:port/db", field="store")
