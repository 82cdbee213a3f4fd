"""Vector recall channels of a store version: built at ``publish``, stored as blobs, loaded by the service.

A vector channel is an :class:`~deepcrossing.training.vectors.ItemVectors` (``emb``: Deep Crossing's own
partials, :class:`~deepcrossing.training.emb_vectors.EmbVectors`; ``two_tower``, ``two_tower_trending``,
``item2vec``: a recall folder
of ``deepcrossing train-recall``). At publish, :func:`channel_blobs` asks each for the vectors of every movie of
the version and builds its :class:`~deepcrossing.serving.ann.VectorIndex`; the bytes go into the version
(``vectors/<channel>/<file>`` blobs, SHA-256 in the meta) and ``meta["vector_channels"][name]`` records the
metric, the size, the index kind and the **source**: ``{"kind": "emb", "model": <model fingerprint>}`` or
``{"kind": "recall", "path", "manifest_sha256"}``.

The service (:func:`load_channels`) reads them by the version's ``Ref`` and checks every blob's SHA-256 (a
mismatch is a :class:`StoreError`: the version is not served) and the source: a version built from a recall
folder other than the one the service loaded (``serve --recall``) is refused, since its user vectors would come
from another model than its item vectors. The ``emb`` vectors of another model than the one served are rebuilt
from the served model's partials (:func:`emb_channel`), never mixed.

Example:
    >>> ch = emb_channel(np.array([3, 5]), np.array([[1, 0], [0, 1]], dtype=np.float32))
    >>> ch.name, ch.index.kind, ch.user_vector({"userRecentPositives": [5]}, None).tolist()
    ('emb', 'exact', [0.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from deepcrossing.errors import InputError
from deepcrossing.hashing import file_sha256
from deepcrossing.serving.ann import VectorIndex
from deepcrossing.serving.store import FeatureStore, Record, Ref, StoreError
from deepcrossing.training.emb_vectors import EmbVectors
from deepcrossing.training.retrieval import Prior
from deepcrossing.training.retrieval_data import TRENDING_DAYS
from deepcrossing.training.retrieval_fusion import Fusion, fusion_of
from deepcrossing.training.vectors import ItemVectors

__all__ = ["TRENDING_BLOB", "Head", "Merge", "RecallFolder", "VectorChannel", "channel_blobs", "emb_channel",
           "load_channels", "load_merge", "load_recall_folder"]

PREFIX = "vectors"
Merge = tuple[tuple[str, float], ...]
Head = tuple[int, tuple[float, ...]]   # (size, head weight per merge entry): the first size movies by them
TRENDING_BLOB = "lists/trending"   # (C,) little-endian int64 movie ids, the trending order (features.online)


@dataclass(frozen=True)
class RecallFolder:
    """A recall folder (``deepcrossing train-recall``) as the service loaded it.

    Attributes:
        path: the folder; checksum: SHA-256 of its ``manifest.json``; channels: name -> ItemVectors.
        merge: channel -> weight, the manifest's ``merge.weights`` chosen on validation (the service's
            default plan, :func:`deepcrossing.serving.recall.merged_rows`); trending_days: the window of its
            ``trending`` channel (the manifest's ``merge.trending_days``); trending_half_life_days: its score's
            half-life (``merge.trending_half_life_days``; ``None``: the count); head_weights, head: the
            first ``head`` merged movies by these weights instead (``merge.head_weights``, ``merge.k``; empty:
            none); fusion: the score fusion when the folder's ``merge.rule`` is ``fusion`` (it replaces the
            weights: :func:`deepcrossing.training.retrieval_fusion.fuse_lists`), else ``None``.
    """

    path: Path
    checksum: str
    channels: Mapping[str, ItemVectors]
    merge: Mapping[str, float] = field(default_factory=dict)
    trending_days: int = TRENDING_DAYS
    trending_half_life_days: float | None = None
    head_weights: Mapping[str, float] = field(default_factory=dict)
    head: int = 0
    fusion: Fusion | None = None


def load_recall_folder(path: str | Path) -> RecallFolder:
    """Load a recall folder (``deepcrossing train-recall``) through ``training.recall_model.load_recall``.

    Raises:
        InputError: no ``manifest.json`` there, or a folder ``load_recall`` refuses.
    """
    folder = Path(path)
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        raise InputError("not a recall folder (no manifest.json); make one with `deepcrossing train-recall`",
                         path=folder, field="recall")
    from deepcrossing.training.recall_model import load_recall, read_manifest

    channels: Mapping[str, ItemVectors] = load_recall(folder)
    merge = read_manifest(folder)["merge"]
    weights = merge.get("weights") if isinstance(merge, dict) else None
    days = merge.get("trending_days", TRENDING_DAYS) if isinstance(merge, dict) else TRENDING_DAYS
    half = merge.get("trending_half_life_days") if isinstance(merge, dict) else None
    head = (merge.get("head_weights") or {}) if isinstance(merge, dict) else {}
    k = merge.get("k", 100) if isinstance(merge, dict) else 100
    if (not isinstance(weights, dict) or not isinstance(head, dict)
            or not all(isinstance(w, int | float) and w >= 0 for x in (weights, head) for w in x.values())
            or not isinstance(days, int) or days < 1 or not isinstance(k, int) or k < 1
            or not (half is None or (isinstance(half, int | float) and not isinstance(half, bool) and half > 0))):
        raise InputError("merge.weights and merge.head_weights must map channels to weights >= 0, "
                         "merge.trending_days and merge.k be integers >= 1 and merge.trending_half_life_days null "
                         "or > 0; run train-recall again", path=manifest, field="merge")
    try:
        fusion = fusion_of(merge)
    except InputError as exc:
        raise InputError(exc.message, path=manifest, field=exc.field) from None
    return RecallFolder(folder.resolve(), file_sha256(manifest), dict(channels),
                        {str(c): float(w) for c, w in weights.items()}, days, None if half is None else float(half),
                        {str(c): float(w) for c, w in head.items()}, k if head else 0, fusion)


def channel_blobs(channels: Mapping[str, ItemVectors], movies: pa.Table,
                  sources: Mapping[str, Record], *, exact_below: int | None = None) -> tuple[dict[str, bytes], Record]:
    """The blobs and the ``vector_channels`` meta of a version with these channels.

    Args:
        channels: name -> ItemVectors (the name in responses and requests, e.g. ``emb``).
        movies: the version's movie feature table (``movieId`` + movie-side columns).
        sources: name -> what built it (see the module docstring).
        exact_below: graph threshold (default :data:`deepcrossing.serving.ann.EXACT_BELOW`).
    """
    ids = np.asarray(movies.column("movieId").to_numpy(), dtype=np.int64)
    blobs: dict[str, bytes] = {}
    meta: Record = {}
    for name, channel in channels.items():
        vectors = np.asarray(channel.item_vectors(movies), dtype=np.float32)
        kwargs = {} if exact_below is None else {"exact_below": exact_below}
        index = VectorIndex.build(ids, vectors, channel.metric, **kwargs)
        files = index.to_blobs()
        blobs |= {f"{PREFIX}/{name}/{file}": data for file, data in files.items()}
        meta[name] = {"metric": channel.metric, "n": int(len(ids)), "dim": int(vectors.shape[1]),
                      "index": index.kind, "files": sorted(files), "source": dict(sources.get(name, {}))}
    return blobs, meta


@dataclass(frozen=True)
class VectorChannel:
    """One vector channel of a served version.

    Attributes:
        name: the channel name; index: its item vectors and search; rows: (N,) the snapshot row of each
        index position (-1: a movie the snapshot lacks); users: the user side (an ``EmbVectors`` over the
        index's vectors for ``emb``, the recall folder's ItemVectors otherwise).
    """

    name: str
    index: VectorIndex
    rows: NDArray[np.int64]
    users: ItemVectors

    def user_vector(self, features: Record, table: Callable[[], pa.Table] | None) -> NDArray[np.float32] | None:
        """(d,) the user's vector, or ``None`` when the channel has no opinion (zero vector, cold user).

        Args:
            features: the user's feature record; table: builds the one-row user table (other channels).
        """
        if isinstance(self.users, EmbVectors):   # the fast path: no table per request
            return self.users.user_vector(features.get("userRecentPositives"))
        if table is None:
            return None
        vector = np.asarray(self.users.user_vectors(table())[0], dtype=np.float32)
        return vector if np.any(vector) else None


def _rows(ids: NDArray[np.int64], row_of: Mapping[int, int]) -> NDArray[np.int64]:
    return np.fromiter((row_of.get(int(m), -1) for m in ids), dtype=np.int64, count=len(ids))


def emb_channel(movie_ids: NDArray[Any], unit: NDArray[Any], row_of: Mapping[int, int] | None = None) -> VectorChannel:
    """The ``emb`` channel over the served model's unit item vectors (exact search up to the graph size)."""
    index = VectorIndex.build(np.asarray(movie_ids), np.asarray(unit), "cosine")
    row_of = row_of if row_of is not None else {int(m): i for i, m in enumerate(index.ids.tolist())}
    return VectorChannel("emb", index, _rows(index.ids, row_of), EmbVectors.from_unit(index.ids, index.vectors))


