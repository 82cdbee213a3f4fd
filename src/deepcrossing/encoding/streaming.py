"""Fitting an :class:`~deepcrossing.encoding.encoder.Encoder` in one pass over chunks of a train file too large
to hold (``train --stream``).

:class:`StreamingFit` takes the chunks one by one (``update``) and builds the encoder at the end
(``finish``). What is exact and what is approximate, against ``Encoder(spec).fit(whole_table)``:

* vocabularies (``categorical``, ``multi_hot`` tables): **exact**. The value counts of every chunk are summed
  (a pyarrow group-by), then the same ``min_count`` filter and the same order (count desc, value asc);
* standardized numerics (``Batch.dense``): mean and standard deviation merged from per-chunk moments
  (Chan et al.'s parallel update): **exact to float rounding** (~1e-12 relative);
* bag widths (longest train list, <= 64): **exact**;
* hashed and identity tables: stateless;
* quantile-based transforms (``buckets``, ``ple``, ``ple_tree``) and ``periodic``'s statistics: fitted on a
  uniform sample of ``sample_rows`` train rows (the rows with the smallest random keys, a reservoir in one
  pass): **exact when the train file has at most ``sample_rows`` rows**, else quantiles of a sample of that
  size (rank error ~ 1/sqrt(sample_rows), 0.1% at the default million).

Example:
    >>> import pyarrow as pa
    >>> from deepcrossing.config import Feature, FeatureSpec
    >>> spec = FeatureSpec((Feature("movieId", "categorical", "item"),
    ...                     Feature("x", "numeric", transform="standardize")))
    >>> chunks = [pa.table({"movieId": [1, 2], "x": [1.0, 2.0]}), pa.table({"movieId": [2], "x": [3.0]})]
    >>> fit = StreamingFit(spec)
    >>> for chunk in chunks:
    ...     _ = fit.update(chunk)
    >>> enc = fit.finish()
    >>> enc.tables_["movieId"].vocab_, round(enc.normalizers_["x"].mean_, 6)
    ([2, 1], 2.0)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from deepcrossing.config import FeatureSpec
from deepcrossing.encoding.encoder import MAX_BAG_LEN, Encoder, _column, _concat, _fit_numeric, _parts
from deepcrossing.encoding.numeric import PiecewiseLinear, is_dense, is_numeric_embedding
from deepcrossing.encoding.transformers import Bucketizer, Hasher, IdentityIds, Normalizer, Vocabulary, _floats

DEFAULT_SAMPLE_ROWS = 1_000_000


class StreamingFit:
    """Accumulates what an :class:`Encoder` learns from train, chunk by chunk.

    Args:
        spec: the feature spec.
        sample_rows: rows kept for the quantile-based transforms (see the module docstring).
        seed: seed of the sample's random keys.
        source: the train file, for error messages and warnings.
    """

    def __init__(self, spec: FeatureSpec, sample_rows: int = DEFAULT_SAMPLE_ROWS, seed: int = 0,
                 source: str | Path | None = None) -> None:
        self.spec = spec
        self.sample_rows = sample_rows
        self.source = source
        self._rng = np.random.default_rng(seed)
        self._counts: dict[str, pa.Table] = {}          # vocabulary table -> (values, counts)
        self._moments: dict[str, tuple[float, float, float]] = {}   # dense feature -> (n, mean, M2)
        self._bag_len: dict[str, int] = {}
        self._sample: pa.Table | None = None             # columns of the sampled features (+ label)
        self._keys = np.zeros(0)
        self.rows_seen = 0
        tables = spec.tables().values()
        self._sampled = [f.name for f in spec.features if is_numeric_embedding(f)] + [
            info.features[0] for info in tables if info.kind == "buckets"]
        if any(spec[n].transform == "ple_tree" for n in self._sampled):
            self._sampled.append("label")

    def update(self, table: pa.Table) -> StreamingFit:
        """Add one chunk of train rows (any number of rows, the spec's columns)."""
        src = self.source
        self.rows_seen += table.num_rows
        for info in self.spec.tables().values():
            if info.kind != "vocab":
                continue
            chunks = []
            for name in info.features:
                f = self.spec[name]
                arr = _column(table, name, src)
                chunks.append(_parts(arr, f, src)[0] if f.is_bag else arr)
            values = _concat(chunks, src, info.features).drop_null()
            if len(values) == 0:
                continue
            counts = pc.value_counts(values)
            part = pa.table({"values": counts.field("values"), "counts": counts.field("counts")})
            old = self._counts.get(info.name)
            if old is not None:
                if old.schema.field("values").type != part.schema.field("values").type:
                    part = part.cast(old.schema)
                part = pa.concat_tables([old, part]).group_by("values").aggregate([("counts", "sum")]) \
                    .rename_columns(["values", "counts"])
            self._counts[info.name] = part
        for f in self.spec.features:
            if is_dense(f):
                self._add_moments(f.name, f.transform == "log1p_standardize", _column(table, f.name, src))
            if f.is_bag and f.max_len is None:
                longest = int(_parts(_column(table, f.name, src), f, src)[1].max(initial=1))
                self._bag_len[f.name] = max(self._bag_len.get(f.name, 1), longest)
        if self._sampled:
            self._add_sample(table)
        return self

    def _add_moments(self, name: str, log1p: bool, values: Any) -> None:
        x = Normalizer(log1p=log1p)._f(_floats(values))
        x = x[np.isfinite(x)]
        if not len(x):
            return
        n_b, mean_b = float(len(x)), float(x.mean())
        m2_b = float(((x - mean_b) ** 2).sum())
        n_a, mean_a, m2_a = self._moments.get(name, (0.0, 0.0, 0.0))
        n = n_a + n_b
        delta = mean_b - mean_a
        self._moments[name] = (n, mean_a + delta * n_b / n, m2_a + m2_b + delta * delta * n_a * n_b / n)

    def _add_sample(self, table: pa.Table) -> None:
        cols = table.select([c for c in self._sampled if c in table.column_names])
        keys = self._rng.random(cols.num_rows)
        if self._sample is not None:
            cols = pa.concat_tables([self._sample, cols])
            keys = np.concatenate([self._keys, keys])
        if len(keys) > self.sample_rows:
            keep = np.sort(np.argpartition(keys, self.sample_rows)[:self.sample_rows])
            cols, keys = cols.take(pa.array(keep)), keys[keep]
        self._sample, self._keys = cols.combine_chunks(), keys

    def finish(self) -> Encoder:
        """The fitted encoder (what ``Encoder(spec).fit`` would give, see the module docstring)."""
        enc = Encoder(self.spec)
        enc.tables_, enc.normalizers_, enc.numeric_, enc.bag_len_ = {}, {}, {}, {}
        sample = self._sample if self._sample is not None else pa.table({})
        for info in self.spec.tables().values():
            if info.kind in ("hashed", "identity"):
                assert info.hash_buckets is not None
                enc.tables_[info.name] = (Hasher if info.kind == "hashed" else IdentityIds)(info.hash_buckets).fit()
            elif info.kind == "buckets":
                f = self.spec[info.features[0]]
                enc.tables_[info.name] = _fit_numeric(Bucketizer(f.n_buckets), sample, f, self.source)
            else:
                counts = self._counts.get(info.name)
                if counts is None:
                    enc.tables_[info.name] = Vocabulary(info.min_count).fit(pa.array([], pa.int64()))
                else:
                    enc.tables_[info.name] = Vocabulary(info.min_count).fit_counts(
                        counts.column("values").combine_chunks(), counts.column("counts").combine_chunks())
        for f in self.spec.features:
            if is_dense(f):
                n, mean, m2 = self._moments.get(f.name, (0.0, 0.0, 0.0))
                norm = Normalizer(log1p=f.transform == "log1p_standardize")
                std = float(np.sqrt(m2 / n)) if n else 0.0
                norm.mean_, norm.std_ = mean, std if std > 1e-12 else 1.0
                enc.normalizers_[f.name] = norm
            elif is_numeric_embedding(f):
                fresh = Normalizer() if f.transform == "periodic" else \
                    PiecewiseLinear(f.n_buckets, f.transform == "ple_tree")
                enc.numeric_[f.name] = _fit_numeric(fresh, sample, f, self.source)
            if f.is_bag:
                enc.bag_len_[f.name] = f.max_len if f.max_len is not None else \
                    int(min(MAX_BAG_LEN, max(1, self._bag_len.get(f.name, 1))))
        return enc


__all__ = ["DEFAULT_SAMPLE_ROWS", "StreamingFit"]
