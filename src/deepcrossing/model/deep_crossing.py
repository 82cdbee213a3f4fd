"""DeepCrossing: Embedding -> Stacking -> MLP (Residual Units) -> Scoring, returning logits.

Example:
    >>> from deepcrossing.config import Feature, FeatureSpec, ModelConfig
    >>> spec = FeatureSpec((Feature("movieId", "categorical", "item", dim=4),
    ...                     Feature("userAvgRating", "numeric", "user", transform="standardize")))
    >>> model = DeepCrossing(spec, ModelConfig(hidden=(8,), width=6), {"movieId": 10})
    >>> batch = Batch(torch.zeros(3, 1), {"movieId": torch.tensor([0, 2, 9])})
    >>> model(batch).shape
    torch.Size([3])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from deepcrossing.config import FeatureSpec, ModelConfig
from deepcrossing.encoding.batch import Batch
from deepcrossing.model.layers import MLP, EmbeddingLayer, ScoringLayer, StackingLayer


def dense_feature_names(spec: FeatureSpec) -> list[str]:
    """Numeric features that enter as dense columns (spec order), i.e. ``Batch.dense``'s columns."""
    return [f.name for f in spec.features if f.kind == "numeric" and f.transform != "buckets"]


class DeepCrossing(nn.Module):
    """The Deep Crossing model.

    Args:
        spec: the feature spec.
        config: MLP shape and regularization.
        cardinalities: table name -> rows (``Encoder.cardinalities``).
        sparse: sparse embedding gradients (for ``SparseAdam``).

    Attributes:
        embedding, stacking, mlp, scoring: the paper's layers.
        feature_slices: feature -> slice of the stacked vector (``stacking.feature_slices``).
    """

    def __init__(self, spec: FeatureSpec, config: ModelConfig, cardinalities: dict[str, int],
                 sparse: bool = False) -> None:
        super().__init__()
        self.spec = spec
        self.config = config
        self.embedding = EmbeddingLayer(spec, cardinalities, sparse)
        self.stacking = StackingLayer(self.embedding.dims, dense_feature_names(spec), config.embedding_dropout)
        self.mlp = MLP(self.stacking.out_dim, config)
        self.scoring = ScoringLayer(self.mlp.out_dim)

    @property
    def feature_slices(self) -> dict[str, slice]:
        return self.stacking.feature_slices

    def forward(self, batch: Batch) -> Tensor:
        """Batch of B samples -> (B,) logits."""
        embedded = self.embedding(batch)                 # {feature: (B, D_f)}
        stacked = self.stacking(embedded, batch.dense)   # (B, sum D_f + n_dense)
        return self.scoring(self.mlp(stacked))           # (B,)

    def forward_with_penalty(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Logits and the embedding L2 penalty ``config.embedding_l2 * mean_b sum_f ||e_f||^2`` of this batch.

        Only the rows looked up in the batch are penalized, so frequent ids are regularized more often
        (id-frequency regularization). Returns ((B,) logits, () penalty).
        """
        embedded = self.embedding(batch)
        stacked = self.stacking(embedded, batch.dense)
        logits = self.scoring(self.mlp(stacked))
        if self.config.embedding_l2 == 0.0 or not embedded:
            return logits, logits.new_zeros(())
        squares = torch.stack([e.pow(2).sum(dim=1) for e in embedded.values()], dim=1)  # (B, F)
        return logits, self.config.embedding_l2 * squares.sum(dim=1).mean()


class FlatDeepCrossing(nn.Module):
    """DeepCrossing over flat tensors (for TorchScript/ONNX export and fast serving).

    Inputs, in order: ``dense (B, n_dense) float32``, ``sparse (B, n_sparse) int64`` (columns in
    ``sparse_names`` order), then for each name in ``bag_names`` its ``(B, L) int64`` ids, then for each name
    in ``weighted_names`` its ``(B, L) float32`` weights.
    """

    def __init__(self, model: DeepCrossing, sparse_names: list[str], bag_names: list[str],
                 weighted_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.sparse_names = list(sparse_names)
        self.bag_names = list(bag_names)
        self.weighted_names = list(weighted_names)

    def forward(self, dense: Tensor, sparse: Tensor, *bags: Tensor) -> Tensor:
        n_bags = len(self.bag_names)
        batch = Batch(
            dense=dense,
            sparse={name: sparse[:, i] for i, name in enumerate(self.sparse_names)},
            bags={name: bags[i] for i, name in enumerate(self.bag_names)},
            bag_weights={name: bags[n_bags + i] for i, name in enumerate(self.weighted_names)},
        )
        return self.model(batch)


__all__ = ["DeepCrossing", "FlatDeepCrossing", "dense_feature_names"]
