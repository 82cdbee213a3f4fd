"""One store version as the scorer needs it: movie rows, candidate rows and the movie-side partials.

A :class:`Snapshot` is built once per model load and per publish (:func:`build_snapshot`) and keyed on the
version's :class:`~deepcrossing.serving.store.Ref` (number and unique id), never on the number alone.

Example:
    >>> s = pa.schema([("userId", pa.int64()), ("userRatingCount", pa.int64()),
    ...                ("userRecentPositives", pa.list_(pa.int64())), ("userAvgRating", pa.float64())])
    >>> empty_features(s, "userId", 7)
    {'userId': 7, 'userRatingCount': 0, 'userRecentPositives': [], 'userAvgRating': None}
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from deepcrossing.features.columns import cold_features, side_of
from deepcrossing.serving.channels import RecallFolder, VectorChannel, emb_channel, load_channels, load_merge
from deepcrossing.serving.itemcf import ItemCF, load_itemcf
from deepcrossing.serving.publish import schema_from_json
from deepcrossing.serving.scorer import ItemPart, Scorer
from deepcrossing.serving.store import FeatureStore, Record, Ref, StoreError
from deepcrossing.training.retrieval import Prior
from deepcrossing.training.retrieval_fusion import Fusion


def empty_features(schema: pa.Schema, id_name: str, id_value: int) -> dict[str, Any]:
    """The schema's columns of a cold-start user / unknown movie (``id_name``'s side), from the column
    definitions (:func:`deepcrossing.features.columns.cold_features`: counts 0, lists/maps empty, else null).

    Example:
        >>> s = pa.schema([("userId", pa.int64()), ("userRatingCount", pa.int64()),
        ...                ("userRecentPositives", pa.list_(pa.int64())), ("userAvgRating", pa.float64())])
        >>> empty_features(s, "userId", 7)
        {'userId': 7, 'userRatingCount': 0, 'userRecentPositives': [], 'userAvgRating': None}
    """
    cold = cold_features(side_of(id_name), id_value, user_attributes=True)   # NULL attributes if published
    return {f.name: cold[f.name] for f in schema}


@dataclass(frozen=True)
class Snapshot:
    """One store version as the scorer needs it (built once per model load and per publish).

    Attributes:
        ref: the store version (number and unique id): what everything is keyed on.
        meta: its meta object.
        movie_ids: (M,) int64 movie ids, sorted.
        titles, genres, years: per movie row, for display.
        movie_table: (M rows) movie-side feature table (for the plain path).
        candidate_rows: (C,) int64 rows of the candidate movies, most popular first.
        items: the movie-side partials (M rows).
        unit: (M, H) L2-normalized ``items.p`` rows, for similar-movie neighbours.
        user_schema, movie_schema: Arrow schemas of the published features.
        row_of: movie id -> row.
        channels: the version's vector recall channels (name -> :class:`VectorChannel`; empty when it was
            published without vectors).
        genre_masks: genre -> (C,) bool mask over ``candidate_rows`` (the ``genres`` channel).
        merge, prior, merge_head: the recall folder's validated merge, what its built-in channels read and
            its head (:func:`~deepcrossing.serving.channels.load_merge`; ``()``: the default plan); fusion:
            the folder's score fusion when its merge rule is ``fusion`` and the version serves it (else ``None``).
        itemcf: the version's co-occurrence lists (:func:`~deepcrossing.serving.itemcf.load_itemcf`), loaded
            only for a model reading ``userItemCFScore`` (else ``None``).
    """

    ref: Ref
    meta: Record
    movie_ids: np.ndarray
    titles: list[str | None]
    genres: list[list[str]]
    years: list[int | None]
    movie_table: pa.Table
    candidate_rows: np.ndarray
    items: ItemPart
    unit: torch.Tensor
    user_schema: pa.Schema
    movie_schema: pa.Schema
    row_of: dict[int, int] = field(repr=False, default_factory=dict)
    channels: dict[str, VectorChannel] = field(repr=False, default_factory=dict)
    genre_masks: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    merge: tuple[tuple[str, float], ...] = ()
    merge_head: tuple[int, tuple[float, ...]] = (0, ())
    prior: Prior | None = field(repr=False, default=None)
    itemcf: ItemCF | None = field(repr=False, default=None)
    fusion: Fusion | None = field(repr=False, default=None)

    @property
    def version(self) -> int:
        """The version number (shown as ``storeVersion``)."""
        return self.ref.version


def _genre_masks(genres: list[list[str]], candidate_rows: np.ndarray) -> dict[str, np.ndarray]:
    masks: dict[str, np.ndarray] = {}
    for i, row in enumerate(candidate_rows.tolist()):
        for genre in genres[row]:
            masks.setdefault(genre, np.zeros(len(candidate_rows), dtype=bool))[i] = True
    return masks


def build_snapshot(store: FeatureStore, scorer: Scorer, ref: Ref, *, verify: bool, model_version: str | None = None,
                   recall: RecallFolder | None = None) -> Snapshot:
    """Read version ``ref`` whole (verified first when ``verify``) and compute its movie-side partials; load
    its vector channels (blobs checked by SHA-256 always, :func:`~deepcrossing.serving.channels.load_channels`).

    Args:
        model_version: the served model's fingerprint (a version's ``emb`` vectors of another model are
            rebuilt from this model's partials).
        recall: the recall folder the service loaded (a version built from another one is refused).

    Raises:
        StoreError: the version fails verification, a blob's checksum or the recall folder's identity;
            VersionGone: it was deleted while we read it.
    """
    meta = store.verify(ref) if verify else store.meta(version=ref)
    user_schema = schema_from_json(meta["user_schema"])
    movie_schema = schema_from_json(meta["movie_schema"])
    records = sorted(store.iter_movies(version=ref), key=lambda kv: kv[0])
    movie_ids = np.fromiter((k for k, _ in records), dtype=np.int64, count=len(records))
    movie_table = pa.Table.from_pylist([r["features"] for _, r in records], schema=movie_schema)
    itemcf = load_itemcf(store, ref, meta) if scorer.reads_itemcf else None   # a model without it: no read
    items = scorer.items(movie_table, itemcf)
    row_of = {int(m): i for i, m in enumerate(movie_ids)}
    candidates = store.get_candidates(version=ref)
    candidate_rows = np.fromiter((row_of[c] for c in candidates if c in row_of), dtype=np.int64)
    unit = torch.nn.functional.normalize(items.p, dim=1)
    channels = load_channels(store, ref, meta, row_of, model_version=model_version, recall=recall,
                             emb_fallback=lambda: emb_channel(movie_ids, unit.numpy(), row_of))
    genres = [r.get("genres") or [] for _, r in records]
    genre_masks = _genre_masks(genres, candidate_rows)
    merge, prior, merge_head = load_merge(store, ref, meta, movie_ids, candidate_rows, genre_masks, channels, recall)
    return Snapshot(
        ref=ref, meta=meta, movie_ids=movie_ids,
        titles=[r.get("title") for _, r in records], genres=genres,
        years=[r.get("year") for _, r in records], movie_table=movie_table, candidate_rows=candidate_rows,
        items=items, unit=unit, user_schema=user_schema, movie_schema=movie_schema, row_of=row_of,
        channels=channels, genre_masks=genre_masks, merge=merge, prior=prior, merge_head=merge_head, itemcf=itemcf,
        fusion=recall.fusion if merge and recall is not None else None,
    )


def rescore_snapshot(snapshot: Snapshot, scorer: Scorer, store: FeatureStore | None = None) -> Snapshot:
    """The same store version's snapshot for another model: the movie-side partials are recomputed from the
    rows already in memory (no store read, so a model reload never depends on the store, except for a model
    reading ``userItemCFScore`` when the snapshot has no item-CF data yet: read from ``store`` then), and the
    ``emb`` channel from them (its vectors are the model's).

    Raises:
        StoreError: the model reads ``userItemCFScore`` and the version has no item-CF data (or no ``store``).
    """
    itemcf = snapshot.itemcf
    if itemcf is None and scorer.reads_itemcf:
        if store is None:
            raise StoreError(f"{snapshot.ref}: the model reads userItemCFScore; its item-CF data needs the store")
        itemcf = load_itemcf(store, snapshot.ref, snapshot.meta)
    items = scorer.items(snapshot.movie_table, itemcf)
    unit = torch.nn.functional.normalize(items.p, dim=1)
    channels = dict(snapshot.channels)
    if "emb" in channels:
        channels["emb"] = emb_channel(snapshot.movie_ids, unit.numpy(), snapshot.row_of)
    return replace(snapshot, items=items, unit=unit, channels=channels, itemcf=itemcf)