def load_channels(store: FeatureStore, ref: Ref, meta: Record, row_of: Mapping[int, int], *,
                  model_version: str | None, recall: RecallFolder | None,
                  emb_fallback: Callable[[], VectorChannel]) -> dict[str, VectorChannel]:
    """The vector channels of version ``ref``, blobs checked by SHA-256 and sources by identity.

    Args:
        store, ref, meta: the version; row_of: movie id -> snapshot row.
        model_version: the served model's fingerprint (``emb`` built by another model is rebuilt).
        recall: the recall folder the service loaded (``None``: none).
        emb_fallback: builds the ``emb`` channel from the served model.

    Raises:
        StoreError: a blob that differs from what was published, or a recall folder other than the loaded one.
    """
    out: dict[str, VectorChannel] = {}
    for name, info in (meta.get("vector_channels") or {}).items():
        source = info.get("source") or {}
        if source.get("kind") == "emb" and source.get("model") != model_version:
            out[name] = emb_fallback()
            continue
        if source.get("kind") == "recall":
            if recall is None or recall.checksum != source.get("manifest_sha256") or name not in recall.channels:
                loaded = "none" if recall is None else f"{recall.path} (manifest {recall.checksum[:12]})"
                raise StoreError(f"{store.url} {ref}: its {name} vectors were built by the recall folder "
                                 f"{source.get('path')} (manifest {str(source.get('manifest_sha256'))[:12]}), but "
                                 f"the service loaded {loaded}; serve with that --recall folder or publish again")
        blobs = {file: store.blob(ref, f"{PREFIX}/{name}/{file}", meta) for file in info.get("files", ())}
        try:
            index = VectorIndex.from_blobs(blobs)
        except (InputError, KeyError) as exc:
            raise StoreError(f"{store.url} {ref}: the {name} vectors cannot be read ({exc})") from None
        users: ItemVectors = (EmbVectors.from_unit(index.ids, index.vectors) if source.get("kind") == "emb"
                              else recall.channels[name])  # type: ignore[union-attr]
        out[name] = VectorChannel(name, index, _rows(index.ids, row_of), users)
    return out


