"""The Spark engine: the feature SQL of :mod:`deepcrossing.features.sql`, rendered for Spark SQL, run by pyspark.

``prepare --engine spark`` (``build_samples(..., spark=SparkOptions(...))``) runs the same query as DuckDB
(rendered with :data:`~deepcrossing.features.dialect.SPARK`) over the normalized ``ratings.parquet`` /
``items.parquet``. Spark writes the flat query result as Parquet part files into the samples folder's temporary
space; they are streamed back batch by batch (bounded memory at any scale), cast to the DuckDB column types,
and go through the same :func:`~deepcrossing.features.nested.assemble` and writer as DuckDB's batches, so the
samples folder (one file per split, manifest, ``--format sparrow``) is the same.

pyspark is the optional extra ``pip install 'deepcrossing[spark]'`` and needs a Java 17 runtime;
:func:`require_spark` says which is missing before any work. With a cluster master (not ``local[...]``) the
normalized files and the output folder must be on a file system that the driver and every executor see at
the same path (NFS, a mounted bucket): Spark reads the inputs and writes its part files there.

Example:
    >>> SparkOptions(master="local[2]", conf=(("spark.sql.shuffle.partitions", "4"),)).settings()[
    ...     "spark.sql.shuffle.partitions"]
    '4'
    >>> SparkOptions().settings()["spark.sql.session.timeZone"]
    'UTC'
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.dataset as pds

from deepcrossing.errors import DeepCrossingError, InputError
from deepcrossing.features.dialect import SPARK, Dialect
from deepcrossing.features.inputs import BATCH_ROWS

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

INSTALL_PYSPARK = "pip install 'deepcrossing[spark]'"
INSTALL_JAVA = "apt-get install openjdk-17-jre-headless (or set JAVA_HOME to a Java 17 runtime)"
_SIZE = re.compile(r"^\d+[kmgt]?$", re.IGNORECASE)


def _local_cores(master: str) -> int:
    """Worker threads of a ``local[N]`` / ``local[*]`` master (the machine's cores for ``*``); 0 otherwise."""
    found = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\d+)?\])?", master.strip())
    if not found:
        return 0
    n = found.group(1)
    return os.cpu_count() or 1 if n in (None, "*") else max(int(n), 1)


@dataclass(frozen=True)
class SparkOptions:
    """Where and how Spark runs the feature SQL.

    Args:
        master: the Spark master URL (``local[*]``: one JVM, every core; ``spark://...``, ``yarn``, ``k8s://...``).
        conf: any Spark settings as ``(key, value)`` pairs (``--spark-conf key=value``); they win over the
            defaults below.
        driver_memory: ``spark.driver.memory`` (e.g. ``"4g"``); only takes effect when this process starts the
            JVM (not for a session that already runs).

    The defaults: session time zone UTC, Spark UI off, ``spark.sql.shuffle.partitions`` = 2 x the local
    cores (Spark's 200 is slow on one machine; 200 on a cluster master), ANSI SQL left on (Spark 4's default:
    an overflow is an error, not a wrong number).

    Raises:
        InputError: a bad driver memory size or an empty key.
    """

    master: str = "local[*]"
    conf: tuple[tuple[str, str], ...] = ()
    driver_memory: str | None = None

    def __post_init__(self) -> None:
        if not self.master.strip():
            raise InputError("the Spark master must not be empty (e.g. local[*])", field="spark_master")
        if self.driver_memory is not None and not _SIZE.match(self.driver_memory.strip()):
            raise InputError(f"driver memory must be a size such as 4g, not {self.driver_memory!r}",
                             field="driver_memory")
        for key, _ in self.conf:
            if not key.strip():
                raise InputError("a Spark setting needs a key: --spark-conf key=value", field="spark_conf")

    @staticmethod
    def parse_conf(items: list[str]) -> tuple[tuple[str, str], ...]:
        """``["k=v", ...]`` (``--spark-conf``) as pairs.

        Raises:
            InputError: naming the item without ``=`` or with an empty key.

        Example:
            >>> SparkOptions.parse_conf(["spark.driver.memory=4g", "a.b=x=y"])
            (('spark.driver.memory', '4g'), ('a.b', 'x=y'))
        """
        pairs = []
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise InputError(f"--spark-conf needs key=value, not {item!r}", field="spark_conf")
            pairs.append((key.strip(), value))
        return tuple(pairs)

    def settings(self) -> dict[str, str]:
        """Every Spark setting this run uses: the defaults, the driver memory, then :attr:`conf`."""
        cores = _local_cores(self.master)
        out = {
            "spark.sql.session.timeZone": "UTC",
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.shuffle.partitions": str(2 * cores if cores else 200),
        }
        if self.driver_memory:
            out["spark.driver.memory"] = self.driver_memory.strip()
        out.update(dict(self.conf))
        return out


