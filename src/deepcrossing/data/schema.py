"""The one normalized schema every reader produces, whatever the source layout.

A :class:`Dataset` points at two (optionally three) Parquet files written by a reader:

ratings.parquet  user_id BIGINT, item_id BIGINT, rating DOUBLE (NULL when the source has only a label),
                 label TINYINT (NULL unless the source gave an explicit 0/1 label column),
                 timestamp BIGINT (unix seconds). No duplicate (user_id, item_id, timestamp).
items.parquet    item_id BIGINT, title VARCHAR, year INTEGER (NULL when unknown), genres VARCHAR[]
                 ("(no genres listed)" becomes an empty list), imdb_id VARCHAR, tmdb_id VARCHAR (from
                 MovieLens's links.csv when present, as text: leading zeros kept; NULL otherwise). Every
                 ratings.item_id is present here (readers synthesize a bare row, title NULL, for logs given
                 without an items file).
users.parquet    optional (ml-1m, ml-100k): user_id BIGINT, gender VARCHAR, age INTEGER, occupation VARCHAR,
                 zip VARCHAR.

Downstream stages (features, serving) read these files with DuckDB; they never see raw layouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

RATINGS_COLUMNS = ("user_id", "item_id", "rating", "label", "timestamp")
ITEMS_COLUMNS = ("item_id", "title", "year", "genres", "imdb_id", "tmdb_id")


@dataclass(frozen=True)
class Dataset:
    """Normalized rating logs on disk.

    Args:
        name: where it came from, e.g. ``"ml-latest-small"``, ``"ml-1m"``, ``"synthetic"``, ``"custom"``.
        ratings: path of ``ratings.parquet`` (schema above).
        items: path of ``items.parquet``.
        users: path of ``users.parquet`` or ``None``.
        sources: source file name -> sha256 hex digest, for manifests.
        rating_scale: (min, max) of valid ratings, or ``None`` for label-only logs.
        skipped_rows: bad rows skipped under ``--skip-bad-rows``, by file name.
    """

    name: str
    ratings: Path
    items: Path
    users: Path | None = None
    sources: dict[str, str] = field(default_factory=dict)
    rating_scale: tuple[float, float] | None = (0.5, 5.0)
    skipped_rows: dict[str, int] = field(default_factory=dict)
