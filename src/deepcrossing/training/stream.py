"""Out-of-core training samples (``train --stream``): a Parquet train file read a few row groups at a time.

Memory holds one window of ``window`` row groups (read with ``pre_buffer=False``, only the spec's columns and
the label), encoded, plus the rows carried over to the next window; never the file. Per epoch the order of
the row groups is shuffled, and the rows within each window (an approximation of a full shuffle whose
quality grows with the window; rows of one row group were written close in time). Under DDP the row groups
are dealt round-robin to the ranks (group i to rank i mod W) and every rank reads as many rows as the rank
with the fewest, so all run the same number of steps.

The encoder is fitted in one streaming pass before training (:func:`fit_streaming`; exactness in
:mod:`deepcrossing.encoding.streaming`).

:func:`should_stream` decides the automatic switch: the train file's uncompressed size (from the Parquet
footer) over the memory budget.

Example:
    >>> stream = ParquetStream("train.parquet", encoder, None, StreamOptions(window=4))   # doctest: +SKIP
    >>> for batch in stream.batches(epoch=0, batch_size=1024, rows=stream.rows, generator=g):  # doctest: +SKIP
    ...     ...
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from deepcrossing.config import FeatureSpec
from deepcrossing.encoding.batch import Batch
from deepcrossing.encoding.encoder import Encoder, encode_labels, missing_column
from deepcrossing.encoding.streaming import DEFAULT_SAMPLE_ROWS, StreamingFit
from deepcrossing.errors import InputError
from deepcrossing.training.distributed import DistContext

@dataclass(frozen=True)
class StreamOptions:
    """How the train file is streamed.

    Attributes:
        window: row groups read, encoded and shuffled together.
        sample_rows: train rows sampled for the quantile-based fits (see :mod:`deepcrossing.encoding.streaming`).
    """

    window: int = 4
    sample_rows: int = DEFAULT_SAMPLE_ROWS


def _open(path: str | Path) -> pq.ParquetFile:
    path = Path(path)
    if path.suffix.lower() != ".parquet":
        raise InputError("--stream reads Parquet samples (row groups); this file is not .parquet", path=path)
    try:
        return pq.ParquetFile(path, pre_buffer=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the Parquet footer: {exc}", path=path) from None


def _columns(spec: FeatureSpec, pf: pq.ParquetFile, path: Path) -> list[str]:
    names = set(pf.schema_arrow.names)
    missing = [c for c in spec.columns if c not in names]
    if missing:
        raise missing_column(missing[0], path)
    return [*spec.columns, *(["label"] if "label" in names else [])]


def uncompressed_bytes(path: Path) -> int:
    """The train file's size in memory as Arrow would roughly hold it (the row groups' uncompressed bytes)."""
    md = _open(path).metadata
    return sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))


def should_stream(path: Path, budget_bytes: int | None) -> bool:
    """True when ``path`` is Parquet and its uncompressed size exceeds ``budget_bytes`` (None: never)."""
    return budget_bytes is not None and path.suffix.lower() == ".parquet" and uncompressed_bytes(path) > budget_bytes


def fit_streaming(path: str | Path, spec: FeatureSpec, options: StreamOptions) -> Encoder:
    """An encoder fitted in one pass over ``path``, one row group at a time (``iter_batches`` reads ahead:
    measured 2x the peak memory of row group by row group reads)."""
    pf = _open(path)
    fit = StreamingFit(spec, sample_rows=options.sample_rows, source=path)
    columns = _columns(spec, pf, Path(path))
    for i in range(pf.num_row_groups):
        fit.update(pf.read_row_group(i, columns=columns))
    return fit.finish()


def _read_encoded(pf: pq.ParquetFile, groups: list[int], columns: list[str], encoder: Encoder, path: Path) -> Batch:
    """Row groups ``groups`` of ``pf`` (only ``columns``) encoded; their Arrow buffers given back at once."""
    table = pf.read_row_groups(groups, columns=columns)
    encoded = encoder.transform(table, source=path)
    del table
    pa.default_memory_pool().release_unused()  # mimalloc keeps freed buffers otherwise
    return encoded


class ParquetStream:
    """This rank's row groups of a Parquet train file, encoded window by window (a :class:`BatchStream`).

    Args:
        path: the train file (Parquet).
        encoder: the fitted encoder.
        dist: this rank of a data-parallel run, or None.
        options: window size.

    Attributes:
        rows: rows this rank reads per epoch (under DDP: the fewest of any rank).
    """

    def __init__(self, path: str | Path, encoder: Encoder, dist: DistContext | None, options: StreamOptions) -> None:
        self.path = Path(path)
        self.encoder = encoder
        self.options = options
        pf = _open(self.path)
        self.columns = _columns(encoder.spec, pf, self.path)
        md = pf.metadata
        world, rank = (1, 0) if dist is None else (dist.world_size, dist.rank)
        self.groups = list(range(rank, md.num_row_groups, world))
        per_rank = [sum(md.row_group(i).num_rows for i in range(r, md.num_row_groups, world)) for r in range(world)]
        self.rows = min(per_rank)

    def batches(self, epoch: int, batch_size: int, rows: int, generator: torch.Generator) -> Iterator[Batch]:
        """The first ``rows`` rows of this epoch (row groups in a shuffled order, rows shuffled per window).

        A background thread reads, encodes and shuffles the next window while this one trains (Parquet
        decoding, the encoder's numpy work and the steps' kernels release the GIL, so the two overlap on two
        cores); it owns ``generator`` for the epoch and draws from it exactly as reading in line would, so the
        batches and the generator's state afterwards are the same.
        """
        ready: queue.Queue[tuple[Batch, int] | BaseException | None] = queue.Queue(maxsize=1)
        stop = threading.Event()

        def put(item: tuple[Batch, int] | BaseException | None) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for item in self._windows(batch_size, rows, generator):
                    if not put(item):
                        return
                put(None)
            except BaseException as exc:  # handed to the consumer, raised there
                put(exc)

        thread = threading.Thread(target=produce, name="stream-prefetch", daemon=True)
        thread.start()
        try:
            while (item := ready.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                window, count = item
                for s in range(0, count, batch_size):
                    yield window.slice(s, min(s + batch_size, count))
        finally:
            stop.set()
            thread.join()

    def _windows(self, batch_size: int, rows: int, generator: torch.Generator) -> Iterator[tuple[Batch, int]]:
        """(shuffled window, rows of it to train on) in order; the rest of a window carries over to the next."""
        pf = _open(self.path)
        order = [self.groups[i] for i in torch.randperm(len(self.groups), generator=generator).tolist()]
        carry: list[Batch] = []
        left = rows
        w = max(1, self.options.window)
        for start in range(0, len(order), w):
            if left <= 0:
                break
            encoded = _read_encoded(pf, order[start:start + w], self.columns, self.encoder, self.path)
            window = Batch.cat([*carry, encoded.take(torch.randperm(len(encoded), generator=generator))])
            usable = min(len(window), left)
            full = usable - usable % batch_size if usable < left else usable
            yield window, full
            left -= full
            carry = [window.slice(full, usable)] if full < usable else []
        if carry and left > 0:
            yield carry[0], len(carry[0])


class ParquetSplit:
    """A labelled Parquet valid/test file scored without holding it (an
    :class:`~deepcrossing.training.trainer.EvalSource`): every pass reads and encodes one row group at a time
    (only the spec's columns); only the labels stay in memory. ``train --stream`` evaluates this way, so its
    peak memory does not grow with the valid and test files either.

    Args:
        path: the sample file (Parquet).
        encoder: the fitted encoder.

    Example:
        >>> valid = ParquetSplit("valid.parquet", encoder)                    # doctest: +SKIP
        >>> evaluate_batch(model, valid)["auc"]                              # doctest: +SKIP
    """

    def __init__(self, path: str | Path, encoder: Encoder) -> None:
        self.path = Path(path)
        self.encoder = encoder
        pf = _open(self.path)
        self.columns = [c for c in _columns(encoder.spec, pf, self.path) if c != "label"]
        self.rows = int(pf.metadata.num_rows)
        self.labels: torch.Tensor | None = (
            encode_labels(pf.read(columns=["label"]), self.path) if "label" in pf.schema_arrow.names else None)

    def __len__(self) -> int:
        return self.rows

    def pieces(self) -> Iterator[Batch]:
        """Each row group encoded, in file order."""
        pf = _open(self.path)
        for i in range(pf.num_row_groups):
            yield _read_encoded(pf, [i], self.columns, self.encoder, self.path)


__all__ = ["ParquetSplit", "ParquetStream", "StreamOptions", "fit_streaming", "should_stream",
           "uncompressed_bytes"]
