"""Samples from a normalized Dataset: split, point-in-time features, files and manifest.

``build_samples`` runs :func:`deepcrossing.features.sql.feature_sql` once over all ratings (so features of
valid/test rows see every earlier rating, test period included, up to the sample), assigns each row to
train/valid/test and streams the rows into one Parquet file per split in a temporary folder that replaces
``out_dir`` only when complete. The SQL runs on DuckDB (default) or on Apache Spark
(:mod:`deepcrossing.features.spark`): both render the same query and feed the same writer. The online
records (features as of now) are in :mod:`deepcrossing.features.online`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from deepcrossing.data.schema import Dataset
from deepcrossing.duck import sql_str
from deepcrossing.errors import InputError
from deepcrossing.features.columns import EXTRA_COLUMNS, MOVIE_SIDE, USER_ATTRIBUTES, USER_SIDE, sample_columns
from deepcrossing.features.config import FeatureConfig
from deepcrossing.features.inputs import DuckEngine, SqlEngine
from deepcrossing.features.inputs import connect as _connect
from deepcrossing.features.inputs import events_genre_bits as _genre_bits
from deepcrossing.features.inputs import fetch_one
from deepcrossing.features.inputs import genre_vocabulary as _genres
from deepcrossing.features.inputs import register_inputs as _register_inputs
from deepcrossing.features.nested import assemble
from deepcrossing.features.sql import (
    SPLIT_BUCKETS,
    feature_sql,
    flat_columns,
    flat_schema,
    random_split_sql,
    time_split_sql,
)
from deepcrossing.outputs import OutputKind, Reservation, owned_dir

if TYPE_CHECKING:
    from deepcrossing.features.spark import SparkOptions

FORMAT_VERSION = 2  # 2: the random split hashes with md5 (the same in DuckDB and Spark), not DuckDB's hash()
SPLIT_NAMES = ("train", "valid", "test")
FORMATS = ("parquet", "sparrow")
ENGINES = ("duckdb", "spark")
KIND = "deepcrossing.samples"
#: A samples folder: its manifest.json says ``"kind": "deepcrossing.samples"`` and lists the files it wrote.
SAMPLES_OUTPUT = OutputKind(
    "samples folder", "manifest.json", lambda m: m.get("kind") == KIND,
    lambda m: [str(name) for name in m["files"].values()] + [".parts"])
_ROW_GROUP = 1 << 17


def _split_expr(engine: SqlEngine, config: FeatureConfig) -> tuple[str, dict[str, Any]]:
    """SQL expression naming each row's split (rendered for the engine), and the boundaries for the manifest."""
    f_train, f_valid, _ = config.fractions
    if config.split == "random":
        return random_split_sql(config.seed, config.fractions, engine.dialect), {
            "rule": "md5 of 'userId:movieId:timestamp:seed' per rating: its first 12 hex digits as an integer, "
                    f"modulo {SPLIT_BUCKETS}, below round(train * {SPLIT_BUCKETS}) is train, below "
                    f"round((train + valid) * {SPLIT_BUCKETS}) valid, else test (the same in DuckDB and Spark)",
            "seed": config.seed}
    lo, hi, n = fetch_one(engine, "SELECT MIN(timestamp), MAX(timestamp), COUNT(*) FROM ratings_src")
    # the boundary is the timestamp of the k-th row (0-based) in time order; past the end: after the last row
    ks = [int(math.floor(q * n + 1e-9)) for q in (f_train, f_train + f_valid)]
    inside = [k for k in ks if k < n]
    found = dict(zip(inside, fetch_one(engine, engine.dialect.kth_smallest("timestamp", "ratings_src", inside))
                     if inside else (), strict=True))
    cuts = [int(found[k]) if k < n else int(hi) + 1 for k in ks]
    b1, b2 = cuts
    expr = time_split_sql(b1, b2)

    def iso(t: int) -> str:
        return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()

    return expr, {
        "rule": "with n rows in time order, valid_start is the timestamp of row floor(n * train) and test_start of "
                "row floor(n * (train + valid)) (0-based); train: timestamp < valid_start; valid: valid_start <= "
                "timestamp < test_start; test: the rest (rows tied with a boundary go to the later split, so no "
                "second spans two splits)",
        "valid_start": b1, "valid_start_iso": iso(b1), "test_start": b2, "test_start_iso": iso(b2),
        "first_timestamp": int(lo), "last_timestamp": int(hi),
    }