def load_merge(store: FeatureStore, ref: Ref, meta: Record, movie_ids: NDArray[np.int64],
               candidate_rows: NDArray[np.int64], genre_masks: Mapping[str, NDArray[np.bool_]],
               channels: Mapping[str, VectorChannel], recall: RecallFolder | None
               ) -> tuple[Merge, Prior | None, Head]:
    """The recall folder's validated merge as the version can serve it, and the :class:`Prior` its built-in
    channels read (popularity = the candidates, genres = their masks, trending = the version's list).

    Returns:
        ``((channel, weight), ...)`` (every channel with a weight or a head weight > 0; for a fusion, its
        channels with their warm weights, in ``fusion.names`` order), the prior, and the
        head ``(size, (head weight per merge entry, ...))`` (``(0, ())``: none); ``((), None, (0, ()))`` when
        there is no recall folder or the version lacks a channel the merge needs (published without
        ``--recall``): the default plan then stays :func:`deepcrossing.serving.recall.default_plan`.

    Raises:
        StoreError: the trending list differs from what was published.
    """
    if recall is None or not (recall.merge or recall.fusion):
        return (), None, (0, ())
    head: Head = (0, ())
    if recall.fusion is not None:     # the fused channels (warm weights here; merged_rows reads the fusion)
        used = tuple((name, float(recall.fusion.weights.get(name, 0.0))) for name in recall.fusion.names)
    else:
        names = [n for n in dict.fromkeys([*recall.merge, *recall.head_weights])
                 if recall.merge.get(n, 0) > 0 or recall.head_weights.get(n, 0) > 0]
        used = tuple((name, float(recall.merge.get(name, 0.0))) for name in names)
        if recall.head:
            head = (recall.head, tuple(float(recall.head_weights.get(n, 0.0)) for n in names))
    has_trending = TRENDING_BLOB in (meta.get("blobs") or {})
    servable = {*channels, "genres", "popularity", *(("trending",) if has_trending else ())}
    if not used or any(name not in servable for name, _ in used):
        return (), None, (0, ())
    trending = np.zeros(0, dtype=np.int64)
    if has_trending:
        trending = np.frombuffer(store.blob(ref, TRENDING_BLOB, meta), dtype="<i8").astype(np.int64)
    return used, Prior(movie_ids[candidate_rows], dict(genre_masks), trending), head
