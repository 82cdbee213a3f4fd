"""The ranking engine behind the service and ``deepcrossing recommend``: model + store version, no HTTP.

A :class:`State` is immutable: the loaded model and its :class:`Scorer`, plus a :class:`Snapshot` of one store
version (movie records, candidate rows and the movie-side partial products). The engine swaps whole states
atomically (one attribute assignment): when the store publishes a new version (:meth:`Engine.refresh`, polled
by the service) and when a new model folder is loaded (:meth:`Engine.reload`). A request takes the state once
and uses it to the end, so it finishes on the model and store version it started with; it reads the user
from exactly that store version (by its :class:`~deepcrossing.serving.store.Ref`: number *and* unique id),
so user and movie features never come from two versions, nor from two lives of a recreated store.

When the store can no longer serve the version held (Redis flushed, the SQLite file deleted), the engine
drops its snapshot and says why (:attr:`Engine.last_error`); requests then fail with :class:`StoreError`
(the service answers 503) until a version is published again.

The store read of a request (:meth:`Engine.fetch_user`) is separate from the scoring, so that the service can
run the read in a bounded thread hand-off and score on the event loop.

Example:
    >>> engine = Engine.open("model", "sqlite:///model/features.db")   # doctest: +SKIP
    >>> engine.recommend(42, k=10)["items"][0]["title"]                  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import torch

from deepcrossing.errors import InputError
from deepcrossing.serving.channels import RecallFolder
from deepcrossing.serving.models import check_finite, load_model_dir, model_fingerprint
from deepcrossing.serving.recall import BUILTIN, Plan, default_plan, memo_key, merged_rows, recall_rows, \
    sorted_contains, user_memo
from deepcrossing.serving.scorer import Scorer, UserPart, join_user_movies
from deepcrossing.serving.snapshot import Snapshot, build_snapshot, empty_features, rescore_snapshot
from deepcrossing.serving.store import FeatureStore, Record, StoreError, StoreUnavailable, VersionGone, open_store

__all__ = ["Engine", "State", "UserRead", "check_id", "empty_features", "model_fingerprint", "sorted_contains"]

USER_CACHE_SIZE = 100_000  # user partials kept per state (H floats each); cleared when full
INT64 = (-(2**63), 2**63 - 1)
RETRY_S = 0.2  # with no store version to serve, requests look for one at most this often


def check_id(value: int, what: str) -> int:
    """``value`` as an int when it fits a signed 64-bit id; :class:`InputError` otherwise.

    Example:
        >>> check_id(7, "user")
        7
        >>> check_id(2**63, "user")
        Traceback (most recent call last):
        ...
        deepcrossing.errors.InputError: field user: 9223372036854775808 is not a 64-bit integer id
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not INT64[0] <= value <= INT64[1]:
        raise InputError(f"{str(value)[:40]} is not a 64-bit integer id", field=what)
    return int(value)


def _sigmoid(x: torch.Tensor) -> np.ndarray:
    out: np.ndarray = torch.sigmoid(x).numpy().astype(np.float64)
    return out


@dataclass(frozen=True)
class State:
    """What one request uses from start to end: a model and a store snapshot.

    ``user_parts`` caches each user's per-request partial (:class:`UserPart`) for this (model, store version
    ref): a version's records never change, so the cache is exact, and it dies with the state on a reload or
    a publish. The record itself is still read from the store on every request. ``user_vectors`` caches each
    user's recall vectors by channel the same way (:func:`~deepcrossing.serving.recall.user_query`).
    """

    scorer: Scorer
    model_dir: Path
    model_version: str
    snapshot: Snapshot | None
    user_parts: dict[int, UserPart] = field(default_factory=dict, repr=False, compare=False)
    user_vectors: dict[int, dict[str, Any]] = field(default_factory=dict, repr=False, compare=False)


class UserRead(NamedTuple):
    """One request's store read: the state it was read for and the user's record (``None``: unknown user)."""

    state: State
    snapshot: Snapshot
    record: Record | None


