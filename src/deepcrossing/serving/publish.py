"""Publish: each user's and each movie's latest features, plus display data and candidates, into a store.

Features come from :func:`deepcrossing.features.latest_features`, the same SQL that made the training
samples (no second implementation). This module only adds what the service shows or needs besides
features, all computed set-based in DuckDB:

* per user: the recent history (last ``history_n`` ratings, most recent first, with rating and time) and the
  ids of every movie the user rated (excluded from that user's recommendations);
* per movie: title, year, genres;
* candidates: the ``max_candidates`` most popular movies as of the data's end, by number of ratings, then
  average rating, then id (SparrowRecSys ranks its 800 candidates the same way, by popularity).

Example:
    >>> report = publish_dataset(dataset, "sqlite:////tmp/features.db")   # doctest: +SKIP
    >>> report["version"], report["n_users"]                                # doctest: +SKIP
    (1, 610)
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.ipc

from deepcrossing.data.schema import Dataset
from deepcrossing.duck import sql_str
from deepcrossing.serving.store import FeatureStore, clean, open_store

DEFAULT_MAX_CANDIDATES = 5000
DEFAULT_HISTORY_N = 20




def _rows(table: pa.Table, key: str) -> Iterator[tuple[int, dict]]:
    """``(id, {column: value})`` per row, maps as dicts, NaN as None."""
    for row in table.to_pylist():
        features = {}
        for name, value in row.items():
            if isinstance(value, list) and value and isinstance(value[0], tuple):  # MAP -> [(k, v), ...]
                value = dict(value)
            features[name] = clean(value)
        yield int(row[key]), features


def display_data(dataset: Dataset, *, history_n: int = DEFAULT_HISTORY_N,
                 max_candidates: int = DEFAULT_MAX_CANDIDATES) -> tuple[pa.Table, pa.Table, list[int]]:
    """History/rated lists per user, title/genres per movie and the candidate list, in three DuckDB queries.

    Args:
        dataset: normalized ratings/items.
        history_n: ratings kept per user for display.
        max_candidates: length of the candidate list.

    Returns:
        ``(users, movies, candidates)``: ``users(user_id, history LIST<STRUCT(movie_id, rating, timestamp)>,
        rated LIST<BIGINT>)``, ``movies(item_id, title, year, genres)`` and candidate ids, best first.
    """
    con = duckdb.connect()
    try:
        con.execute(f"CREATE VIEW r AS SELECT * FROM read_parquet({sql_str(dataset.ratings)})")
        users = con.sql(
            "SELECT user_id, "
            f"list({{'movie_id': item_id, 'rating': rating, 'timestamp': timestamp}} "
            f"ORDER BY timestamp DESC, item_id)[1:{int(history_n)}] AS history, "
            "list(DISTINCT item_id ORDER BY item_id) AS rated "
            "FROM r GROUP BY user_id ORDER BY user_id"
        ).to_arrow_table()
        movies = con.sql(f"SELECT item_id, title, year, genres FROM read_parquet({sql_str(dataset.items)}) "
                         "ORDER BY item_id").to_arrow_table()
        candidates = [int(r[0]) for r in con.execute(
            f"SELECT i.item_id FROM read_parquet({sql_str(dataset.items)}) i LEFT JOIN "
            "(SELECT item_id, COUNT(*) AS n, AVG(rating) AS avg FROM r GROUP BY item_id) s USING (item_id) "
            f"ORDER BY COALESCE(s.n, 0) DESC, s.avg DESC NULLS LAST, i.item_id LIMIT {int(max_candidates)}"
        ).fetchall()]
    finally:
        con.close()
    return users, movies, candidates


def build_records(
    dataset: Dataset,
    feature_config: Any = None,
    *,
    history_n: int = DEFAULT_HISTORY_N,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
) -> tuple[list[tuple[int, dict]], list[tuple[int, dict]], list[int], dict]:
    """Everything a store version holds, as ``(users, movies, candidates, meta)`` (see serving.store).

    Args:
        dataset: normalized ratings/items.
        feature_config: the ``FeatureConfig`` the model's samples were built with (``None``: default).
        history_n: ratings kept per user for display.
        max_candidates: length of the candidate list.
    """
    from deepcrossing.features import latest_features

    user_features, movie_features = latest_features(dataset, feature_config)
    shown_users, shown_movies, candidates = display_data(dataset, history_n=history_n,
                                                         max_candidates=max_candidates)
    extra_user = {int(r["user_id"]): r for r in shown_users.to_pylist()}
    extra_movie = {int(r["item_id"]): r for r in shown_movies.to_pylist()}
    users = []
    for uid, features in _rows(user_features, "userId"):
        extra = extra_user.get(uid, {"history": [], "rated": []})
        users.append((uid, {"features": features,
                            "history": [[h["movie_id"], h["rating"], h["timestamp"]] for h in extra["history"]],
                            "rated": extra["rated"]}))
    movies = []
    for mid, features in _rows(movie_features, "movieId"):
        extra = extra_movie.get(mid, {})
        movies.append((mid, {"features": features, "title": extra.get("title"), "year": extra.get("year"),
                             "genres": list(extra.get("genres") or [])}))
    active = sorted(users, key=lambda kv: (-len(kv[1]["rated"]), kv[0]))
    meta = {
        "dataset": dataset.name,
        "example_users": [uid for uid, _ in active[:8]],
        "sources": dict(dataset.sources),
        "feature_config": None if feature_config is None else feature_config.to_dict(),
        "user_schema": _schema_json(user_features.schema),
        "movie_schema": _schema_json(movie_features.schema),
    }
    return users, movies, candidates, meta


def _schema_json(schema: pa.Schema) -> str:
    """The Arrow schema as base64 of its IPC message (not pickle), so the service rebuilds typed rows."""
    return base64.b64encode(schema.remove_metadata().serialize().to_pybytes()).decode()


def schema_from_json(text: str) -> pa.Schema:
    """Inverse of :func:`_schema_json`."""
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def publish_dataset(
    dataset: Dataset,
    store: FeatureStore | str,
    *,
    feature_config: Any = None,
    extra_meta: dict | None = None,
    history_n: int = DEFAULT_HISTORY_N,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    keep_previous_s: float = 0.0,
) -> dict:
    """Compute and publish one new store version; return its meta (version, counts, checksum, ...).

    Args:
        dataset: normalized ratings/items.
        store: a :class:`FeatureStore` or its URL.
        feature_config: the ``FeatureConfig`` of the model's samples.
        extra_meta: more JSON-ready meta (e.g. the model folder).
        history_n: ratings kept per user for display.
        max_candidates: length of the candidate list.
        keep_previous_s: seconds the previous version stays readable after the switch (services poll the
            pointer and move over within their poll interval).
    """
    own = isinstance(store, str)
    store = open_store(store) if own else store
    try:
        users, movies, candidates, meta = build_records(dataset, feature_config, history_n=history_n,
                                                        max_candidates=max_candidates)
        meta.update(extra_meta or {})
        version = store.publish(users, movies, candidates, json.loads(json.dumps(meta, default=str)),
                                keep_previous_s=keep_previous_s)
        return store.meta(version=version)
    finally:
        if own:
            store.close()


def default_store_url(model_dir: str | Path) -> str:
    """``sqlite:///<model_dir>/features.db`` with an absolute path (the embedded default store).

    Example:
        >>> default_store_url("/m")
        'sqlite:////m/features.db'
    """
    return f"sqlite:///{(Path(model_dir).resolve() / 'features.db')}"


def feature_config_of(model_dir: str | Path) -> tuple[Any, str]:
    """The ``FeatureConfig`` the model's samples were built with, and where it came from.

    The model manifest records the samples manifest it was trained from (``samples.manifest``); that file's
    ``config`` is the FeatureConfig. When it cannot be found, the default config is used (and said so).
    """
    from deepcrossing.features import FeatureConfig

    manifest_path = Path(model_dir) / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        samples_manifest = Path(manifest.get("samples", {}).get("manifest", ""))
        if samples_manifest.is_file():
            config = json.loads(samples_manifest.read_text())["config"]
            return FeatureConfig.from_dict(config), f"from {samples_manifest}"
    except (OSError, ValueError, KeyError):
        pass
    return FeatureConfig(), "default (the model's samples manifest was not found)"


def publish_for_model(
    model_dir: str | Path,
    data: str | Path,
    store_url: str | None = None,
    *,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    keep_previous_s: float = 2.0,
) -> dict:
    """What ``deepcrossing publish`` does: read the logs, compute latest features, publish a version.

    Args:
        model_dir: the model folder (its samples' FeatureConfig is reused; default store lives there).
        data: a MovieLens folder or a log file, as for ``prepare``.
        store_url: ``sqlite:///...`` or ``redis://...``; default :func:`default_store_url`.
        max_candidates: length of the candidate list.
        keep_previous_s: seconds the previous version stays readable after the switch.

    Returns:
        The new version's meta, plus ``store`` (the URL) and ``feature_config_source``.
    """
    import tempfile

    from deepcrossing.data import load_dataset

    from deepcrossing.training.artifact import require_model_dir

    model_dir = require_model_dir(model_dir)
    store_url = store_url or default_store_url(model_dir)
    config, source = feature_config_of(model_dir)
    with tempfile.TemporaryDirectory(prefix="deepcrossing-publish-") as work:
        dataset = load_dataset(data, workdir=work)
        meta = publish_dataset(dataset, store_url, feature_config=config,
                               extra_meta={"model_dir": str(model_dir.resolve()), "data": str(data)},
                               max_candidates=max_candidates, keep_previous_s=keep_previous_s)
    return meta | {"store": store_url, "feature_config_source": source}
