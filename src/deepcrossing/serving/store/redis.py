"""The shared backend: a Redis server (redis-py), one key prefix per version.

Keys (``P`` is the prefix, ``deepcrossing`` by default): ``P:current`` (the pointer: a :attr:`Ref.tag`),
``P:counter``, and per version ``P:{tag}:users`` / ``P:{tag}:movies`` / ``P:{tag}:displays`` (hashes id ->
JSON), ``P:{tag}:blobs`` (hash name -> bytes), ``P:{tag}:meta`` (JSON) and ``P:{tag}:candidates`` (JSON list).
A flushed and republished Redis holds new tags (new uuids), so
a reader that resolved an old version gets :class:`VersionGone`, never the new version's records.

Short socket timeouts and no retries: when Redis is down or hung every call fails within ``timeout`` seconds
with :class:`StoreUnavailable`, and the connection pool reconnects by itself once Redis is back.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from deepcrossing.serving.store.base import (
    FeatureStore,
    Record,
    Ref,
    StoreConfigError,
    StoreError,
    StoreUnavailable,
    VersionGone,
    dumps,
)

# Resolve the current version and fetch one user in one atomic step (one round trip).
_READ_USER_LUA = """
local tag = redis.call('GET', KEYS[1])
if not tag then return {false, false} end
local data = redis.call('HGET', ARGV[1] .. ':' .. tag .. ':users', ARGV[2])
return {tag, data}
"""
_WHAT = ("users", "movies", "meta", "candidates", "displays", "blobs")


class RedisStore(FeatureStore):
    """Feature store in a Redis server.

    Args:
        url: ``redis://host:port/db`` (validated by :func:`deepcrossing.serving.store.open_store`).
        prefix: key prefix (lets several stores share a database).
        timeout: socket connect/read timeout in seconds.
    """

    def __init__(self, url: str, *, prefix: str = "deepcrossing", timeout: float = 0.5) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url = url
        self.prefix = prefix
        self._redis = redis
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            decode_responses=False,
        )
        self._read_user = self.client.register_script(_READ_USER_LUA)

    def _k(self, ref: Ref, what: str) -> str:
        return f"{self.prefix}:{ref.tag}:{what}"

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        redis = self._redis
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            if "DB index" in str(exc) or "Invalid Database" in str(exc):
                raise StoreConfigError(f"Redis at {self.url} refuses the database number ({exc})",
                                       field="store") from exc
            raise StoreUnavailable(f"Redis at {self.url} is unavailable: {exc}") from exc
        except redis.ResponseError as exc:
            if "DB index" in str(exc):
                raise StoreConfigError(f"Redis at {self.url} refuses the database number ({exc})",
                                       field="store") from exc
            raise StoreError(f"Redis at {self.url}: {exc}") from exc

    def _parse(self, raw: bytes | None) -> Ref | None:
        if raw is None:
            return None
        ref = Ref.parse(raw.decode(errors="replace"))
        if ref is None:
            raise StoreError(f"{self.url}: {self.prefix}:current holds {raw[:40]!r}, not a version of this "
                             "format (published by an older deepcrossing?); publish again")
        return ref

    def current(self) -> Ref | None:
        return self._parse(self._call(self.client.get, f"{self.prefix}:current"))

    def exists(self, ref: Ref) -> bool:
        return bool(self._call(self.client.exists, self._k(ref, "meta")))

    def _resolve(self, version: Ref | None) -> Ref:
        if version is not None:
            return version
        ref = self.current()
        if ref is None:
            raise self.nothing_published()
        return ref

    def read_user(self, user_id: int) -> tuple[Ref, Record | None]:
        tag, data = self._call(self._read_user, keys=[f"{self.prefix}:current"], args=[self.prefix, int(user_id)])
        ref = self._parse(tag)
        if ref is None:
            raise self.nothing_published()
        return ref, (None if data is None else json.loads(data))

    def _get_many(self, kind: str, ids: Sequence[int], version: Ref | None) -> list[Record | None]:
        keys = [int(i) for i in ids]
        if not keys:
            return []
        ref = self._resolve(version)
        pipe = self.client.pipeline(transaction=False)
        pipe.exists(self._k(ref, "meta"))
        pipe.hmget(self._k(ref, kind), keys)
        exists, values = self._call(pipe.execute)
        if not exists:
            raise VersionGone(f"{self.url}: {ref} is gone")
        return [None if d is None else json.loads(d) for d in values]

    def get_users(self, user_ids: Sequence[int], *, version: Ref | None = None) -> list[Record | None]:
        return self._get_many("users", user_ids, version)

    def get_movies(self, movie_ids: Sequence[int], *, version: Ref | None = None) -> list[Record | None]:
        return self._get_many("movies", movie_ids, version)

    def get_displays(self, user_ids: Sequence[int], *, version: Ref) -> list[Record | None]:
        return self._get_many("displays", user_ids, version)

    def iter_displays(self, *, version: Ref) -> Iterator[tuple[int, Record]]:
        return self._iter("displays", version)

    def _read_blob(self, ref: Ref, name: str) -> bytes | None:
        data: bytes | None = self._call(self.client.hget, self._k(ref, "blobs"), name)
        return data

    def _iter(self, kind: str, version: Ref | None) -> Iterator[tuple[int, Record]]:
        ref = self._resolve(version)

        def scan() -> Iterator[tuple[int, Record]]:  # streamed: a whole version never sits in memory twice
            cursor = 0
            while True:
                cursor, chunk = self._call(self.client.hscan, self._k(ref, kind), cursor, count=5000)
                for key, data in chunk.items():
                    yield int(key), json.loads(data)
                if cursor == 0:
                    break
            if not self.exists(ref):  # deleted while we scanned: what we read may be partial
                raise VersionGone(f"{self.url}: {ref} is gone")

        return scan()

    def iter_movies(self, *, version: Ref | None = None) -> Iterator[tuple[int, Record]]:
        return self._iter("movies", version)

    def iter_users(self, *, version: Ref | None = None) -> Iterator[tuple[int, Record]]:
        return self._iter("users", version)

    def _get_json(self, version: Ref | None, what: str) -> Any:
        ref = self._resolve(version)
        raw = self._call(self.client.get, self._k(ref, what))
        if raw is None:
            raise VersionGone(f"{self.url}: {ref} has no {what}")
        return json.loads(raw)

    def get_candidates(self, n: int | None = None, *, version: Ref | None = None) -> list[int]:
        ids: list[int] = self._get_json(version, "candidates")
        return ids if n is None else ids[:n]

    def meta(self, *, version: Ref | None = None) -> Record:
        meta: Record = self._get_json(version, "meta")
        return meta

    def ping(self) -> None:
        self._call(self.client.ping)

    def close(self) -> None:
        self.client.close()
        self.client.connection_pool.disconnect()

    # ---- writes ----
    def _new_version(self) -> Ref:
        version = int(self._call(self.client.incr, f"{self.prefix}:counter"))
        present = self.versions_present()
        if present and version <= max(present):  # counter lost (e.g. deleted) but data remains
            version = max(present) + 1
            self._call(self.client.set, f"{self.prefix}:counter", version)
        return Ref(version, uuid.uuid4().hex)

    def _write_rows(self, ref: Ref, kind: str, rows: list[tuple[int, str]]) -> None:
        self._call(self.client.hset, self._k(ref, kind), mapping=dict(rows))

    def _write_blob(self, ref: Ref, name: str, data: bytes) -> None:
        self._call(self.client.hset, self._k(ref, "blobs"), name, data)

    def _write_candidates_and_meta(self, ref: Ref, candidates: list[int], meta_json: str) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self._k(ref, "candidates"), dumps(candidates))
        pipe.set(self._k(ref, "meta"), meta_json)
        self._call(pipe.execute)

    def _switch(self, ref: Ref) -> list[Ref]:
        pipe = self.client.pipeline(transaction=True)  # MULTI/EXEC
        pipe.set(f"{self.prefix}:current", ref.tag)
        self._call(pipe.execute)
        return [old for old in self.refs_present() if old.version < ref.version]

    def _delete_version(self, ref: Ref) -> None:
        self._call(self.client.unlink, *(self._k(ref, w) for w in _WHAT))

    def refs_present(self) -> list[Ref]:
        keys = self._call(lambda: list(self.client.scan_iter(match=f"{self.prefix}:v*:*", count=1000)))
        refs = set()
        for key in keys:
            parts = key.decode(errors="replace").split(":")
            ref = Ref.parse(parts[-2]) if len(parts) >= 3 else None
            if ref is not None and parts[-1] in _WHAT:
                refs.add(ref)
        return sorted(refs)
