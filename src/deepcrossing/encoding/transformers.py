"""Fitted transformers (scikit-learn contract): Vocabulary, Hasher, Normalizer, Bucketizer.

The constructor only stores parameters; ``fit`` returns ``self`` and sets the learned state (trailing
underscore); ``transform`` is pure and vectorized; ``state()`` / ``from_state()`` round-trip the fitted
state through plain JSON. Fit on train only.

Index convention of every id-producing transformer (one embedding table row per index):

* ``0`` = missing / padding (a NULL value, or the padding of a multi-valued list): the embedding layer uses
  ``padding_idx=0``, so this row is all zeros, gets no gradient and is ignored by pooling;
* ``1`` = OOV: a value never seen in train, or seen fewer than ``min_count`` times (one learned row);
* ``2..`` = the known values.

Example:
    >>> import numpy as np
    >>> v = Vocabulary(min_count=2).fit(np.array(["a", "b", "a", "c", "c"], dtype=object))
    >>> v.vocab_, v.transform(np.array(["c", "b", None, "a"], dtype=object)).tolist()
    (['a', 'c'], [3, 1, 0, 2])
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from deepcrossing.errors import InputError

PAD = 0
OOV = 1
N_RESERVED = 2
#: Up to this many values, a vocabulary looks rows up in a dict kept on it (a served request's few ids);
#: above, one Arrow ``index_in`` (which hashes the vocabulary each call, cheap only per many values).
SMALL = 256


def _as_arrow(values: Any) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if isinstance(values, pa.Array):
        return values
    return pa.array(np.asarray(values).tolist() if np.asarray(values).dtype == object else np.asarray(values),
                    from_pandas=True)


def _kind_of(arr: pa.Array) -> str:
    if pa.types.is_integer(arr.type):
        return "int"
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        return "str"
    if pa.types.is_null(arr.type):
        return "null"
    raise InputError(f"ids must be integers or strings, not {arr.type}")


class Vocabulary:
    """Maps values (integers or strings) to table rows; rare and unseen values share the OOV row.

    Args:
        min_count: values seen fewer than this many times in train map to OOV (1).

    Fitted state:
        ``vocab_``: known values, most frequent first (ties by value); value ``vocab_[i]`` -> row ``i + 2``.
        ``kind_``: ``"int"`` or ``"str"``.
    """

    def __init__(self, min_count: int = 1) -> None:
        self.min_count = min_count

    def fit(self, values: Any) -> Vocabulary:
        """Count ``values`` (array-like; NULLs ignored) and keep those seen ``>= min_count`` times."""
        arr = _as_arrow(values).drop_null()
        counts = pc.value_counts(arr) if len(arr) else pa.StructArray.from_arrays(
            [pa.array([], pa.int64()), pa.array([], pa.int64())], ["values", "counts"])
        return self.fit_counts(counts.field("values") if len(arr) else arr, counts.field("counts"))

    def fit_counts(self, values: pa.Array, counts: pa.Array) -> Vocabulary:
        """Fit from distinct ``values`` (N,) and how often each was seen, ``counts`` (N,) (e.g. summed over the
        chunks of a file too large to hold; :mod:`deepcrossing.encoding.streaming`). Same result as ``fit``
        on the values repeated so often."""
        kind = _kind_of(values) if len(values) else "int"
        vals = values.to_numpy(zero_copy_only=False)
        cnts = counts.to_numpy(zero_copy_only=False)
        keep = cnts >= self.min_count
        vals, cnts = vals[keep], cnts[keep]
        order = np.lexsort((vals, -cnts))  # count desc, then value asc: deterministic
        self.kind_ = "str" if kind == "str" else "int"
        self.vocab_ = [str(v) for v in vals[order]] if self.kind_ == "str" else [int(v) for v in vals[order]]
        self._index = None
        self._row_of: dict[Any, int] | None = None
        return self

    def __len__(self) -> int:
        """Rows of the table: padding + OOV + known values."""
        return len(self.vocab_) + N_RESERVED

    def _value_set(self) -> pa.Array:
        if getattr(self, "_index", None) is None:
            self._index = pa.array(self.vocab_, pa.string() if self.kind_ == "str" else pa.int64())
        return self._index

    def _rows(self) -> dict[Any, int]:
        rows: dict[Any, int] | None = getattr(self, "_row_of", None)
        if rows is None:
            rows = self._row_of = {v: i + N_RESERVED for i, v in enumerate(self.vocab_)}
        return rows

    def transform(self, values: Any) -> np.ndarray:
        """Rows of ``values``: (N,) -> (N,) int64; NULL -> 0, unknown -> 1.

        Values of another type than the fitted one (e.g. strings against an integer vocabulary) are unknown.
        """
        arr = _as_arrow(values)
        if len(arr) == 0:
            return np.zeros(0, np.int64)
        value_set = self._value_set()
        if _kind_of(arr) == "null":
            return np.zeros(len(arr), np.int64)
        if (_kind_of(arr) == "str") != (self.kind_ == "str"):
            if self.kind_ == "int":  # strings such as "42" from a CSV: try them as integers
                try:
                    arr = pc.cast(arr, pa.int64())
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    return np.where(arr.is_null().to_numpy(zero_copy_only=False), PAD, OOV).astype(np.int64)
            else:
                arr = pc.cast(arr, pa.string())
        elif self.kind_ == "int" and arr.type != pa.int64():
            arr = pc.cast(arr, pa.int64())
        if len(arr) <= SMALL:   # index_in hashes the whole vocabulary per call (~0.2 ms at 9,000 movies)
            rows = self._rows()
            return np.array([PAD if v is None else rows.get(v, OOV) for v in arr.to_pylist()], dtype=np.int64)
        idx = pc.index_in(arr, value_set=value_set)
        out: np.ndarray = pc.fill_null(pc.add(idx, N_RESERVED), OOV).to_numpy(zero_copy_only=False).astype(np.int64)
        out[arr.is_null().to_numpy(zero_copy_only=False)] = PAD
        return out

    def state(self) -> dict[str, Any]:
        return {"min_count": self.min_count, "kind": self.kind_, "vocab": list(self.vocab_)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Vocabulary:
        _expect_keys(state, {"min_count", "kind", "vocab"}, "Vocabulary")
        v = cls(min_count=state["min_count"])
        v.kind_ = state["kind"]
        if v.kind_ not in ("int", "str"):
            raise InputError(f"Vocabulary kind must be int or str, not {v.kind_!r}", field="kind")
        v.vocab_ = list(state["vocab"])
        v._index = None
        v._row_of = None
        return v


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A stable 64-bit integer mix (SplitMix64's finalizer), vectorized; wraps modulo 2**64 by design."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def stable_hash(values: Any) -> np.ndarray:
    """Stable 64-bit hashes (same on every run and machine, unlike Python's salted ``hash()``).

    Integers: SplitMix64 of the value. Strings: the first 8 bytes (little endian) of BLAKE2b of the UTF-8
    text, computed once per distinct value. NULL -> 0.

    Example:
        >>> int(stable_hash(np.array([42]))[0]) == int(stable_hash(np.array([42]))[0])
        True
    """
    arr = _as_arrow(values)
    if len(arr) == 0:
        return np.zeros(0, np.uint64)
    kind = _kind_of(arr)
    if kind == "null":
        return np.zeros(len(arr), np.uint64)
    if kind == "int":
        nulls = arr.is_null().to_numpy(zero_copy_only=False)
        x = pc.fill_null(pc.cast(arr, pa.int64()), 0).to_numpy(zero_copy_only=False).view(np.uint64)
        with np.errstate(over="ignore"):
            h = _splitmix64(x)
        h[nulls] = 0
        return h
    enc = arr.dictionary_encode()
    uniques = enc.dictionary.to_pylist()
    table = np.array([int.from_bytes(hashlib.blake2b(u.encode("utf-8"), digest_size=8).digest(), "little")
                      for u in uniques] + [0], dtype=np.uint64)
    codes = pc.fill_null(enc.indices, len(uniques)).to_numpy(zero_copy_only=False)
    hashed: np.ndarray = table[codes]
    return hashed


class Hasher:
    """Hashes values into ``buckets`` rows (for id spaces too large for a vocabulary).

    Row = ``1 + stable_hash(value) % buckets`` (0 stays the padding/NULL row; there is no OOV row because
    every value has a bucket). Stateless: ``fit`` only records that it was called.

    Example:
        >>> Hasher(buckets=1000).fit(None).transform(np.array([7, 7, 8])).tolist()[0] in range(1, 1001)
        True
    """

    def __init__(self, buckets: int) -> None:
        self.buckets = buckets

    def fit(self, values: Any = None) -> Hasher:
        self.fitted_ = True
        return self

    def __len__(self) -> int:
        return self.buckets + 1

    def transform(self, values: Any) -> np.ndarray:
        """(N,) values -> (N,) int64 rows in ``[0, buckets]``."""
        arr = _as_arrow(values)
        h = stable_hash(arr)
        out = (h % np.uint64(self.buckets)).astype(np.int64) + 1
        if len(arr):
            out[arr.is_null().to_numpy(zero_copy_only=False)] = PAD
        return out

    def state(self) -> dict[str, Any]:
        return {"buckets": self.buckets}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Hasher:
        _expect_keys(state, {"buckets"}, "Hasher")
        return cls(state["buckets"]).fit()


class IdentityIds:
    """Non-negative integer ids used as they are: id ``i`` -> row ``i + 2`` for ``i < n_values``.

    Negative, too large or non-integer ids go to OOV (1); NULL to 0.
    """

    def __init__(self, n_values: int) -> None:
        self.n_values = n_values

    def fit(self, values: Any = None) -> IdentityIds:
        self.fitted_ = True
        return self

    def __len__(self) -> int:
        return self.n_values + N_RESERVED

    def transform(self, values: Any) -> np.ndarray:
        arr = _as_arrow(values)
        if len(arr) == 0:
            return np.zeros(0, np.int64)
        nulls = arr.is_null().to_numpy(zero_copy_only=False)
        try:
            x = pc.fill_null(pc.cast(arr, pa.int64()), -1).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return np.where(nulls, PAD, OOV).astype(np.int64)
        out = np.where((x >= 0) & (x < self.n_values), x + N_RESERVED, OOV).astype(np.int64)
        out[nulls] = PAD
        return out

    def state(self) -> dict[str, Any]:
        return {"n_values": self.n_values}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> IdentityIds:
        _expect_keys(state, {"n_values"}, "IdentityIds")
        return cls(state["n_values"]).fit()


def _floats(values: Any) -> np.ndarray:
    arr = _as_arrow(values)
    if len(arr) and not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)
                         or pa.types.is_null(arr.type) or pa.types.is_boolean(arr.type)):
        raise InputError(f"a numeric feature must hold numbers, not {arr.type}")
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):   # NULL -> NaN without a cast (~13 us)
        return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64)
    floats: np.ndarray = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return floats


class Normalizer:
    """Standardize (optionally after a signed log1p) with statistics of the train values.

    ``transform`` returns ``(f(x) - mean_) / std_`` with ``f = sign(x) * log1p(|x|)`` for ``log1p=True``.
    NaN, infinite and NULL values are imputed with the train mean (so they become exactly 0.0); ``fit``
    ignores them. A constant train column gets ``std_ = 1``.

    Example:
        >>> n = Normalizer().fit(np.array([1.0, 3.0, np.nan]))
        >>> (n.mean_, n.std_), n.transform(np.array([3.0, np.inf])).tolist()
        ((2.0, 1.0), [1.0, 0.0])
    """

    def __init__(self, log1p: bool = False) -> None:
        self.log1p = log1p

    def _f(self, x: np.ndarray) -> np.ndarray:
        return np.sign(x) * np.log1p(np.abs(x)) if self.log1p else x

    def fit(self, values: Any) -> Normalizer:
        x = self._f(_floats(values))
        x = x[np.isfinite(x)]
        self.mean_ = float(x.mean()) if len(x) else 0.0
        std = float(x.std()) if len(x) else 0.0
        self.std_ = std if std > 1e-12 else 1.0
        return self

    def transform(self, values: Any) -> np.ndarray:
        """(N,) -> (N,) float32."""
        with np.errstate(invalid="ignore", over="ignore"):
            x = self._f(_floats(values))
        x = np.where(np.isfinite(x), x, self.mean_)
        return ((x - self.mean_) / self.std_).astype(np.float32)

    def state(self) -> dict[str, Any]:
        return {"log1p": self.log1p, "mean": self.mean_, "std": self.std_}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Normalizer:
        _expect_keys(state, {"log1p", "mean", "std"}, "Normalizer")
        n = cls(log1p=state["log1p"])
        n.mean_, n.std_ = float(state["mean"]), float(state["std"])
        return n


class Bucketizer:
    """Quantile buckets of a numeric column, as embedding rows.

    ``boundaries_`` are the distinct inner quantiles of the finite train values; value x goes to row
    ``2 + (number of boundaries <= x)``; NaN/inf/NULL go to the OOV row 1 (a learned "missing" row).

    Example:
        >>> b = Bucketizer(n_buckets=2).fit(np.array([1.0, 2.0, 3.0, 4.0]))
        >>> b.boundaries_, b.transform(np.array([0.0, 2.5, 9.0, np.nan])).tolist()
        ([2.5], [2, 3, 3, 1])
    """

    def __init__(self, n_buckets: int = 10) -> None:
        self.n_buckets = n_buckets

    def fit(self, values: Any) -> Bucketizer:
        x = _floats(values)
        x = x[np.isfinite(x)]
        if len(x):
            qs = np.quantile(x, np.linspace(0, 1, self.n_buckets + 1)[1:-1])
            self.boundaries_ = sorted({float(q) for q in qs})
        else:
            self.boundaries_ = []
        return self

    def __len__(self) -> int:
        return len(self.boundaries_) + 1 + N_RESERVED

    def transform(self, values: Any) -> np.ndarray:
        x = _floats(values)
        rows = np.searchsorted(np.asarray(self.boundaries_, np.float64), x, side="right") + N_RESERVED
        return np.where(np.isfinite(x), rows, OOV).astype(np.int64)

    def state(self) -> dict[str, Any]:
        return {"n_buckets": self.n_buckets, "boundaries": list(self.boundaries_)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Bucketizer:
        _expect_keys(state, {"n_buckets", "boundaries"}, "Bucketizer")
        b = cls(n_buckets=state["n_buckets"])
        b.boundaries_ = [float(v) for v in state["boundaries"]]
        return b


def _expect_keys(state: Any, keys: set[str], what: str) -> None:
    if not isinstance(state, dict):
        raise InputError(f"{what} state must be an object, not {type(state).__name__}")
    missing, extra = keys - set(state), set(state) - keys
    if missing or extra:
        raise InputError(f"{what} state has missing keys {sorted(missing)} / unknown keys {sorted(extra)}",
                         field=sorted(missing | extra)[0])
