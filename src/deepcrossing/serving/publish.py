"""Publish: the online records of :mod:`deepcrossing.features.online`, written as one new store version.

Every value comes from :func:`deepcrossing.features.online_records` (latest features from the same SQL as the
training samples, histories, rated sets, candidates); this module only turns those Arrow tables into the
store's JSON records (see :mod:`deepcrossing.serving.store`) and publishes them. It runs no SQL of its own.

Example:
    >>> report = publish_dataset(dataset, "sqlite:////tmp/features.db")   # doctest: +SKIP
    >>> report["version"], report["n_users"]                                # doctest: +SKIP
    (1, 610)
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc

from deepcrossing.data.schema import Dataset
from deepcrossing.errors import DeepCrossingError
from deepcrossing.features import FeatureConfig, online_records
from deepcrossing.features.columns import USER_ATTRIBUTES
from deepcrossing.features.online import DEFAULT_HISTORY_N, DEFAULT_MAX_CANDIDATES, OnlineRecords
from deepcrossing.jsonfile import read_json_object
from deepcrossing.serving.channels import TRENDING_BLOB, RecallFolder, channel_blobs
from deepcrossing.serving.itemcf import itemcf_blobs
from deepcrossing.serving.store import FeatureStore, open_store
from deepcrossing.training.retrieval_data import with_trend_scores
from deepcrossing.training.vectors import ItemVectors

__all__ = ["DEFAULT_HISTORY_N", "DEFAULT_MAX_CANDIDATES", "build_records", "default_store_url", "displays_for_store",
           "feature_config_of", "publish_dataset", "publish_for_model", "publish_records", "records_for_store",
           "schema_from_json"]

Record = tuple[int, dict[str, Any]]


def _feature_dicts(table: pa.Table) -> list[dict[str, Any]]:
    """The rows of a feature table as dicts; a non-empty MAP becomes a dict (an empty one stays ``[]``, as
    every published version so far has it)."""
    rows: list[dict[str, Any]] = table.to_pylist()
    maps = [f.name for f in table.schema if pa.types.is_map(f.type)]
    if maps:
        for row in rows:
            for name in maps:
                if row[name]:
                    row[name] = dict(row[name])
    return rows


def _triples(column: pa.ChunkedArray | pa.Array, names: tuple[str, str, str]) -> list[list[list[Any]]]:
    """Per row, its ``list<struct>`` as ``[[a, b, c], ...]`` (the struct fields ``names``), converted column by
    column: no Python loop per element (a user's thousand ratings cost one slice).

    Example:
        >>> t = pa.array([[{"m": 1, "r": 4.5, "t": 9}], []])
        >>> _triples(t, ("m", "r", "t"))
        [[[1, 4.5, 9]], []]
    """
    lists = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    flat = lists.flatten()
    triples = list(map(list, zip(*(flat.field(name).to_pylist() for name in names))))
    offsets = lists.offsets.to_numpy()
    offsets = (offsets - offsets[0]).tolist()
    return [triples[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def _display(table: pa.Table, lists: dict[str, tuple[str, str, str]], keys: tuple[str, ...],
             n: int) -> list[dict[str, Any]]:
    """The display columns of ``table`` present there (older records lack them), per row: ``lists`` as
    triples, ``keys`` as they are."""
    have = set(table.column_names) if table.num_rows == n else set()
    columns: dict[str, list[Any]] = {k: _triples(table.column(k), f) for k, f in lists.items() if k in have}
    columns |= {k: table.column(k).to_pylist() for k in keys if k in have}
    return [dict(zip(columns, row)) for row in zip(*columns.values())] if columns else [{}] * n


def records_for_store(records: OnlineRecords) -> tuple[list[Record], list[Record], list[int]]:
    """The store's ``(users, movies, candidates)`` from the online records (record format: serving.store).

    Args:
        records: from :func:`deepcrossing.features.online_records`.

    Returns:
        ``users``: ``(user_id, {"features", "history": [[movie_id, rating, timestamp], ...], "rated"})``
        (the display data is apart: :func:`displays_for_store`); ``movies``: ``(movie_id, {"features",
        "title", "year", "genres", "imdbId", "tmdbId", "ratingNumber", "averageRating", "topRatings":
        [[user_id, rating, timestamp], ...]})``; the candidate ids. The display keys after ``genres`` are
        there when the records have them (the newer ``movie_info`` columns).
    """
    n_movies = records.movies.num_rows
    history = _triples(records.histories.column("history"), ("movieId", "rating", "timestamp"))
    rated = records.histories.column("rated").to_pylist()
    users: list[Record] = [
        (int(features["userId"]), {"features": features, "history": h, "rated": r})
        for features, h, r in zip(_feature_dicts(records.users), history, rated, strict=True)]
    info = records.movie_info
    movie_extra = _display(info, {"topRatings": ("userId", "rating", "timestamp")},
                           ("imdbId", "tmdbId", "ratingNumber", "averageRating"), n_movies)
    movies: list[Record] = [
        (int(features["movieId"]), {"features": features, "title": title, "year": year,
                                    "genres": list(genres or [])} | extra)
        for features, title, year, genres, extra in zip(
            _feature_dicts(records.movies), info.column("title").to_pylist(), info.column("year").to_pylist(),
            info.column("genres").to_pylist(), movie_extra, strict=True)]
    return users, movies, list(records.candidates)


def displays_for_store(records: OnlineRecords) -> list[Record]:
    """Per user, the ``/getuser`` data (the store's ``displays`` kind, read by nothing else): ``(user_id,
    {"ratings": [[movie_id, rating, timestamp], ...], "ratingCount", "averageRating", "highestRating",
    "lowestRating"})``; empty when the records have no :attr:`OnlineRecords.user_info`."""
    info = records.user_info
    if info is None or info.num_rows == 0 or "userId" not in info.column_names:
        return []
    extra = _display(info, {"ratings": ("movieId", "rating", "timestamp")},
                     ("ratingCount", "averageRating", "highestRating", "lowestRating"), info.num_rows)
    return [(int(u), e) for u, e in zip(info.column("userId").to_pylist(), extra, strict=True) if e]


def build_records(
    dataset: Dataset,
    feature_config: FeatureConfig | None = None,
    *,
    history_n: int = DEFAULT_HISTORY_N,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
) -> tuple[list[Record], list[Record], list[int], dict[str, Any]]:
    """Everything a store version holds, as ``(users, movies, candidates, meta)`` (see serving.store).

    Args:
        dataset: normalized ratings/items.
        feature_config: the ``FeatureConfig`` the model's samples were built with (``None``: default).
        history_n: ratings kept per user for display.
        max_candidates: length of the candidate list.
    """
    records = online_records(dataset, feature_config, history_n=_history_n(history_n, feature_config),
                             max_candidates=max_candidates)
    users, movies, candidates = records_for_store(records)
    return users, movies, candidates, _dataset_meta(dataset, feature_config) | _records_meta(records, users)


def _history_n(history_n: int, feature_config: FeatureConfig | None) -> int:
    """Ratings kept per user: at least ``itemcf_history`` when the samples have item-CF on (the service scores
    ``userItemCFScore`` from the stored history)."""
    return max(history_n, feature_config.itemcf_history) if feature_config is not None and feature_config.itemcf \
        else history_n


def _dataset_meta(dataset: Dataset, feature_config: FeatureConfig | None) -> dict[str, Any]:
    return {"dataset": dataset.name, "sources": dict(dataset.sources),
            "feature_config": None if feature_config is None else feature_config.to_dict()}


def _records_meta(records: OnlineRecords, users: list[Record]) -> dict[str, Any]:
    """The meta a version's records imply: example users (most rated first) and the feature schemas."""
    active = sorted(users, key=lambda kv: (-len(kv[1]["rated"]), kv[0]))
    return {"example_users": [uid for uid, _ in active[:8]],
            "user_schema": _schema_json(records.users.schema),
            "movie_schema": _schema_json(records.movies.schema)}


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
    feature_config: FeatureConfig | None = None,
    extra_meta: dict[str, Any] | None = None,
    history_n: int = DEFAULT_HISTORY_N,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    keep_previous_s: float = 0.0,
    vectors: Mapping[str, ItemVectors] | None = None,
    sources: Mapping[str, dict[str, Any]] | None = None,
    trending_days: int | None = None,
    trending_half_life_days: float | None = None,
) -> dict[str, Any]:
    """Compute and publish one new store version; return its meta (version, counts, checksum, ...).

    Args:
        dataset: normalized ratings/items.
        store: a :class:`FeatureStore` or its URL.
        feature_config: the ``FeatureConfig`` of the model's samples.
        extra_meta: more JSON-ready meta (e.g. the model folder).
        history_n: ratings kept per user (at least ``feature_config.itemcf_history`` when item-CF is on).
        max_candidates: length of the candidate list.
        keep_previous_s: seconds the previous version stays readable after the switch (services poll the
            pointer and move over within their poll interval).
        vectors, sources: vector recall channels to index into the version (see :func:`publish_records`).
        trending_days: store the ``trending`` list too (a recall folder's window, ``merge.trending_days``);
            trending_half_life_days: its score's half-life (``merge.trending_half_life_days``).
    """
    target = open_store(store) if isinstance(store, str) else store  # a bad URL fails before the work
    try:
        records = online_records(dataset, feature_config, history_n=_history_n(history_n, feature_config),
                                 max_candidates=max_candidates, trending_days=trending_days,
                                 trending_half_life_days=trending_half_life_days)
        extra = {} if trending_days is None else {"trending_days": int(trending_days),
                                                  "trending_half_life_days": trending_half_life_days}
        return publish_records(records, target, meta=_dataset_meta(dataset, feature_config) | extra
                               | (extra_meta or {}),
                               keep_previous_s=keep_previous_s, vectors=vectors, sources=sources,
                               feature_config=feature_config)
    finally:
        if target is not store:
            target.close()


