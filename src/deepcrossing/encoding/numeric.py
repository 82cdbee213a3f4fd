"""Numeric features as vectors (Gorishniy, Rubachev, Babenko, "On Embeddings for Numerical Features in Tabular
Deep Learning", NeurIPS 2022): the fitted, pure half. The trainable half is :mod:`deepcrossing.model.numeric`.

Transforms of ``kind = "numeric"`` features (``Feature.transform``):

* ``standardize``, ``log1p_standardize``: one column of ``Batch.dense`` (:class:`Normalizer`);
* ``buckets``: a quantile-bucket id into an embedding table (:class:`Bucketizer`);
* ``ple``: the piecewise-linear encoding over quantile bins (:class:`PiecewiseLinear`), a (B, n_buckets)
  block of ``Batch.numeric``;
* ``ple_tree``: the same over target-aware bins, the leaves of a decision tree fitted on (x, label);
* ``periodic``: the standardized value, (B, 1) in ``Batch.numeric``; the model maps it to
  ``[sin(2 pi c x), cos(2 pi c x)]`` with trainable frequencies ``c``.

The model turns each ``Batch.numeric`` block into a vector (``Linear + ReLU`` to ``dim`` when the feature sets
``dim``, else the raw encoding) that enters the stacking layer like an embedding.

Example:
    >>> import numpy as np
    >>> ple = PiecewiseLinear(n_bins=2).fit(np.array([0.0, 1.0, 2.0, 3.0, 4.0]))
    >>> ple.edges_, ple.transform(np.array([1.0, 3.0, np.nan])).tolist()
    ([0.0, 2.0, 4.0], [[0.5, 0.0], [1.0, 0.5], [1.0, 0.0]])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deepcrossing.config import Feature
from deepcrossing.encoding.transformers import _expect_keys, _floats
from deepcrossing.errors import InputError

NUMERIC_EMBEDDINGS = ("ple", "ple_tree", "periodic")
TREE_MAX_ROWS = 200_000  # the tree bins are fitted on at most this many train rows (a fixed subsample)


def is_dense(feature: Feature) -> bool:
    """True for a standardized numeric: one column of ``Batch.dense``."""
    return feature.kind == "numeric" and feature.transform in ("standardize", "log1p_standardize")


def is_numeric_embedding(feature: Feature) -> bool:
    """True for a numeric feature that becomes a vector: a block of ``Batch.numeric``."""
    return feature.kind == "numeric" and feature.transform in NUMERIC_EMBEDDINGS


def degenerate(values: Any) -> str | None:
    """Why a train column cannot inform a numeric embedding (constant, or no finite value), else None.

    Example:
        >>> degenerate(np.array([2.0, 2.0, np.nan])), degenerate(np.array([1.0, 2.0]))
        ('constant on train (2.0): encoded as zeros', None)
    """
    x = _floats(values)
    distinct = np.unique(x[np.isfinite(x)])
    if len(distinct) >= 2:
        return None
    return f"constant on train ({distinct[0]}): encoded as zeros" if len(distinct) else \
        "no finite value on train: encoded as zeros"


def input_width(feature: Feature) -> int:
    """Width W of the feature's ``Batch.numeric`` block: ``n_buckets`` for ``ple``/``ple_tree`` (bins that a
    fit could not fill stay zero), 1 for ``periodic``.

    Example:
        >>> input_width(Feature("x", "numeric", transform="ple", n_buckets=8))
        8
    """
    return 1 if feature.transform == "periodic" else feature.n_buckets


class PiecewiseLinear:
    """The piecewise-linear encoding (PLE) of a number over bins fitted on train.

    With edges ``b_0 < ... < b_T`` (T bins), ``x`` encodes as ``e_t = (x - b_{t-1}) / (b_t - b_{t-1})``
    clipped to [0, 1]; the first bin is not clipped below and the last not above (a value outside the train
    range extrapolates linearly; with one bin nothing is clipped). The vector is ``n_bins`` wide: columns
    past T are zero. NaN, infinite and NULL values are imputed with the train mean ``mean_``.

    Bins: ``tree=False``: the distinct quantiles of the finite train values at ``0, 1/n, ..., 1``;
    ``tree=True``: the thresholds of a decision tree with at most ``n_bins`` leaves fitted on (x, label),
    plus the train minimum and maximum (target-aware bins).

    Fallbacks (never a crash, never NaN; ``note_`` says what happened, the encoder warns with it): a column
    with fewer distinct finite values than ``n_bins`` gets fewer bins; a constant column or one with no
    finite value gets no bin (it encodes as zeros: it carried nothing on train).

    Args:
        n_bins: at most this many bins (the width of the encoding).
        tree: target-aware bins (``ple_tree``) instead of quantile bins (``ple``).

    Fitted state:
        ``edges_``: the T + 1 bin edges (an empty list when there is no bin).
        ``mean_``: the imputed value of NaN/inf/NULL.
        ``note_``: None, or why the encoding has fewer bins than ``n_bins`` (not saved).

    Example:
        >>> import numpy as np
        >>> p = PiecewiseLinear(n_bins=4).fit(np.array([5.0, 5.0, 5.0]))
        >>> p.edges_, p.note_, p.transform(np.array([5.0, 9.0])).tolist()
        ([], 'constant on train (5.0): encoded as zeros', [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    """

    def __init__(self, n_bins: int = 16, tree: bool = False) -> None:
        self.n_bins = n_bins
        self.tree = tree

    def fit(self, values: Any, y: Any = None) -> PiecewiseLinear:
        """Fit the bin edges on the finite values of ``values`` (N,) (and labels ``y`` (N,) for ``tree``)."""
        x = _floats(values)
        finite = np.isfinite(x)
        if self.tree:
            if y is None:
                raise InputError("target-aware bins (ple_tree) need the labels of the train samples")
            labels = np.asarray(y, dtype=np.float64)
            finite &= np.isfinite(labels)
        x = x[finite]
        self.mean_ = float(x.mean()) if len(x) else 0.0
        distinct = np.unique(x)
        self.note_ = degenerate(x)
        if self.note_ is not None:
            self.edges_: list[float] = []
            return self
        if self.tree:
            edges = self._tree_edges(x, labels[finite])
        else:
            # edges at train values (not interpolated): a discrete column gets its own values as edges
            edges = np.unique(np.quantile(x, np.linspace(0.0, 1.0, self.n_bins + 1), method="inverted_cdf"))
        self.edges_ = [float(e) for e in edges]
        if len(distinct) <= self.n_bins:
            self.note_ = (f"only {len(distinct)} distinct values on train for {self.n_bins} bins: "
                          f"{len(edges) - 1} bin(s)")
        return self

    def _tree_edges(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Edges from a depth-limited decision tree on (x, y): its split thresholds, the min and the max."""
        from sklearn.tree import DecisionTreeClassifier

        if len(x) > TREE_MAX_ROWS:  # a fixed subsample: the same bins on every run
            keep = np.random.default_rng(0).choice(len(x), TREE_MAX_ROWS, replace=False)
            x, y = x[keep], y[keep]
        leaf = max(1, len(x) // (8 * self.n_bins))  # no bin of a handful of rows
        tree = DecisionTreeClassifier(max_leaf_nodes=self.n_bins, min_samples_leaf=leaf, random_state=0)
        tree.fit(x.reshape(-1, 1), (y > 0.5).astype(np.int64))
        thresholds = tree.tree_.threshold[tree.tree_.feature >= 0]  # internal nodes only (leaves hold -2)
        inner = thresholds[(thresholds > x.min()) & (thresholds < x.max())]
        edges: np.ndarray = np.unique(np.concatenate([[x.min(), x.max()], inner]))
        return edges

    def transform(self, values: Any) -> np.ndarray:
        """(N,) numbers -> (N, n_bins) float32 encodings."""
        x = _floats(values)
        x = np.where(np.isfinite(x), x, self.mean_)
        out = np.zeros((len(x), self.n_bins), np.float32)
        n = len(self.edges_) - 1
        if n < 1:
            return out
        edges = np.asarray(self.edges_, np.float64)
        e = (x[:, None] - edges[:-1]) / np.diff(edges)                  # (N, T) unclipped
        if n > 1:
            e[:, 0] = np.minimum(e[:, 0], 1.0)
            e[:, 1:-1] = np.clip(e[:, 1:-1], 0.0, 1.0)
            e[:, -1] = np.maximum(e[:, -1], 0.0)
        out[:, :n] = e
        return out

    def state(self) -> dict[str, Any]:
        return {"n_bins": self.n_bins, "tree": self.tree, "edges": list(self.edges_), "mean": self.mean_}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PiecewiseLinear:
        _expect_keys(state, {"n_bins", "tree", "edges", "mean"}, "PiecewiseLinear")
        p = cls(n_bins=int(state["n_bins"]), tree=bool(state["tree"]))
        p.edges_ = [float(v) for v in state["edges"]]
        p.mean_ = float(state["mean"])
        p.note_ = None
        if len(p.edges_) > p.n_bins + 1 or any(b <= a for a, b in zip(p.edges_, p.edges_[1:])):
            raise InputError(f"PiecewiseLinear edges must increase and number at most n_bins + 1 = {p.n_bins + 1}",
                             field="edges")
        return p