def build_samples(
    dataset: Dataset,
    config: FeatureConfig | None = None,
    out_dir: str | Path | Reservation = "samples",
    fmt: str = "parquet",
    *,
    overwrite: bool = False,
    spark: SparkOptions | None = None,
) -> dict[str, Any]:
    """Write train/valid/test samples, ``items.parquet`` and ``manifest.json`` into ``out_dir``.

    Every feature of a row at time t is computed from ratings strictly before t, over ALL ratings (so a
    test row sees earlier test-period ratings of its user, but nothing at or after t). ``out_dir`` is
    replaced as a whole only when everything is written; a failure leaves the previous output intact. It must
    be new, empty or a previous samples folder (see :mod:`deepcrossing.outputs`; other files in it are kept).

    Args:
        dataset: normalized ratings/items (from :func:`deepcrossing.data.load_dataset`).
        config: :class:`FeatureConfig` (defaults: threshold 3.5, N=10, time split 80/10/10).
        out_dir: the output folder, or a :class:`~deepcrossing.outputs.Reservation` of it that the caller
            holds (the CLI reserves it before reading the data).
        fmt: ``"parquet"`` (``train.parquet`` ... with :func:`sample_columns`: the user attributes only when
            ``dataset.users`` is set) or ``"sparrow"``
            (``train.csv`` ... in SparrowRecSys's 27-column layout).
        overwrite: write into a folder of other files (they are kept; a name clash is refused).
        spark: run the feature SQL on Apache Spark with these options (None: DuckDB, the default). The files,
            their schema and every value are the same (floats to rounding); needs ``pip install
            'deepcrossing[spark]'`` and a Java 17 runtime.

    Returns:
        The manifest dict (also written to ``manifest.json``): rows and positive rate per split, split
        boundaries, share of valid/test users unseen in train, source checksums, features with types.

    Example:
        >>> ds = load_dataset("ml-latest-small", workdir="w")                    # doctest: +SKIP
        >>> m = build_samples(ds, FeatureConfig(), "samples")                     # doctest: +SKIP
        >>> m["splits"]["train"]["rows"]  # doctest: +SKIP
        80668
    """
    config = config or FeatureConfig()
    if fmt not in FORMATS:
        raise InputError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}", field="format")
    started = time.perf_counter()
    target = out_dir if isinstance(out_dir, Reservation) else Path(out_dir)
    with contextlib.ExitStack() as stack:
        # DuckDB runs the feature SQL, or with Spark only reads the written files back (statistics, CSVs)
        con = stack.enter_context(_connect(config))
        engine: SqlEngine = DuckEngine(con)
        if spark is not None:
            from deepcrossing.features.spark import spark_engine

            engine = stack.enter_context(spark_engine(spark))
        tmp = stack.enter_context(owned_dir(target, SAMPLES_OUTPUT, inputs=(dataset.ratings, dataset.items),
                                            overwrite=overwrite))
        n_ratings = _register_inputs(engine, dataset)
        genres = _genres(engine)
        split_expr, boundaries = _split_expr(engine, config)
        engine.execute(engine.dialect.create_view("events", "SELECT user_id, item_id, rating, label, timestamp, "
                                                            "FALSE AS is_probe FROM ratings_src"))
        bits = _genre_bits(engine)
        attrs = dataset.users is not None  # static user attributes from the users table (ml-100k, ml-1m)
        query = feature_sql(genres, label_threshold=config.label_threshold, recent_n=config.recent_n,
                            genre_bits=bits, dialect=engine.dialect, user_attributes=attrs, **config.sql_settings())
        parts = tmp / ".parts"
        parts.mkdir()
        files = {name: (tmp if fmt == "parquet" else parts) / f"{name}.parquet" for name in SPLIT_NAMES}
        # no global ORDER BY: sorting every wide row would double the work and spill at 20M rows; the rows of
        # a file are the same on every run, their order is not (sort by timestamp when it matters)
        flat = flat_columns(len(genres), config.recent_n, bits, attrs)
        scratch = parts / "engine"
        scratch.mkdir()
        batches = engine.batches(f"SELECT {', '.join(flat)}, {split_expr} AS split FROM ({query}) q", scratch,
                                 flat_schema(len(genres), config.recent_n, bits, attrs))
        _write_splits(batches, files, lambda batch: assemble(batch, genres, config.recent_n, bits))
        stats = _split_stats(con, files)
        if fmt == "sparrow":
            from deepcrossing.features.sparrow import write_sparrow_csv

            for name, path in files.items():
                write_sparrow_csv(con, f"read_parquet({sql_str(path)})", tmp / f"{name}.csv")
        shutil.rmtree(parts, ignore_errors=True)
        shutil.copyfile(dataset.items, tmp / "items.parquet")
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "format": fmt,
            "engine": engine.describe(),
            "files": {name: f"{name}.{'parquet' if fmt == 'parquet' else 'csv'}" for name in SPLIT_NAMES}
            | {"items": "items.parquet"},
            "dataset": {"name": dataset.name, "ratings": n_ratings, "sources": dict(dataset.sources),
                        "skipped_rows": dict(dataset.skipped_rows)},
            "config": config.to_dict(),
            "split": {"kind": config.split, "fractions": list(config.fractions), **boundaries},
            "splits": stats["splits"],
            "unseen_users": stats["unseen"],
            "features": [
                {"name": name, "type": kind, "meaning": meaning,
                 "side": "user" if name in USER_SIDE or name in USER_ATTRIBUTES
                 else "movie" if name in MOVIE_SIDE else "sample",
                 "extra": name in EXTRA_COLUMNS or name in USER_ATTRIBUTES}
                | ({"static": True} if name in USER_ATTRIBUTES else {})
                for name, (kind, meaning) in sample_columns(attrs).items()
            ],
            "point_in_time": "every feature of a row at time t uses only ratings with timestamp < t, over all "
                             "splits (valid/test rows see earlier valid/test ratings, never the future)"
                             + ("; the user attributes (static: true) are the users table as of its export, "
                                "the same at every t" if attrs else ""),
            "genres": genres,
            "elapsed_seconds": round(time.perf_counter() - started, 3),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _write_splits(batches: Iterable[pa.RecordBatch], files: dict[str, Path],
                  finish: Callable[[pa.RecordBatch], pa.RecordBatch]) -> None:
    """Stream the engine's Arrow batches into one Parquet file per split (bounded memory).

    Each flat batch is cut by its ``split`` column first (flat integer columns filter ~10x cheaper than the
    nested lists and maps ``assemble`` builds: at 20M rows filtering after it cost ~18 CPU-s), then each part
    gets the nested user columns with ``finish`` (:func:`deepcrossing.features.nested.assemble`). The engine
    computes (DuckDB: 2 threads) while this thread cuts and assembles, and one writer thread writes the
    previous batch's parts with pyarrow (which releases the GIL): building batch k + 1 overlaps writing batch
    k, at most two batches are in flight, and the files get the batches in the engine's order, as a single
    thread would write them. The same for every engine.
    """
    writers: dict[str, pq.ParquetWriter] = {}
    schema: pa.Schema | None = None

    def write(parts: dict[str, pa.RecordBatch]) -> None:
        for name, part in parts.items():
            if name not in writers:
                writers[name] = pq.ParquetWriter(files[name], part.schema, compression="zstd",
                                                 use_dictionary=_dictionary_columns(part.schema))
            writers[name].write_batch(part, row_group_size=_ROW_GROUP)

    try:
        with ThreadPoolExecutor(1, thread_name_prefix="samples-writer") as writer:
            pending: Future[None] | None = None
            for batch in batches:
                parts = {name: finish(part) for name, part in _by_split(batch)}
                if parts:
                    schema = next(iter(parts.values())).schema
                if pending is not None:
                    pending.result()  # re-raises a failed write here
                pending = writer.submit(write, parts)
            if pending is not None:
                pending.result()
        for name in SPLIT_NAMES:  # empty splits still get a file with the schema
            if name not in writers and schema is not None:
                writers[name] = pq.ParquetWriter(files[name], schema, compression="zstd",
                                                 use_dictionary=_dictionary_columns(schema))
    finally:
        for w in writers.values():
            w.close()