def publish_records(records: OnlineRecords, store: FeatureStore | str, *, meta: dict[str, Any] | None = None,
                    keep_previous_s: float = 0.0, vectors: Mapping[str, ItemVectors] | None = None,
                    sources: Mapping[str, dict[str, Any]] | None = None,
                    feature_config: FeatureConfig | None = None) -> dict[str, Any]:
    """Write online records as one new store version (verified, then switched to); return its meta.

    Args:
        records: from :func:`deepcrossing.features.online_records`.
        store: a :class:`FeatureStore` or its URL.
        meta: more JSON-ready meta (dataset, model folder, ...); the example users and the feature schemas
            are added here.
        keep_previous_s: seconds the previous version stays readable after the switch.
        vectors: name -> :class:`~deepcrossing.training.vectors.ItemVectors`: each channel's vectors of every
            movie and its index are stored in the version (:func:`deepcrossing.serving.channels.channel_blobs`).
        sources: name -> what built the channel (``{"kind": "emb", "model"}`` or ``{"kind": "recall", "path",
            "manifest_sha256"}``), checked by the service before it serves the version.
        feature_config: the records' ``FeatureConfig``; with ``itemcf`` on, the co-occurrence lists are stored
            as blobs and ``meta["itemcf"]`` (:func:`~deepcrossing.serving.itemcf.itemcf_blobs`): what a model
            reading ``userItemCFScore`` needs.
    """
    users, movies, candidates = records_for_store(records)
    full = (meta or {}) | _records_meta(records, users)
    blobs: dict[str, bytes] = {}
    if vectors:
        rows = records.movies   # + the trending prior's T (training.retrieval_prior), for the channels only
        if records.trending_scores:
            rows = with_trend_scores(rows, records.trending_scores)
        blobs, full["vector_channels"] = channel_blobs(vectors, rows, sources or {})
    if records.trending:   # the served ``trending`` channel (serving.recall.merged_rows)
        blobs[TRENDING_BLOB] = np.asarray(records.trending, dtype="<i8").tobytes()
    if feature_config is not None and feature_config.itemcf:   # userItemCFScore (serving.itemcf)
        icf_blobs, full["itemcf"] = itemcf_blobs(records.cooccurrence, history=feature_config.itemcf_history,
                                                 window=feature_config.itemcf_window)
        blobs |= icf_blobs
    target = open_store(store) if isinstance(store, str) else store
    try:
        version = target.publish(users, movies, candidates, meta=json.loads(json.dumps(full, default=str)),
                                 displays=displays_for_store(records), blobs=blobs,
                                 keep_previous_s=keep_previous_s)
        published: dict[str, Any] = target.meta(version=version)
        return published
    finally:
        if target is not store:
            target.close()


