"""The online feature store: one small interface (:mod:`.base`), two backends (:mod:`.sqlite`, the embedded
default, and :mod:`.redis`), opened from a URL by :func:`open_store`.

Readers resolve the version once per request: :meth:`FeatureStore.read_user` returns ``(ref, record)`` in one
atomic step (a Lua script on Redis, one read transaction on SQLite), and every later call of that request
passes ``version=ref``, so a request sees the old version or the new one, never a mix. If the version a
request resolved is deleted under it (a newer publish, a recreated store), :class:`VersionGone` is raised and
the caller retries.

Example:
    >>> store = open_store("sqlite:///tmp/features.db")            # doctest: +SKIP
    >>> ref = store.publish(users, movies, candidates, meta={})     # doctest: +SKIP
    >>> ref, record = store.read_user(42)                          # doctest: +SKIP
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from deepcrossing.serving.store.base import (
    FORMAT,
    FeatureStore,
    Record,
    Ref,
    StoreConfigError,
    StoreError,
    StoreUnavailable,
    VersionGone,
    clean,
    dumps,
)
from deepcrossing.serving.store.redis import RedisStore
from deepcrossing.serving.store.sqlite import SQLiteStore, transaction

__all__ = ["FORMAT", "FeatureStore", "RedisStore", "Record", "Ref", "SQLiteStore", "StoreConfigError",
           "StoreError", "StoreUnavailable", "VersionGone", "clean", "dumps", "open_store", "transaction"]

_USAGE = "use sqlite:///path/to/features.db or redis://host:port/db"


def open_store(url: str, *, readonly: bool = False, timeout: float = 0.5) -> FeatureStore:
    """Open a store from its URL: ``sqlite:///path.db`` (relative or absolute path) or ``redis://host:port/db``.

    Nothing is connected here, but the URL is checked whole: a bad scheme, port or database number, or a
    SQLite file in a missing folder, is a :class:`StoreConfigError` (an ``InputError``) naming the URL.

    Args:
        url: the store URL.
        readonly: for readers (the service, ``recommend``): a SQLite file that does not exist is reported,
            never created.
        timeout: Redis socket timeout in seconds.

    Example:
        >>> open_store("sqlite:////tmp/x.db").path.name
        'x.db'
        >>> open_store("redis://localhost:notaport/0")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        deepcrossing.serving.store.base.StoreConfigError: ...'redis://localhost:notaport/0' has a bad port ...
    """
    try:
        parsed = urllib.parse.urlparse(url)
    except ValueError as exc:
        raise StoreConfigError(f"store URL {url!r} cannot be parsed ({exc}); {_USAGE}", field="store") from exc
    if parsed.scheme == "sqlite":
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else parsed.path
        if not path:
            raise StoreConfigError(f"store URL {url!r} has no file path; {_USAGE}", field="store")
        # sqlite:///rel.db is relative; sqlite:////abs/path.db is absolute (SQLAlchemy's convention).
        file = Path(path)
        if not file.parent.is_dir():
            raise StoreConfigError(f"store URL {url!r}: folder {file.parent} does not exist", field="store")
        if file.is_dir():
            raise StoreConfigError(f"store URL {url!r}: {file} is a folder, not a database file", field="store")
        return SQLiteStore(file, readonly=readonly)
    if parsed.scheme in ("redis", "rediss"):
        try:
            parsed.port  # noqa: B018 - raises ValueError for a port that is not a number or out of range
        except ValueError as exc:
            raise StoreConfigError(f"store URL {url!r} has a bad port ({exc}); {_USAGE}", field="store") from exc
        db = parsed.path.strip("/")
        if db and not (db.isdigit() and int(db) < 2**31):
            raise StoreConfigError(f"store URL {url!r}: database {db!r} is not a number; {_USAGE}", field="store")
        return RedisStore(url, timeout=timeout)
    if parsed.scheme == "unix":
        return RedisStore(url, timeout=timeout)
    raise StoreConfigError(f"store URL {url!r} is not sqlite:///path.db or redis://host:port/db", field="store")
