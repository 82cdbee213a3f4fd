"""Fused CPU kernels of the embedding tables' training step: ``kernels.c``, built on first use, called by ctypes.

Each kernel is one C call in place of many small torch operations (dispatch plus scalar scatter loops):

* :func:`feature_forward`: every feature of every table (any widths) pooled into its columns of one (n, width)
  block, straight from each feature's ids, the ids' weights (padding, mean pooling) computed on the way;
* :func:`feature_backward`: per table, its distinct ids (ascending) and their summed gradient rows (U_t, D_t);
* :func:`bag_forward` / :func:`bag_backward`: the same for several tables of one width given concatenated
  ids, their weights and each id's output bag (:class:`~deepcrossing.model.lookup.BagLookup`);
* :func:`row_adam`: SparseAdam's update of those rows of every table and its moments.

:class:`~deepcrossing.model.lookup.FeatureLookup` (the embedding layer's training lookup), ``BagLookup`` and
:class:`~deepcrossing.training.optim.RowSparseAdam` use them for CPU float32 tensors when :func:`available`, and
their pure-torch path otherwise. The source ships with the
package; the first use compiles it with the system C compiler (``$CC``, else ``cc``) into
``$XDG_CACHE_HOME/deepcrossing/kernels`` (default ``~/.cache/...``), under a name keyed by a hash of the
source, the flags, the compiler's ``--version`` and the CPU's flags (``-march=native``), written to a
temporary name and renamed, so concurrent processes (DDP ranks) share one build safely (gcc 12: 0.2 s, once
per machine and source). No compiler, a failed build or ``DEEPCROSSING_KERNELS=0``: the pure-torch path, with
one logged warning per process. ``-ffp-contract=off``: products and sums round as torch's do (tests: bit-equal
results). ctypes, not ``torch.utils.cpp_extension``: building a one-function extension with it took 34 s on the
2-core machine (torch's headers), while a ctypes call costs ~1.2 us plus ~1.5 us for its pointer arrays, three
calls a step. The kernels are single-threaded (the benchmark trains on 1 thread; each is < 0.25 ms a step).

Example:
    >>> w = torch.arange(8.0).view(4, 2)
    >>> ids, per_id = torch.tensor([[3, 1, 3]]), torch.tensor([1.0, 0.5, 0.5])
    >>> out = bag_forward([w], [ids], per_id, torch.tensor([0, 1, 1]), 2) if available() else None
    >>> out is None or out.tolist() == [[6.0, 7.0], [4.0, 5.0]]
    True
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ("-O3", "-ffp-contract=off", "-fno-math-errno", "-march=native", "-std=c11", "-fPIC", "-shared")
ENV = "DEEPCROSSING_KERNELS"

_P = ctypes.c_void_p
_I = ctypes.c_int64
_state: dict[str, ctypes.CDLL | str | None] = {}   # "lib": the library or None (failed); "warned": a cause


def cache_dir() -> Path:
    """Where built kernels are kept: ``$XDG_CACHE_HOME/deepcrossing/kernels`` (``~/.cache`` by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deepcrossing" / "kernels"


def _cpu_key() -> str:
    """The CPU's model and instruction-set flags (what ``-march=native`` builds for); '' where unknown."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return "\n".join(sorted({line for line in lines if line.startswith(("flags", "model name"))}))


def build(directory: Path | None = None) -> Path:
    """The compiled library's path, built now unless a build of this source, flags, compiler and CPU is there.

    Args:
        directory: the cache folder (default :func:`cache_dir`).

    Raises:
        OSError: no C compiler, or the compiler failed (its message included).
    """
    compiler = shutil.which(os.environ.get("CC") or "cc")
    if compiler is None:
        raise OSError(f"no C compiler ({os.environ.get('CC') or 'cc'} not on PATH)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), *FLAGS, version, _cpu_key()]).encode()).hexdigest()[:20]
    folder = directory or cache_dir()
    target = folder / f"kernels-{key}.so"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0:
            raise OSError(f"{compiler} failed on {SOURCE}: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)   # atomic: another process sees no build or a whole one
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(build()))
    lib.dc_bag_forward.argtypes = [_I, _P, _P, _P, _P, _I, _I, _P, _P, _P, _I, _P]
    lib.dc_bag_backward.argtypes = [_I, _P, _P, _P, _I, _I, _P, _P, _P, _I, _P, _P, _P, _P]
    lib.dc_row_adam.argtypes = [_I, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P]
    lib.dc_feature_forward.argtypes = [_I, _P, _P, _P, _P, _P, _P, _P, _P, _P, _I, _I, _P, _P, _P]
    lib.dc_feature_backward.argtypes = [_I, _P, _P, _P, _P, _I, _P, _P, _I, _P, _P, _I, _P, _P, _P, _P]
    for fn in (lib.dc_bag_forward, lib.dc_bag_backward, lib.dc_row_adam, lib.dc_feature_forward,
               lib.dc_feature_backward):
        fn.restype = _I
    return lib


def _warn_once(cause: str) -> None:
    if _state.get("warned") != cause:
        _state["warned"] = cause
        log.warning("fused embedding kernels off (%s): the pure-torch lookup and RowSparseAdam run instead", cause)


def _library() -> ctypes.CDLL | None:
    if os.environ.get(ENV) == "0":
        _warn_once(f"{ENV}=0")
        return None
    if "lib" not in _state:
        try:
            _state["lib"] = _load()
        except (OSError, subprocess.SubprocessError) as exc:
            _state["lib"] = None
            _warn_once(f"build failed: {exc}")
    lib = _state["lib"]
    return lib if isinstance(lib, ctypes.CDLL) else None


def available() -> bool:
    """Whether the kernels run: not switched off (``DEEPCROSSING_KERNELS=0``), built and loaded."""
    return _library() is not None


def fits(floats: Sequence[Tensor], ints: Sequence[Tensor]) -> bool:
    """Whether the kernels take these tensors: CPU, contiguous, ``floats`` float32 and ``ints`` int64."""
    for t in floats:  # a plain loop: ~0.2 us a tensor (``t.device.type`` builds a device object: 3x slower)
        if t.dtype is not torch.float32 or not t.is_cpu or not t.is_contiguous():
            return False
    for t in ints:
        if t.dtype is not torch.int64 or not t.is_cpu or not t.is_contiguous():
            return False
    return True


def _lib() -> ctypes.CDLL:
    lib = _library()
    if lib is None:
        raise RuntimeError("the fused kernels are not available (see kernels.available())")
    return lib


def _ptrs(tensors: Sequence[Tensor]) -> ctypes.Array[ctypes.c_void_p]:
    return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))


def _ints(values: Sequence[int]) -> ctypes.Array[ctypes.c_int64]:
    return (ctypes.c_int64 * len(values))(*values)


def bag_forward(weights: Sequence[Tensor], ids: Sequence[Tensor], per_id: Tensor, bag_of: Tensor, m: int) -> Tensor:
    """``out[bag_of[i]] += per_id[i] * weights[t_i][ids[i]]`` in id order (BagLookup's order of ``ids``).

    Args:
        weights: (R_t, D) float32 tables, one width.
        ids: (n, c_t) int64 ids of each table.
        per_id: (N,) float32 weight of each id; bag_of: (N,) int64 output bag of each id.
        m: output bags M.

    Returns:
        (M, D) pooled vectors (a bag without ids is zeros).

    Raises:
        IndexError: an id outside its table or a bag outside [0, M) (nothing is read or written there).
    """
    n, d = ids[0].shape[0], weights[0].shape[1]
    out = torch.empty((m, d), dtype=torch.float32)
    bad = ctypes.c_int64()
    at = _lib().dc_bag_forward(len(weights), _ptrs(weights), _ints([w.shape[0] for w in weights]), _ptrs(ids),
                               _ints([i.shape[1] for i in ids]), n, d, per_id.data_ptr(), bag_of.data_ptr(),
                               out.data_ptr(), m, ctypes.byref(bad))
    if at >= len(weights):
        raise IndexError(f"bag {bad.value} out of range for {m} bags")
    if at >= 0:
        raise IndexError(f"index {bad.value} is out of range for a table of {weights[at].shape[0]} rows")
    return out


def bag_backward(rows: Sequence[int], ids: Sequence[Tensor], per_id: Tensor, bag_of: Tensor,
                 grad: Tensor) -> list[tuple[Tensor, Tensor]]:
    """The gradient of :func:`bag_forward` for each table: its distinct ids and their summed gradient rows.

    Args:
        rows: R_t of each table.
        ids, per_id, bag_of: as given to :func:`bag_forward`.
        grad: (M, D) float32 contiguous gradient of the pooled vectors.

    Returns:
        per table, (U_t,) int64 distinct ids ascending and (U_t, D) ``sum_{i: ids[i] = row} per_id[i] *
        grad[bag_of[i]]`` summed in id order (the order of ``index_add_``), both contiguous.
    """
    n, d = ids[0].shape[0], grad.shape[1]
    caps = [min(r, i.numel()) for r, i in zip(rows, ids)]
    out_rows = [torch.empty(c, dtype=torch.int64) for c in caps]
    out_values = [torch.empty((c, d), dtype=torch.float32) for c in caps]
    counts, bad = (ctypes.c_int64 * len(rows))(), ctypes.c_int64()
    at = _lib().dc_bag_backward(len(rows), _ints(rows), _ptrs(ids), _ints([i.shape[1] for i in ids]), n, d,
                                per_id.data_ptr(), bag_of.data_ptr(), grad.data_ptr(), grad.shape[0], _ptrs(out_rows),
                                _ptrs(out_values), counts, ctypes.byref(bad))
    if at == -2:
        raise MemoryError("dc_bag_backward: out of memory for the row marks")
    if at >= len(rows):
        raise IndexError(f"bag {bad.value} out of range for {grad.shape[0]} bags")
    if at >= 0:
        raise IndexError(f"index {bad.value} is out of range for a table of {rows[at]} rows")
    return [(r[:u], v[:u]) for r, v, u in zip(out_rows, out_values, counts)]


class FeatureLayout:
    """The constant part of :func:`feature_forward`'s calls (ctypes arrays built once, not every step): which
    table each feature reads, its ids per sample, its output columns, its pooling, and the tables' shapes.

    Args:
        tab: the table of each feature, features table by table (a table's features in the order of its ids).
        cols: ids per sample of each feature (1 for a single-valued one, L for a bag).
        at: first output column of each feature (its dims[tab[f]] columns are its own).
        mean: each feature's mean pooling (weights 1 / its non-padding ids; else 1 each; 0 on padding).
        rows, dims: (R_t, D_t) of each table.

    Attributes:
        width: output columns, the features' widths summed.
    """

    def __init__(self, tab: Sequence[int], cols: Sequence[int], at: Sequence[int], mean: Sequence[bool],
                 rows: Sequence[int], dims: Sequence[int]) -> None:
        self.tab, self.cols, self.rows, self.dims = list(tab), list(cols), list(rows), list(dims)
        self.width = sum(dims[t] for t in tab)
        self.ids_per_table = [sum(c for t, c in zip(tab, cols) if t == table) for table in range(len(rows))]
        self.c = (_ints(tab), _ints(cols), _ints(at), _ints([int(m) for m in mean]), _ints(rows), _ints(dims))


def feature_forward(layout: FeatureLayout, tables: Sequence[Tensor], ids: Sequence[Tensor],
                    given: Sequence[Tensor | None]) -> tuple[Tensor, Tensor]:
    """Every feature's pooled vector, ``out[s, at[f]:] = sum_j w_sj tables[tab[f]][ids[f][s, j]]``, in one call.

    Args:
        layout: the features and tables.
        tables: (R_t, D_t) float32 contiguous.
        ids: (n,) or (n, cols[f]) int64 contiguous ids of each feature.
        given: (n, cols[f]) float32 contiguous weights of a feature's ids, or None: 0 on padding (id 0), else 1
            or, for mean pooling, 1 / the count of non-padding ids.

    Returns:
        (n, width) pooled vectors; (n sum cols,) the weights used, sample by sample, features side by side.

    Raises:
        IndexError: an id outside its table (nothing is read there).
        ValueError: ids or weights not of the layout's shape.
    """
    n = ids[0].shape[0]
    if any(i.numel() != n * c or i.shape[0] != n for i, c in zip(ids, layout.cols)) or len(ids) != len(layout.cols) \
            or any(g is not None and g.numel() != n * c for g, c in zip(given, layout.cols)):
        raise ValueError(f"ids of shapes {[tuple(i.shape) for i in ids]} for a layout of {layout.cols} ids a sample")
    out = torch.empty((n, layout.width), dtype=torch.float32)
    per_id = torch.empty(n * sum(layout.cols), dtype=torch.float32)
    tab, cols, at, mean, rows, dims = layout.c
    bad = ctypes.c_int64()
    f = _lib().dc_feature_forward(len(ids), _ptrs(ids), cols, tab, at, mean,
                                  (ctypes.c_void_p * len(given))(*(g.data_ptr() if g is not None else None
                                                                   for g in given)),
                                  _ptrs(tables), rows, dims, n, layout.width, per_id.data_ptr(), out.data_ptr(),
                                  ctypes.byref(bad))
    if f >= 0:
        raise IndexError(f"index {bad.value} is out of range for a table of {layout.rows[layout.tab[f]]} rows")
    return out, per_id


def feature_backward(layout: FeatureLayout, ids: Sequence[Tensor], per_id: Tensor,
                     grad: Tensor) -> list[tuple[Tensor, Tensor]]:
    """The gradient of :func:`feature_forward` for each table: its distinct ids and their summed gradient rows.

    Args:
        layout, ids: as given to :func:`feature_forward`; per_id: the weights it returned.
        grad: (n, width) float32 gradient of its output, rows contiguous (any row stride: a column slice of the
            stacked layer's gradient is read in place).

    Returns:
        per table, (U_t,) int64 distinct ids ascending and (U_t, D_t) their gradient rows, summed in the order of
        :func:`bag_backward` (a table's ids sample by sample, its features in turn), both contiguous.
    """
    n = ids[0].shape[0]
    if tuple(grad.shape) != (n, layout.width) or per_id.numel() != n * sum(layout.cols):
        raise ValueError(f"a gradient of shape {tuple(grad.shape)} for ({n}, {layout.width}) outputs")
    if grad.stride(1) != 1 or grad.stride(0) < layout.width:
        grad = grad.contiguous()
    caps = [min(r, n * c) for r, c in zip(layout.rows, layout.ids_per_table)]
    out_rows = [torch.empty(c, dtype=torch.int64) for c in caps]
    out_values = [torch.empty((c, d), dtype=torch.float32) for c, d in zip(caps, layout.dims)]
    tab, cols, at, _, rows, dims = layout.c
    counts, bad = (ctypes.c_int64 * len(caps))(), ctypes.c_int64()
    f = _lib().dc_feature_backward(len(ids), _ptrs(ids), cols, tab, at, len(caps), rows, dims, n, per_id.data_ptr(),
                                   grad.data_ptr(), grad.stride(0), _ptrs(out_rows), _ptrs(out_values), counts,
                                   ctypes.byref(bad))
    if f == -2:
        raise MemoryError("dc_feature_backward: out of memory for the row marks")
    if f >= 0:
        raise IndexError(f"index {bad.value} is out of range for a table of {layout.rows[layout.tab[f]]} rows")
    return [(r[:u], v[:u]) for r, v, u in zip(out_rows, out_values, counts)]


def row_adam(params: Sequence[Tensor], rows: Sequence[Tensor], values: Sequence[Tensor], exp_avgs: Sequence[Tensor],
             exp_avg_sqs: Sequence[Tensor], step_sizes: Sequence[float],
             hyper: tuple[float, float, float]) -> int | None:
    """SparseAdam's update of the distinct ``rows`` of every table in place, in its order of operations.

    Args:
        params, exp_avgs, exp_avg_sqs: (R_t, D_t) float32 contiguous.
        rows: (U_t,) int64 rows, ascending (so distinct); values: (U_t, D) float32 their summed gradients.
        step_sizes: ``-lr * sqrt(1 - beta2^t) / (1 - beta1^t)`` per table.
        hyper: (beta1, beta2, eps).

    Returns:
        None (updated), or the first table whose rows are not ascending: nothing is updated then (sum its
        duplicate rows and call again).

    Raises:
        IndexError: a row outside its table (nothing is updated).
    """
    beta1, beta2, eps = hyper
    consts = (ctypes.c_float * 3)(1 - beta1, 1 - beta2, eps)   # torch casts these scalars to float32 too
    at = _lib().dc_row_adam(len(params), _ints([len(r) for r in rows]), _ints([p.shape[1] for p in params]),
                            _ptrs(rows),
                            _ints([p.shape[0] for p in params]), _ptrs(values), _ptrs(params), _ptrs(exp_avgs),
                            _ptrs(exp_avg_sqs), consts, (ctypes.c_float * len(params))(*step_sizes))
    if at >= len(params):
        return int(at - len(params))
    if at >= 0:
        raise IndexError(f"a gradient row is out of range for a table of {params[at].shape[0]} rows")
    return None


__all__ = ["FeatureLayout", "available", "bag_backward", "bag_forward", "build", "cache_dir", "feature_backward",
           "feature_forward", "fits", "row_adam"]
