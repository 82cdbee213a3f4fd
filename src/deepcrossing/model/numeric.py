"""Numeric embeddings (Gorishniy, Rubachev, Babenko, NeurIPS 2022), the trainable half: each numeric feature
with transform ``ple``, ``ple_tree`` or ``periodic`` becomes a (B, D) vector that the stacking layer takes
like an embedding. The fitted half (bin edges, statistics) is :mod:`deepcrossing.encoding.numeric`.

* ``ple`` / ``ple_tree``: the encoder's (B, T) piecewise-linear encoding, then ``Linear(T, dim) + ReLU``
  (the paper's PLE-Linear-ReLU) when the feature sets ``dim``, else the raw encoding (D = T).
* ``periodic``: ``[sin(2 pi c x), cos(2 pi c x)]`` of the standardized value with k trainable frequencies
  ``c ~ N(0, sigma)``, then ``Linear(2k, dim) + ReLU`` (the paper's PLR) when ``dim`` is set, else (D = 2k).

Example:
    >>> from deepcrossing.config import Feature, FeatureSpec
    >>> spec = FeatureSpec((Feature("a", "numeric", transform="ple", n_buckets=4, dim=3),
    ...                     Feature("b", "numeric", transform="periodic", n_frequencies=5)))
    >>> layer = NumericEmbeddingLayer(spec)
    >>> out = layer({"a": torch.rand(2, 4), "b": torch.randn(2, 1)})
    >>> layer.dims, out["a"].shape, out["b"].shape
    ({'a': 3, 'b': 10}, torch.Size([2, 3]), torch.Size([2, 10]))
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from deepcrossing.config import FeatureSpec
from deepcrossing.encoding.numeric import input_width, is_numeric_embedding


class LinearReLU(nn.Module):
    """``ReLU(W x + b)``: the ``-LR`` head of a numeric embedding, (B, in_dim) -> (B, dim)."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.linear(x))


class Periodic(nn.Module):
    """``[sin(2 pi c x), cos(2 pi c x)]`` with k trainable frequencies ``c`` drawn from N(0, sigma).

    Args:
        n_frequencies: k.
        sigma: standard deviation of the initial frequencies (the paper's most important setting: small
            sigma, smooth functions of x).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> p = Periodic(3, 0.1)
        >>> p(torch.zeros(2, 1)).abs().tolist()          # x = 0: sin 0, cos 1
        [[0.0, 0.0, 0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]]
    """

    def __init__(self, n_frequencies: int, sigma: float) -> None:
        super().__init__()
        self.frequencies = nn.Parameter(torch.randn(n_frequencies) * sigma)   # (k,)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1) standardized values -> (B, 2k)."""
        angles = 2.0 * math.pi * self.frequencies * x                           # (B, k)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class NumericEmbeddingLayer(nn.Module):
    """One small module per numeric embedding of the spec (spec order): ``Batch.numeric`` -> {feature: (B, D_f)}.

    Args:
        spec: the feature spec (its ``ple``, ``ple_tree`` and ``periodic`` features).

    Attributes:
        dims: feature -> output width D_f (``dim``, else the raw encoding's width).
    """

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__()
        self.embeddings = nn.ModuleDict()
        self.dims: dict[str, int] = {}
        for f in spec.features:
            if not is_numeric_embedding(f):
                continue
            parts: list[nn.Module] = []
            width = input_width(f)
            if f.transform == "periodic":
                parts.append(Periodic(f.n_frequencies, f.sigma))
                width = 2 * f.n_frequencies
            if f.dim is not None:
                parts.append(LinearReLU(width, f.dim))
                width = f.dim
            self.embeddings[f.name] = nn.Sequential(*parts)   # an empty Sequential is the identity
            self.dims[f.name] = width

    def forward(self, numeric: dict[str, Tensor]) -> dict[str, Tensor]:
        """{feature: (B, W_f)} encoder inputs -> {feature: (B, D_f)}."""
        return {name: module(numeric[name]) for name, module in self.embeddings.items()}


__all__ = ["LinearReLU", "NumericEmbeddingLayer", "Periodic"]