def _by_split(batch: pa.RecordBatch) -> Iterator[tuple[str, pa.RecordBatch]]:
    """The non-empty parts of a batch per split name, without the ``split`` column (a batch of one split, the
    usual case under the time split, is passed on whole)."""
    if batch.num_rows == 0:
        return
    split = batch.column("split")
    batch = batch.drop_columns(["split"])
    for name in SPLIT_NAMES:
        mask = pc.equal(split, name)
        n = pc.sum(mask).as_py() or 0
        if n == batch.num_rows:
            yield name, batch
            return
        if n:
            yield name, batch.filter(mask)


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Dictionary-encode the string/list columns only: on the float/count columns it cost CPU for no gain."""
    return [f.name for f in schema if not (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))]


def _split_stats(con: duckdb.DuckDBPyConnection, files: dict[str, Path]) -> dict[str, Any]:
    splits = {}
    for name, path in files.items():
        rows, pos, users, t0, t1 = fetch_one(
            con, f"SELECT COUNT(*), AVG(label), COUNT(DISTINCT userId), MIN(timestamp), MAX(timestamp) "
            f"FROM read_parquet({sql_str(path)})")
        splits[name] = {"rows": int(rows), "positive_rate": None if pos is None else round(float(pos), 6),
                        "users": int(users), "first_timestamp": t0, "last_timestamp": t1}
    unseen = {}
    for name in ("valid", "test"):
        share = fetch_one(
            con, f"SELECT AVG(CASE WHEN t.userId IS NULL THEN 1.0 ELSE 0.0 END) FROM "
            f"(SELECT DISTINCT userId FROM read_parquet({sql_str(files[name])})) s "
            f"LEFT JOIN (SELECT DISTINCT userId FROM read_parquet({sql_str(files['train'])})) t "
            f"ON s.userId = t.userId")[0]
        unseen[f"{name}_users_not_in_train_share"] = None if share is None else round(float(share), 6)
    return {"splits": splits, "unseen": unseen}


def compute_samples(dataset: Dataset, config: FeatureConfig | None = None) -> pa.Table:
    """All samples in memory (no split, no files), sorted by (timestamp, userId, movieId); for small data.

    Args:
        dataset: normalized ratings/items.
        config: the :class:`FeatureConfig` (threshold, N).

    Returns:
        A pyarrow Table with :func:`sample_columns` (the user attributes when ``dataset.users``), one row per
        rating.

    Example:
        >>> compute_samples(dataset).num_rows == ratings_count  # doctest: +SKIP
        True
    """
    config = config or FeatureConfig()
    with _connect(config) as con:
        _register_inputs(con, dataset)
        con.execute("CREATE VIEW events AS SELECT user_id, item_id, rating, label, timestamp, "
                    "FALSE AS is_probe FROM ratings_src")
        genres, bits = _genres(con), _genre_bits(con)
        query = feature_sql(genres, label_threshold=config.label_threshold, recent_n=config.recent_n,
                            genre_bits=bits, user_attributes=dataset.users is not None, **config.sql_settings())
        table = con.sql(f"SELECT * EXCLUDE (is_probe) FROM ({query}) "
                        "ORDER BY timestamp, userId, movieId").to_arrow_table()
        return assemble(table, genres, config.recent_n, bits)
