"""The ranking engine behind the service and ``deepcrossing recommend``: model + store version, no HTTP.

A :class:`State` is immutable: the loaded model and its :class:`Scorer`, plus a :class:`Snapshot` of one store
version (movie records, candidate rows and the movie-side partial products). The engine swaps whole states
atomically (one attribute assignment): when the store publishes a new version (:meth:`Engine.refresh`, polled
by the service) and when a new model folder is loaded (:meth:`Engine.reload`). A request takes the state once
and uses it to the end, so it finishes on the model and store version it started with; it reads the user
from exactly that store version, so user and movie features never come from two versions.

Example:
    >>> engine = Engine.open("model", "sqlite:///model/features.db")   # doctest: +SKIP
    >>> engine.recommend(42, k=10)["items"][0]["title"]                  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from deepcrossing.features.columns import cold_features, side_of
from deepcrossing.hashing import files_sha256
from deepcrossing.serving.publish import schema_from_json
from deepcrossing.serving.scorer import ItemPart, Scorer, UserPart, join_user_movies
from deepcrossing.serving.store import FeatureStore, StoreError, VersionGone, open_store


USER_CACHE_SIZE = 100_000  # user partials kept per state (H floats each); cleared when full


def empty_features(schema: pa.Schema, id_name: str, id_value: int) -> dict[str, Any]:
    """The schema's columns of a cold-start user / unknown movie (``id_name``'s side), from the column
    definitions (:func:`deepcrossing.features.cold_features`: counts 0, lists/maps empty, else null).

    Example:
        >>> s = pa.schema([("userId", pa.int64()), ("userRatingCount", pa.int64()),
        ...                ("userRecentPositives", pa.list_(pa.int64())), ("userAvgRating", pa.float64())])
        >>> empty_features(s, "userId", 7)
        {'userId': 7, 'userRatingCount': 0, 'userRecentPositives': [], 'userAvgRating': None}
    """
    cold = cold_features(side_of(id_name), id_value)
    return {f.name: cold[f.name] for f in schema}


def _load_model_dir(model_dir: Path) -> Any:
    import deepcrossing

    return deepcrossing.load(model_dir)  # checks that it is a model folder (training.artifact.require_model_dir)


def _contains(haystack: np.ndarray, needles: np.ndarray) -> np.ndarray:
    """``np.isin(needles, haystack)`` by binary search (no sort of both arrays per request: 20x faster for a
    user with thousands of ratings); ``haystack`` is sorted when published, sorted here otherwise.

    Example:
        >>> _contains(np.array([2, 5, 9]), np.array([9, 1, 5, 10])).tolist()
        [True, False, True, False]
    """
    if len(haystack) == 0:
        return np.zeros(len(needles), dtype=bool)
    if len(haystack) > 1 and (haystack[1:] < haystack[:-1]).any():
        haystack = np.sort(haystack)
    pos = np.minimum(np.searchsorted(haystack, needles), len(haystack) - 1)
    return haystack[pos] == needles


def _sigmoid(x: torch.Tensor) -> np.ndarray:
    return torch.sigmoid(x).numpy().astype(np.float64)


def model_fingerprint(model_dir: Path) -> str:
    """Short SHA-256 of the model files: the model version shown in /metrics and responses."""
    return files_sha256(Path(model_dir) / name for name in ("manifest.json", "model.safetensors"))[:12]


@dataclass(frozen=True)
class Snapshot:
    """One store version as the scorer needs it (built once per model load and per publish).

    Attributes:
        version: the store version.
        meta: its meta object.
        movie_ids: (M,) int64 movie ids, sorted.
        titles, genres, years: per movie row, for display.
        movie_table: (M rows) movie-side feature table (for the plain path).
        candidate_rows: (C,) int64 rows of the candidate movies, most popular first.
        items: the movie-side partials (M rows).
        unit: (M, H) L2-normalized ``items.p`` rows, for similar-movie neighbours.
        user_schema, movie_schema: Arrow schemas of the published features.
    """

    version: int
    meta: dict
    movie_ids: np.ndarray
    titles: list
    genres: list
    years: list
    movie_table: pa.Table
    candidate_rows: np.ndarray
    items: ItemPart
    unit: torch.Tensor
    user_schema: pa.Schema
    movie_schema: pa.Schema
    row_of: dict = field(repr=False, default_factory=dict)


@dataclass(frozen=True)
class State:
    """What one request uses from start to end: a model and a store snapshot.

    ``user_parts`` caches each user's per-request partial (:class:`UserPart`) for this (model, store version):
    a version's records never change, so the cache is exact, and it dies with the state on a reload or a
    publish. The record itself is still read from the store on every request.
    """

    scorer: Scorer
    model_dir: Path
    model_version: str
    snapshot: Snapshot | None
    user_parts: dict = field(default_factory=dict, repr=False, compare=False)


class Engine:
    """Model + store, swapped atomically; the service's and ``recommend``'s one entry point.

    Args:
        store: the feature store.
        verify: re-check each new store version's counts and checksum before serving it.
        loader: model folder -> loaded model (default :func:`deepcrossing.load`).
        backend: scorer backend, ``torch`` or ``onnx`` (see :class:`Scorer`).
        user_cache: user partials kept per state (0: compute every request's user part afresh, ~0.8 ms).
    """

    def __init__(self, store: FeatureStore, *, verify: bool = True,
                 loader: Callable[[Path], Any] | None = None, backend: str = "torch",
                 user_cache: int = USER_CACHE_SIZE) -> None:
        self.store = store
        self.backend = backend
        self.user_cache = user_cache
        self.verify = verify
        self.loader = loader or _load_model_dir
        self.state: State | None = None
        self.last_error: str | None = None
        self._swap = threading.Lock()

    @classmethod
    def open(cls, model_dir: str | Path, store: FeatureStore | str, *, verify: bool = True,
             loader: Callable[[Path], Any] | None = None, backend: str = "torch",
             user_cache: int = USER_CACHE_SIZE) -> Engine:
        """Load the model and the current store version (raises when the store has nothing published)."""
        engine = cls(open_store(store) if isinstance(store, str) else store, verify=verify, loader=loader,
                     backend=backend, user_cache=user_cache)
        engine.load_model(model_dir)
        engine.refresh(strict=True)
        return engine

    # ---- loading ----
    def load_model(self, model_dir: str | Path) -> State:
        """Load a model folder and rebuild the snapshot for it, then swap it in (in-flight requests finish
        on the state they took)."""
        model_dir = Path(model_dir)
        scorer = Scorer(self.loader(model_dir), backend=self.backend)
        old = self.state
        snapshot = None
        if old is not None and old.snapshot is not None:
            snapshot = self._snapshot(scorer, old.snapshot.version, verify=False)
        with self._swap:
            current = self.state
            if current is not None and current.snapshot is not None and (
                    snapshot is None or current.snapshot.version != snapshot.version):
                # a publish was adopted while we loaded: rebuild for that version (rare, so under the lock)
                snapshot = self._snapshot(scorer, current.snapshot.version, verify=False)
            state = State(scorer, model_dir, model_fingerprint(model_dir), snapshot)
            self.state = state
        return state

    reload = load_model

    def refresh(self, *, strict: bool = False) -> bool:
        """Adopt the store's current version if it differs from the one served; True when swapped.

        Args:
            strict: raise :class:`StoreError` when nothing is published (else keep serving what we have).
        """
        state = self.state
        if state is None:
            raise RuntimeError("load a model first")
        version = self.store.current_version()
        if version is None:
            if strict:
                raise StoreError(f"{self.store.url}: nothing published yet; run `deepcrossing publish`")
            return False
        if state.snapshot is not None and state.snapshot.version == version:
            return False
        snapshot = self._snapshot(state.scorer, version, verify=self.verify)
        with self._swap:
            current = self.state
            if current.snapshot is not None and current.snapshot.version >= version:
                return False
            self.state = State(current.scorer, current.model_dir, current.model_version, snapshot) \
                if current.scorer is state.scorer else \
                State(current.scorer, current.model_dir, current.model_version,
                      self._snapshot(current.scorer, version, verify=False))
        self.last_error = None
        return True

    def _snapshot(self, scorer: Scorer, version: int, *, verify: bool) -> Snapshot:
        meta = self.store.verify(version) if verify else self.store.meta(version=version)
        user_schema = schema_from_json(meta["user_schema"])
        movie_schema = schema_from_json(meta["movie_schema"])
        records = sorted(self.store.iter_movies(version=version), key=lambda kv: kv[0])
        movie_ids = np.fromiter((k for k, _ in records), dtype=np.int64, count=len(records))
        movie_table = pa.Table.from_pylist([r["features"] for _, r in records], schema=movie_schema)
        items = scorer.items(movie_table)
        row_of = {int(m): i for i, m in enumerate(movie_ids)}
        candidates = self.store.get_candidates(version=version)
        candidate_rows = np.fromiter((row_of[c] for c in candidates if c in row_of), dtype=np.int64)
        unit = torch.nn.functional.normalize(items.p, dim=1)
        return Snapshot(
            version=version, meta=meta, movie_ids=movie_ids,
            titles=[r.get("title") for _, r in records], genres=[r.get("genres") or [] for _, r in records],
            years=[r.get("year") for _, r in records], movie_table=movie_table, candidate_rows=candidate_rows,
            items=items, unit=unit, user_schema=user_schema, movie_schema=movie_schema, row_of=row_of,
        )

    # ---- requests ----
    def _take(self) -> State:
        state = self.state
        if state is None or state.snapshot is None:
            raise StoreError(self.last_error or "the service has no store version loaded yet")
        return state

    def _user(self, user_id: int) -> tuple[State, dict | None]:
        """The state and the user's record from exactly that state's store version (retry once if the
        version was deleted under us)."""
        for attempt in range(2):
            state = self._take()
            try:
                return state, self.store.get_user(user_id, version=state.snapshot.version)
            except VersionGone:
                if attempt:
                    raise
                self.refresh()
        raise AssertionError("unreachable")

    @staticmethod
    def _user_table(state: State, user_id: int, record: dict | None) -> pa.Table:
        snap = state.snapshot
        features = record["features"] if record else empty_features(snap.user_schema, "userId", user_id)
        return pa.Table.from_pylist([features], schema=snap.user_schema)

    def _user_part(self, state: State, user_id: int, record: dict | None) -> UserPart:
        """The user's partial, from the state's cache or computed from the record (user columns only)."""
        part = state.user_parts.get(user_id)
        if part is None:
            part = state.scorer.user(self._user_table(state, user_id, record))
            if self.user_cache:
                if len(state.user_parts) >= self.user_cache:
                    state.user_parts.clear()
                state.user_parts[user_id] = part
        return part

    def _movie_out(self, snap: Snapshot, row: int, score: float | None = None) -> dict:
        out = {"movieId": int(snap.movie_ids[row]), "title": snap.titles[row], "genres": snap.genres[row],
               "year": snap.years[row]}
        if score is not None:
            out["score"] = round(float(score), 6)
        return out

    def recommend(self, user_id: int, k: int = 10, candidates: int = 800, *, plain: bool = False) -> dict:
        """Top ``k`` of the first ``candidates`` candidates minus what the user rated, best first.

        Args:
            user_id: any integer; unknown users get cold-start features.
            k: list length.
            candidates: how many of the most popular movies to rank.
            plain: use the full forward pass per candidate instead of the split fast path.

        Returns:
            ``{"userId", "known", "storeVersion", "modelVersion", "items": [{movieId, title, genres, year,
            score}]}``.
        """
        state, record = self._user(user_id)
        snap = state.snapshot
        rows = snap.candidate_rows[:candidates]
        if record and record.get("rated"):
            rows = rows[~_contains(np.asarray(record["rated"], dtype=np.int64), snap.movie_ids[rows])]
        if plain:
            user_table = self._user_table(state, user_id, record)
            logits = state.scorer.plain(join_user_movies(user_table, snap.movie_table.take(pa.array(rows))))
        else:
            logits = state.scorer.fast(self._user_part(state, user_id, record), snap.items, rows)
        scores = _sigmoid(logits)
        k = min(k, len(rows))
        top = np.argpartition(-scores, k - 1)[:k] if 0 < k < len(rows) else np.arange(len(rows))
        top = top[np.lexsort((snap.movie_ids[rows[top]], -scores[top]))][:k]
        return {"userId": int(user_id), "known": record is not None, "storeVersion": snap.version,
                "modelVersion": state.model_version, "candidates": int(len(rows)),
                "items": [self._movie_out(snap, int(rows[i]), scores[i]) for i in top]}

    def score(self, user_id: int, movie_ids: list[int]) -> dict:
        """Scores of the user against ``movie_ids``, in the given order; unknown movies get the OOV row."""
        state, record = self._user(user_id)
        snap = state.snapshot
        user_part = self._user_part(state, user_id, record)
        rows = np.array([snap.row_of.get(int(m), -1) for m in movie_ids], dtype=np.int64)
        scores = np.empty(len(rows))
        known = rows >= 0
        if known.any():
            scores[known] = _sigmoid(state.scorer.fast(user_part, snap.items, rows[known]))
        if (~known).any():
            unknown = [int(m) for m, ok in zip(movie_ids, known) if not ok]
            movies = pa.Table.from_pylist([empty_features(snap.movie_schema, "movieId", m) for m in unknown],
                                          schema=snap.movie_schema)
            extra = state.scorer.items(movies)
            scores[~known] = _sigmoid(state.scorer.fast(user_part, extra, np.arange(len(unknown))))
        return {"userId": int(user_id), "known": record is not None, "storeVersion": snap.version,
                "modelVersion": state.model_version,
                "scores": [round(float(s), 6) for s in scores], "knownMovies": [bool(x) for x in known]}

    def user_info(self, user_id: int) -> dict:
        """The user's features and recent history (with titles); cold-start features when unknown."""
        state, record = self._user(user_id)
        snap = state.snapshot
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

    def movie_info(self, movie_id: int, neighbours: int = 10) -> dict | None:
        """The movie's record and its nearest movies by the cosine of their item-side partial vectors
        (movies the model treats alike), among the candidates; ``None`` when unknown."""
        state = self._take()
        snap = state.snapshot
        row = snap.row_of.get(int(movie_id))
        if row is None:
            return None
        pool = snap.candidate_rows[snap.candidate_rows != row]
        sims = (snap.unit[torch.as_tensor(pool)] @ snap.unit[row]).numpy()
        n = min(neighbours, len(pool))
        top = np.argsort(-sims, kind="stable")[:n]
        features = snap.movie_table.slice(row, 1).to_pylist()[0]
        features = {k: (dict(v) if isinstance(v, list) and v and isinstance(v[0], tuple) else v)
                    for k, v in features.items()}
        return self._movie_out(snap, row) | {
            "storeVersion": snap.version, "features": features,
            "neighbours": [self._movie_out(snap, int(pool[i])) | {"similarity": round(float(sims[i]), 6)}
                           for i in top]}

    def info(self) -> dict:
        """Model and store versions being served."""
        state = self.state
        return {"modelDir": None if state is None else str(state.model_dir),
                "modelVersion": None if state is None else state.model_version,
                "storeVersion": None if state is None or state.snapshot is None else state.snapshot.version,
                "store": self.store.url,
                "storePublishedAt": None if state is None or state.snapshot is None
                else state.snapshot.meta.get("published_at")}
