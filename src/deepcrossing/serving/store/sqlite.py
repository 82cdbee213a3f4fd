"""The embedded backend: one SQLite file (WAL mode), one table set per version.

Tables: ``dc_current(id=1, version, uid)`` (the one pointer), ``dc_counter(id=1, last)``, and per version
``dc_users_{tag}(id, data)``, ``dc_movies_{tag}(id, data)``, ``dc_displays_{tag}(id, data)``,
``dc_blobs_{tag}(name, data BLOB)``, ``dc_meta_{tag}(id=1, meta, candidates)`` where
``tag`` is :attr:`Ref.tag` (number and uuid). Each thread gets its own connection; a request's reads run in
one read transaction or name their version, and WAL gives every read transaction a consistent snapshot
while a publisher writes.

The file's identity (device, inode) is checked on every call: when the file is deleted, the store says so
(:class:`StoreError`) instead of reading the deleted inode through open connections; when it is replaced
(deleted and published again, or moved over), every thread reopens it.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> store = SQLiteStore(folder / "f.db")
    >>> ref = store.publish([(1, {"features": {}})], [(7, {"features": {}})], [7])
    >>> store.read_user(1) == (ref, {"features": {}})
    True
    >>> reader = SQLiteStore(folder / "f.db", readonly=True)
    >>> reader.current() == ref
    True
    >>> SQLiteStore(folder / "none.db", readonly=True).current()
    Traceback (most recent call last):
    ...
    deepcrossing.serving.store.base.StoreError: ...none.db does not exist; run `deepcrossing publish`...
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from deepcrossing.errors import InputError
from deepcrossing.serving.store.base import FeatureStore, Record, Ref, StoreError, VersionGone, dumps

_KINDS = ("users", "movies", "meta", "displays", "blobs")


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, *, write: bool = False) -> Iterator[sqlite3.Connection]:
    """One SQLite transaction: ``BEGIN`` (``BEGIN IMMEDIATE`` to write), ``COMMIT``, or ``ROLLBACK`` on any
    error. The connection must be in autocommit mode (``isolation_level=None``).

    Example:
        >>> conn = sqlite3.connect(":memory:", isolation_level=None)
        >>> with transaction(conn, write=True):
        ...     _ = conn.execute("CREATE TABLE t (x)")
        >>> conn.execute("SELECT count(*) FROM t").fetchone()
        (0,)
    """
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class _Local(threading.local):
    conn: sqlite3.Connection | None = None
    generation = -1


class SQLiteStore(FeatureStore):
    """Feature store in one SQLite file (WAL mode), one table set per version.

    Args:
        path: database file.
        readonly: open read-only (the service, ``recommend``): a missing file is a :class:`StoreError`, never
            an empty database created by a reader.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.readonly = readonly
        self._local = _Local()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []
        self._identity: tuple[int, int] | None = None
        self._generation = 0

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def _conn(self) -> sqlite3.Connection:
        identity = self._file_identity()
        if identity is None:
            if self.readonly:
                # never read a deleted file through connections still open on it
                raise StoreError(f"{self.path} does not exist; run `deepcrossing publish` to create it")
            if not self.path.parent.is_dir():
                raise InputError(f"folder {self.path.parent} does not exist", path=self.path)
            with self._lock:  # a writer creates the file anew: drop connections to a deleted one
                if self._identity is not None:
                    self._generation += 1
                    self._identity = None
        elif identity != self._identity:
            with self._lock:  # the file is new, or was replaced: every thread reopens
                if identity != self._identity:
                    if self._identity is not None:
                        self._generation += 1
                    self._identity = identity
        local = self._local
        if local.conn is not None and local.generation == self._generation:
            return local.conn
        if local.conn is not None:
            self._forget(local.conn)
        conn = self._connect()
        local.conn, local.generation = conn, self._generation
        if identity is None:  # we just created the file
            self._identity = self._file_identity()
        with self._lock:
            self._all.append(conn)
        return conn

    def _connect(self) -> sqlite3.Connection:
        try:
            if self.readonly:
                uri = f"file:{urllib.parse.quote(str(self.path.absolute()))}?mode=ro"
                return sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._refuse_foreign(conn)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("CREATE TABLE IF NOT EXISTS dc_current (id INTEGER PRIMARY KEY CHECK (id = 1), "
                         "version INTEGER NOT NULL, uid TEXT NOT NULL)")
            conn.execute("CREATE TABLE IF NOT EXISTS dc_counter (id INTEGER PRIMARY KEY CHECK (id = 1), "
                         "last INTEGER NOT NULL)")
            return conn
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot open the store ({exc})") from exc

    def _refuse_foreign(self, conn: sqlite3.Connection) -> None:
        """A writer adds tables and switches the file to WAL: only in a store of ours or a new, empty file,
        never in someone's own database (a table whose name is not ``dc_*``)."""
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                                            "AND name NOT LIKE 'dc\\_%' ESCAPE '\\' "
                                            "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name")]
        if names:
            conn.close()
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise InputError(f"is a database that is not a deepcrossing feature store (it holds {shown}); "
                             "give a new file for the store", path=self.path, field="store")

    def _forget(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            if conn in self._all:
                self._all.remove(conn)
        conn.close()

    def _run(self, conn: sqlite3.Connection, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """One statement; a missing version table is :class:`VersionGone`, other failures :class:`StoreError`."""
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                raise VersionGone(f"{self.url}: the version read is gone ({exc})") from exc
            raise StoreError(f"{self.url}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.url}: {exc}") from exc

    def _pointer(self, conn: sqlite3.Connection) -> Ref | None:
        try:
            row = conn.execute("SELECT version, uid FROM dc_current WHERE id = 1").fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # a read-only view of a store nobody published to
                return None
            raise StoreError(f"{self.url}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.url}: {exc}") from exc
        return None if row is None else Ref(int(row[0]), str(row[1]))

    def current(self) -> Ref | None:
        return self._pointer(self._conn())

    def exists(self, ref: Ref) -> bool:
        rows = self._run(self._conn(), "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                         (f"dc_meta_{ref.tag}",))
        return bool(rows)

    def _select(self, version: Ref | None, sql: str, args: Sequence[Any] = ()) -> tuple[Ref, list[Any]]:
        """Rows of ``sql`` (``{t}`` stands for the version's tag) from ``version`` or the current one."""
        conn = self._conn()
        if version is not None:  # one statement is a consistent read on its own: no transaction round trips
            return version, self._run(conn, sql.format(t=version.tag), args)
        with transaction(conn):  # pointer and rows from the same snapshot
            ref = self._pointer(conn)
            if ref is None:
                raise self.nothing_published()
            return ref, self._run(conn, sql.format(t=ref.tag), args)

    def read_user(self, user_id: int) -> tuple[Ref, Record | None]:
        ref, rows = self._select(None, "SELECT data FROM dc_users_{t} WHERE id = ?", (int(user_id),))
        return ref, (json.loads(rows[0][0]) if rows else None)

    def _get_many(self, kind: str, ids: Sequence[int], version: Ref | None) -> list[Record | None]:
        keys = [int(i) for i in ids]
        if not keys:
            return []
        found: dict[int, Record] = {}
        for start in range(0, len(keys), 900):  # SQLite's bound-parameter limit
            chunk = keys[start:start + 900]
            marks = ",".join("?" * len(chunk))
            version, rows = self._select(version, f"SELECT id, data FROM dc_{kind}_{{t}} WHERE id IN ({marks})",
                                         chunk)
            found.update((int(i), json.loads(d)) for i, d in rows)
        return [found.get(i) for i in keys]

    def get_users(self, user_ids: Sequence[int], *, version: Ref | None = None) -> list[Record | None]:
        return self._get_many("users", user_ids, version)

    def get_movies(self, movie_ids: Sequence[int], *, version: Ref | None = None) -> list[Record | None]:
        return self._get_many("movies", movie_ids, version)

    def get_displays(self, user_ids: Sequence[int], *, version: Ref) -> list[Record | None]:
        return self._get_many("displays", user_ids, version)

    def iter_displays(self, *, version: Ref) -> Iterator[tuple[int, Record]]:
        return self._iter("displays", version)

    def _read_blob(self, ref: Ref, name: str) -> bytes | None:
        rows = self._run(self._conn(), f"SELECT data FROM dc_blobs_{ref.tag} WHERE name = ?", (name,))
        return bytes(rows[0][0]) if rows else None

    def _iter(self, kind: str, version: Ref | None) -> Iterator[tuple[int, Record]]:
        _, rows = self._select(version, f"SELECT id, data FROM dc_{kind}_{{t}}")
        return ((int(i), json.loads(d)) for i, d in rows)

    def iter_movies(self, *, version: Ref | None = None) -> Iterator[tuple[int, Record]]:
        return self._iter("movies", version)

    def iter_users(self, *, version: Ref | None = None) -> Iterator[tuple[int, Record]]:
        return self._iter("users", version)

    def _meta_row(self, version: Ref | None, column: str) -> tuple[Ref, Any]:
        ref, rows = self._select(version, f"SELECT {column} FROM dc_meta_{{t}} WHERE id = 1")
        if not rows:
            raise VersionGone(f"{self.url}: {ref} has no meta")
        return ref, json.loads(rows[0][0])

    def get_candidates(self, n: int | None = None, *, version: Ref | None = None) -> list[int]:
        ids: list[int] = self._meta_row(version, "candidates")[1]
        return ids if n is None else ids[:n]

    def meta(self, *, version: Ref | None = None) -> Record:
        meta: Record = self._meta_row(version, "meta")[1]
        return meta

    def ping(self) -> None:
        self._run(self._conn(), "SELECT 1")

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.ProgrammingError):
                    conn.close()
            self._all.clear()
        self._local = _Local()

    # ---- writes ----
    def _new_version(self) -> Ref:
        conn = self._conn()
        with transaction(conn, write=True):
            row = conn.execute("SELECT last FROM dc_counter WHERE id = 1").fetchone()
            ref = Ref(max([row[0] if row else 0, *self.versions_present()]) + 1, uuid.uuid4().hex)
            conn.execute("INSERT OR REPLACE INTO dc_counter (id, last) VALUES (1, ?)", (ref.version,))
            for kind in ("users", "movies", "displays"):
                conn.execute(f"CREATE TABLE dc_{kind}_{ref.tag} (id INTEGER PRIMARY KEY, data TEXT NOT NULL)")
            conn.execute(f"CREATE TABLE dc_blobs_{ref.tag} (name TEXT PRIMARY KEY, data BLOB NOT NULL)")
            conn.execute(f"CREATE TABLE dc_meta_{ref.tag} (id INTEGER PRIMARY KEY CHECK (id = 1), "
                         "meta TEXT NOT NULL, candidates TEXT NOT NULL)")
        return ref

    def _write_rows(self, ref: Ref, kind: str, rows: list[tuple[int, str]]) -> None:
        conn = self._conn()
        with transaction(conn, write=True):
            conn.executemany(f"INSERT INTO dc_{kind}_{ref.tag} (id, data) VALUES (?, ?)", rows)

    def _write_blob(self, ref: Ref, name: str, data: bytes) -> None:
        conn = self._conn()
        with transaction(conn, write=True):
            conn.execute(f"INSERT INTO dc_blobs_{ref.tag} (name, data) VALUES (?, ?)", (name, sqlite3.Binary(data)))

    def _write_candidates_and_meta(self, ref: Ref, candidates: list[int], meta_json: str) -> None:
        conn = self._conn()
        with transaction(conn, write=True):
            conn.execute(f"INSERT INTO dc_meta_{ref.tag} (id, meta, candidates) VALUES (1, ?, ?)",
                         (meta_json, dumps(candidates)))

    def _switch(self, ref: Ref) -> list[Ref]:
        conn = self._conn()
        with transaction(conn, write=True):
            conn.execute("INSERT OR REPLACE INTO dc_current (id, version, uid) VALUES (1, ?, ?)",
                         (ref.version, ref.uid))
        return [old for old in self.refs_present() if old.version < ref.version]

    def _delete_version(self, ref: Ref) -> None:
        conn = self._conn()
        with transaction(conn, write=True):
            for kind in _KINDS:
                conn.execute(f"DROP TABLE IF EXISTS dc_{kind}_{ref.tag}")

    def refs_present(self) -> list[Ref]:
        rows = self._run(self._conn(), "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'dc\\_%'"
                                       " ESCAPE '\\'")
        refs = set()
        for (name,) in rows:
            kind, _, tag = name[3:].partition("_")
            ref = Ref.parse(tag)
            if kind in _KINDS and ref is not None:
                refs.add(ref)
        return sorted(refs)