class Engine:
    """Model + store, swapped atomically; the service's and ``recommend``'s one entry point.

    Args:
        store: the feature store.
        verify: re-check each new store version's id, counts and checksum before serving it.
        loader: model folder -> loaded model (default :func:`deepcrossing.load`).
        backend: scorer backend, ``torch`` or ``onnx`` (see :class:`Scorer`).
        user_cache: users whose partials are kept per state: the user part (~0.8 ms), the recall's user
            vectors and merged list (:func:`~deepcrossing.serving.recall.user_memo`); 0: computed afresh.
        recall: the recall folder whose channels this service answers (``serve --recall``); a store version
            built from another one is not served.
    """

    def __init__(self, store: FeatureStore, *, verify: bool = True,
                 loader: Callable[[Path], Any] | None = None, backend: str = "torch",
                 user_cache: int = USER_CACHE_SIZE, recall: RecallFolder | None = None) -> None:
        self.recall = recall
        self.store = store
        self.backend = backend
        self.user_cache = user_cache
        self.verify = verify
        self.loader = loader or load_model_dir
        self.state: State | None = None
        self.last_error: str | None = None
        self._lock = threading.Lock()  # one swap at a time (store refresh or model load)
        self._retry_at = 0.0

    @classmethod
    def open(cls, model_dir: str | Path, store: FeatureStore | str, *, verify: bool = True,
             loader: Callable[[Path], Any] | None = None, backend: str = "torch",
             user_cache: int = USER_CACHE_SIZE, recall: RecallFolder | None = None) -> Engine:
        """Load the model and the current store version (raises :class:`StoreError` when the store has nothing
        published; a store URL is opened read-only, so a missing SQLite file is reported, not created)."""
        engine = cls(open_store(store, readonly=True) if isinstance(store, str) else store, verify=verify,
                     loader=loader, backend=backend, user_cache=user_cache, recall=recall)
        engine.load_model(model_dir)
        engine.refresh(strict=True)
        return engine

    # ---- loading ----
    def load_model(self, model_dir: str | Path) -> State:
        """Load a model folder and rebuild the snapshot for it (from memory), then swap it in (in-flight
        requests finish on the state they took).

        Raises:
            InputError: not a model folder, or weights that hold NaN or inf (nothing changes).
        """
        model_dir = Path(model_dir)
        loaded = self.loader(model_dir)
        check_finite(loaded, model_dir)
        scorer = Scorer(loaded, backend=self.backend)
        fingerprint = model_fingerprint(model_dir)
        with self._lock:
            old = self.state
            snapshot = None if old is None or old.snapshot is None else \
                rescore_snapshot(old.snapshot, scorer, self.store)   # (reads the store only for item-CF data)
            state = State(scorer, model_dir, fingerprint, snapshot)
            self.state = state
        return state

    reload = load_model

    def _drop(self, reason: str) -> None:
        """Stop serving the snapshot held: the store can no longer serve it."""
        state = self.state
        if state is not None and state.snapshot is not None:
            self.state = replace(state, snapshot=None, user_parts={}, user_vectors={})
        self.last_error = reason

    def refresh(self, *, strict: bool = False) -> bool:
        """Adopt the store's current version if it is not the one served (by ref); True when swapped.

        Args:
            strict: raise :class:`StoreError` when nothing is published (else just stop serving).

        Raises:
            StoreUnavailable: the store cannot be reached (the snapshot held keeps serving);
            StoreError: the store file is gone (the snapshot is dropped) or the new version fails
                verification (the snapshot held is kept).
        """
        if self.state is None:
            raise RuntimeError("load a model first")
        with self._lock:
            try:
                ref = self.store.current()
            except StoreError as exc:
                self._drop(str(exc))
                raise
            if ref is None:
                error = self.store.nothing_published()
                self._drop(str(error))
                if strict:
                    raise error
                return False
            state = self.state
            if state.snapshot is not None and state.snapshot.ref == ref:
                return False
            snapshot = build_snapshot(self.store, state.scorer, ref, verify=self.verify,
                                      model_version=state.model_version, recall=self.recall)
            self.state = State(state.scorer, state.model_dir, state.model_version, snapshot)
            self.last_error = None
            return True

    def readiness(self) -> str | None:
        """Why the engine cannot serve right now, or ``None`` when it can (one cheap store call)."""
        state = self.state
        if state is None or state.snapshot is None:
            return self.last_error or "no store version loaded yet"
        try:
            if not self.store.exists(state.snapshot.ref):
                return (f"{self.store.url}: {state.snapshot.ref} is gone (a newer publish, or the store was "
                        "recreated or replaced); loading the current version")
        except (StoreError, StoreUnavailable) as exc:
            return str(exc)
        return None

    # ---- requests ----
    def channel_names(self) -> tuple[str, ...]:
        """The recall channels a request may name now: the served version's vector channels + built-ins."""
        state = self.state
        vectors = () if state is None or state.snapshot is None else tuple(state.snapshot.channels)
        return (*vectors, *BUILTIN)

    def _take(self) -> tuple[State, Snapshot]:
        state = self.state
        if state is None or state.snapshot is None:
            raise StoreError(self.last_error or "the service has no store version loaded yet")
        return state, state.snapshot

    def fetch_user(self, user_id: int) -> UserRead:
        """The state and the user's record from exactly that state's store version (when that version is
        gone, adopt the current one and read again, once). This is a request's only store call."""
        user_id = check_id(user_id, "user_id")
        if self.state is not None and self.state.snapshot is None and time.monotonic() >= self._retry_at:
            self._retry_at = time.monotonic() + RETRY_S  # nothing served: look again, at most every RETRY_S
            try:
                self.refresh()
            except (StoreError, StoreUnavailable) as exc:
                self.last_error = str(exc)
        for attempt in range(2):
            state, snap = self._take()
            try:
                return UserRead(state, snap, self.store.get_user(user_id, version=snap.ref))
            except VersionGone:
                if attempt:
                    raise
                self.refresh()
        raise AssertionError("unreachable")

    @staticmethod
    def _user_table(snap: Snapshot, user_id: int, record: Record | None) -> pa.Table:
        features = record["features"] if record else empty_features(snap.user_schema, "userId", user_id)
        return pa.Table.from_pylist([features], schema=snap.user_schema)

    def _user_part(self, read: UserRead, user_id: int, user_table: Callable[[], pa.Table] | None = None
                   ) -> UserPart:
        """The user's partial, from the state's cache (``user_id``: its key, see ``memo_key``) or computed from
        the record (user columns only; ``user_table``: the request's one-row user table, when it has one)."""
        parts = read.state.user_parts
        part = parts.get(user_id)
        if part is None:
            table = self._user_table(read.snapshot, user_id, read.record) if user_table is None else user_table()
            part = read.state.scorer.user(table, (read.record or {}).get("history"))
            if self.user_cache:
                if len(parts) >= self.user_cache:
                    parts.clear()
                parts[user_id] = part
        return part

    @staticmethod
    def _movie_out(snap: Snapshot, row: int, score: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"movieId": int(snap.movie_ids[row]), "title": snap.titles[row],
                               "genres": snap.genres[row], "year": snap.years[row]}
        if score is not None:
            out["score"] = round(float(score), 6)
        return out

    def _read(self, user_id: int, fetched: UserRead | None) -> UserRead:
        return self.fetch_user(user_id) if fetched is None else fetched

    def recommend(self, user_id: int, k: int = 10, candidates: int = 800, *, plain: bool = False,
                  fetched: UserRead | None = None, channels: Plan | None = None) -> dict[str, Any]:
        """Top ``k`` of the recalled candidates (:mod:`~deepcrossing.serving.recall`) ranked by the model.

        Args:
            user_id: any 64-bit integer; unknown users get cold-start features.
            k: list length (>= 1).
            candidates: how many movies to recall when ``channels`` is not given (>= 1): the default plan
                over the version's channels (the recall folder's validated merge when the version holds its
                channels, :func:`~deepcrossing.serving.recall.merged_rows`, else
                :func:`~deepcrossing.serving.recall.default_plan`); a version
                without vector channels ranks the ``candidates`` most popular movies minus those rated.
            plain: use the full forward pass per candidate instead of the split fast path.
            fetched: the user's record read earlier by :meth:`fetch_user` (read here when ``None``).
            channels: ``(channel, size)`` pairs (:func:`~deepcrossing.serving.recall.parse_channels`).

        Returns:
            ``{"userId", "known", "storeVersion", "modelVersion", "candidates", "channels", "items": [{movieId,
            title, genres, year, score, channel}]}``.
        """
        if k < 1 or candidates < 1:
            raise InputError(f"k and candidates must be >= 1, not {k} and {candidates}", field="k")
        read = self._read(user_id, fetched)
        state, snap, record = read
        user_table = functools.cache(lambda: self._user_table(snap, user_id, record))   # once per request
        key = memo_key(user_id, record, state.scorer.request_columns, snap.channels)   # unknown users: one memo
        if channels is None and not snap.channels:   # today's list: the popular candidates, minus rated
            plan: Plan = (("popularity", candidates),)
            rows = snap.candidate_rows[:candidates]
            if record and record.get("rated"):
                rows = rows[~sorted_contains(np.asarray(record["rated"], dtype=np.int64), snap.movie_ids[rows])]
            labels = np.zeros(len(rows), dtype=np.int8)
        elif channels is None and snap.merge:        # the recall folder's validated merge: served = measured
            rows, labels, plan = merged_rows(snap, user_id, record, candidates, user_table,
                                             user_memo(state.user_vectors, key, self.user_cache))
        else:
            plan = channels or default_plan(tuple(snap.channels), candidates)
            rows, labels = recall_rows(snap, record, plan, user_table,
                                       user_memo(state.user_vectors, key, self.user_cache))
        if len(rows) == 0:
            scores = np.zeros(0)
        elif plain:
            logits = state.scorer.plain(join_user_movies(user_table(), snap.movie_table.take(pa.array(rows)),
                                                         history=(record or {}).get("history"), itemcf=snap.itemcf))
            scores = _sigmoid(logits)
        else:
            scores = _sigmoid(state.scorer.fast(self._user_part(read, key, user_table), snap.items, rows))
        k = min(k, len(rows))
        top = np.argpartition(-scores, k - 1)[:k] if 0 < k < len(rows) else np.arange(len(rows))
        top = top[np.lexsort((snap.movie_ids[rows[top]], -scores[top]))][:k]
        return {"userId": int(user_id), "known": record is not None, "storeVersion": snap.version,
                "modelVersion": state.model_version, "candidates": int(len(rows)),
                "channels": {name: int((labels == j).sum()) for j, (name, _) in enumerate(plan)},
                "items": [self._movie_out(snap, int(rows[i]), scores[i]) | {"channel": plan[labels[i]][0]}
                          for i in top]}

    def score(self, user_id: int, movie_ids: list[int], *, fetched: UserRead | None = None) -> dict[str, Any]:
        """Scores of the user against ``movie_ids``, in the given order; unknown movies get the OOV row."""
        movie_ids = [check_id(m, "movie_ids") for m in movie_ids]
        read = self._read(user_id, fetched)
        state, snap, record = read
        user_part = self._user_part(read, user_id)
        rows = np.array([snap.row_of.get(m, -1) for m in movie_ids], dtype=np.int64)
        scores = np.empty(len(rows))
        known = rows >= 0
        if known.any():
            scores[known] = _sigmoid(state.scorer.fast(user_part, snap.items, rows[known]))
        if (~known).any():
            unknown = [m for m, ok in zip(movie_ids, known) if not ok]
            movies = pa.Table.from_pylist([empty_features(snap.movie_schema, "movieId", m) for m in unknown],
                                          schema=snap.movie_schema)
            extra = state.scorer.items(movies, snap.itemcf)
            scores[~known] = _sigmoid(state.scorer.fast(user_part, extra, np.arange(len(unknown))))
        return {"userId": int(user_id), "known": record is not None, "storeVersion": snap.version,
                "modelVersion": state.model_version,
                "scores": [round(float(s), 6) for s in scores], "knownMovies": [bool(x) for x in known]}

    def user_info(self, user_id: int, *, fetched: UserRead | None = None) -> dict[str, Any]:
        """The user's features and recent history (with titles); cold-start features when unknown."""
        _, snap, record = self._read(user_id, fetched)
        history = []
        for movie_id, rating, ts in (record or {}).get("history", []):
            row = snap.row_of.get(int(movie_id))
            entry = self._movie_out(snap, row) if row is not None else {"movieId": int(movie_id), "title": None,
                                                                         "genres": [], "year": None}
            history.append(entry | {"rating": rating, "timestamp": ts})
        features = record["features"] if record else empty_features(snap.user_schema, "userId", user_id)
        return {"userId": int(user_id), "known": record is not None, "storeVersion": snap.version,
                "features": features, "history": history,
                "ratedCount": len((record or {}).get("rated", []))}

    def movie_info(self, movie_id: int, neighbours: int = 10) -> dict[str, Any] | None:
        """The movie's record and its nearest movies by the cosine of their item-side partial vectors
        (movies the model treats alike), among the candidates; ``None`` when unknown."""
        _, snap = self._take()
        row = snap.row_of.get(check_id(movie_id, "movie_id"))
        if row is None:
            return None
        pool = snap.candidate_rows[snap.candidate_rows != row]
        sims = (snap.unit[torch.as_tensor(pool)] @ snap.unit[row]).numpy()
        n = min(max(neighbours, 0), len(pool))
        top = np.argsort(-sims, kind="stable")[:n]
        features = snap.movie_table.slice(row, 1).to_pylist()[0]
        features = {k: (dict(v) if isinstance(v, list) and v and isinstance(v[0], tuple) else v)
                    for k, v in features.items()}
        return self._movie_out(snap, row) | {
            "storeVersion": snap.version, "features": features,
            "neighbours": [self._movie_out(snap, int(pool[i])) | {"similarity": round(float(sims[i]), 6)}
                           for i in top]}

    def info(self) -> dict[str, Any]:
        """Model and store versions being served (``storeId``: the served version's unique id)."""
        state = self.state
        snap = None if state is None else state.snapshot
        return {"modelDir": None if state is None else str(state.model_dir),
                "modelVersion": None if state is None else state.model_version,
                "storeVersion": None if snap is None else snap.version,
                "storeId": None if snap is None else snap.ref.uid,
                "store": self.store.url,
                "storePublishedAt": None if snap is None else snap.meta.get("published_at")}