def default_store_url(model_dir: str | Path) -> str:
    """``sqlite:///<model_dir>/features.db`` with an absolute path (the embedded default store).

    Example:
        >>> default_store_url("/m")
        'sqlite:////m/features.db'
    """
    return f"sqlite:///{(Path(model_dir).resolve() / 'features.db')}"


def feature_config_of(model_dir: str | Path) -> tuple[FeatureConfig, str]:
    """The ``FeatureConfig`` the model's samples were built with, and where it came from.

    The model manifest records the samples manifest it was trained from (``samples.manifest``); that file's
    ``config`` is the FeatureConfig. When it cannot be found, the default config is used (and said so).
    """
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


def _check_itemcf(model_dir: Path, config: FeatureConfig, source: str) -> None:
    """A model reading ``userItemCFScore`` needs samples prepared with item-CF on (the store then holds the
    co-occurrence lists); refused here, in one line, before any work."""
    spec = read_json_object(Path(model_dir) / "manifest.json").get("spec") or {}
    reads = any(isinstance(f, dict) and f.get("name") == "userItemCFScore" for f in spec.get("features") or ())
    if reads and not config.itemcf:
        raise DeepCrossingError(f"{model_dir}: the model reads userItemCFScore but its samples' FeatureConfig "
                                f"({source}) has itemcf off, so there is no item-CF data to publish; prepare the "
                                "samples with `prepare --itemcf` (FeatureConfig.itemcf), train again, then publish")