def require_spark() -> None:
    """Fail fast, with one line saying what to install, when pyspark or a Java runtime is missing.

    Raises:
        DeepCrossingError: pyspark cannot be imported, or no ``java`` on ``PATH`` / under ``JAVA_HOME``.
    """
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise DeepCrossingError(f"--engine spark needs pyspark, which is not installed: {INSTALL_PYSPARK}") from None
    home = os.environ.get("JAVA_HOME", "")
    if not (home and Path(home, "bin", "java").is_file()) and shutil.which("java") is None:
        raise DeepCrossingError("--engine spark needs a Java 17 runtime, and there is no `java` on PATH nor under "
                                f"JAVA_HOME: {INSTALL_JAVA}")


@contextlib.contextmanager
def spark_engine(options: SparkOptions) -> Iterator[SparkEngine]:
    """A :class:`SparkEngine` on the active SparkSession, or on a new one (stopped at the end) from ``options``.

    Raises:
        DeepCrossingError: see :func:`require_spark`.
    """
    require_spark()
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        yield SparkEngine(active)
        return
    builder = SparkSession.builder.master(options.master).appName("deepcrossing-prepare")
    for key, value in options.settings().items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield SparkEngine(session)
    finally:
        session.stop()


@dataclass(frozen=True)
class SparkEngine:
    """:class:`~deepcrossing.features.inputs.SqlEngine` over a SparkSession."""

    session: SparkSession

    @property
    def dialect(self) -> Dialect:
        return SPARK

    def execute(self, sql: str) -> None:
        self.session.sql(sql)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self.session.sql(sql).collect()]

    def parquet_view(self, name: str, path: Path) -> None:
        self.session.read.parquet(str(Path(path).resolve())).createOrReplaceTempView(name)

    def batches(self, sql: str, scratch: Path, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        """Spark writes the result as Parquet part files under ``scratch``; they are read back batch by batch
        (never collected whole on the driver) and cast to ``schema`` (Spark's Parquet has e.g. non-null
        fields, ``INT`` for ``TINYINT`` reads back as int8 only by annotation: the cast makes it exact).

        One part file and one batch ahead, without pre-buffering: Spark's row groups are ~1.1M rows (~165 MB
        decoded), and with pyarrow's default read-ahead (4 files x 16 batches, pre-buffered) the driver
        peaked at 10.4 GB RSS while reading back 20M samples; reading those same part files bounded takes
        1.3 GB peak (benchmarks/scale.py's 20M run, 2026-11-30)."""
        out = Path(scratch).resolve() / "result"
        self.session.sql(sql).write.parquet(str(out))
        dataset = pds.dataset(str(out), format="parquet")  # part files only: _SUCCESS and .crc are ignored
        for batch in dataset.to_batches(batch_size=BATCH_ROWS, columns=schema.names, fragment_readahead=1,
                                        batch_readahead=1, fragment_scan_options=pds.ParquetFragmentScanOptions(
                                            pre_buffer=False)):
            if batch.num_rows:
                yield batch.cast(schema)

    def describe(self) -> dict[str, str]:
        return {"name": "spark", "version": self.session.version,
                "master": str(self.session.sparkContext.master)}