def _check_user_attributes(model_dir: Path, dataset: Dataset, data: str | Path) -> None:
    """A model reading the static user attributes needs data with a users table (else every user would get
    NULLs the model never saw for a known user); refused here, in one line, before any work."""
    spec = read_json_object(Path(model_dir) / "manifest.json").get("spec") or {}
    reads = [f.get("name") for f in spec.get("features") or ()
             if isinstance(f, dict) and f.get("name") in USER_ATTRIBUTES]
    if reads and dataset.users is None:
        raise DeepCrossingError(f"{model_dir}: the model reads the user attributes {', '.join(map(str, reads))} but "
                                f"{data} has no users table; publish with the data the samples were prepared from "
                                "(ml-100k's u.user, ml-1m's users.dat, or the --users file given to prepare)")


def publish_for_model(
    model_dir: str | Path,
    data: str | Path,
    store_url: str | None = None,
    *,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    keep_previous_s: float = 2.0,
    emb: bool = True,
    recall: RecallFolder | None = None,
    users_path: str | Path | None = None,
) -> dict[str, Any]:
    """What ``deepcrossing publish`` does: read the logs, compute latest features, publish a version.

    Args:
        model_dir: the model folder (its samples' FeatureConfig is reused; default store lives there).
        data: a MovieLens folder or a log file, as for ``prepare``.
        store_url: ``sqlite:///...`` or ``redis://...``; default :func:`default_store_url`.
        max_candidates: length of the candidate list.
        keep_previous_s: seconds the previous version stays readable after the switch.
        emb: index the model's own ``emb`` vectors (the movie-side partials) into the version.
        recall: a loaded recall folder (``--recall``): its channels are indexed too.
        users_path: the users file the samples were prepared with (``prepare --users``), if any.

    Returns:
        The new version's meta, plus ``store`` (the URL) and ``feature_config_source``.

    Raises:
        DeepCrossingError: the model reads ``userItemCFScore`` but its samples were prepared with itemcf off, or
            it reads the user attributes and ``data`` has no users table.
    """
    import tempfile

    from deepcrossing.data import load_dataset
    from deepcrossing.training.model_dir import require_model_dir

    model_dir = require_model_dir(model_dir)
    store_url = store_url or default_store_url(model_dir)
    config, source = feature_config_of(model_dir)
    _check_itemcf(model_dir, config, source)
    vectors: dict[str, ItemVectors] = {}
    sources: dict[str, dict[str, Any]] = {}
    if emb:
        from deepcrossing.serving.models import load_model_dir, model_fingerprint
        from deepcrossing.training.emb_vectors import EmbVectors

        vectors["emb"] = EmbVectors(load_model_dir(model_dir))
        sources["emb"] = {"kind": "emb", "model": model_fingerprint(model_dir)}
    if recall is not None:
        for name, channel in recall.channels.items():
            vectors[name] = channel
            sources[name] = {"kind": "recall", "path": str(recall.path), "manifest_sha256": recall.checksum}
    with tempfile.TemporaryDirectory(prefix="deepcrossing-publish-") as work:
        dataset = load_dataset(data, workdir=work, users_path=users_path)
        _check_user_attributes(model_dir, dataset, data)
        meta = publish_dataset(dataset, store_url, feature_config=config,
                               extra_meta={"model_dir": str(model_dir.resolve()), "data": str(data)},
                               max_candidates=max_candidates, keep_previous_s=keep_previous_s,
                               vectors=vectors, sources=sources,
                               trending_days=None if recall is None else recall.trending_days,
                               trending_half_life_days=None if recall is None else recall.trending_half_life_days)
    return meta | {"store": store_url, "feature_config_source": source}
