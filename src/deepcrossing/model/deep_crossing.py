"""DeepCrossing: Embedding -> Stacking -> MLP (Residual Units) -> Scoring, returning logits.

The model also owns the algebra of its first layer's split by side (:meth:`DeepCrossing.first_layer_split`,
:meth:`DeepCrossing.head_from_first_layer`), which the serving fast path uses; the loss and the embedding
penalty live in the training wrapper, :class:`~deepcrossing.model.train_module.DeepCrossingTrain`.

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

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from deepcrossing.config import FeatureSpec, ModelConfig
from deepcrossing.encoding.batch import Batch
from deepcrossing.encoding.numeric import is_dense
from deepcrossing.model.layers import MLP, EmbeddingLayer, ScoringLayer, StackingLayer
from deepcrossing.model.numeric import NumericEmbeddingLayer


def dense_feature_names(spec: FeatureSpec) -> list[str]:
    """Numeric features that enter as dense columns (spec order), i.e. ``Batch.dense``'s columns."""
    return [f.name for f in spec.features if is_dense(f)]


class DeepCrossing(nn.Module):
    """The Deep Crossing model.

    Args:
        spec: the feature spec.
        config: MLP shape and regularization.
        cardinalities: table name -> rows (``Encoder.cardinalities``).
        sparse: sparse embedding gradients (for ``SparseAdam``).

    Attributes:
        embedding, stacking, mlp, scoring: the paper's layers.
        numeric: the numeric embeddings (``ple``, ``ple_tree``, ``periodic`` features), stacked after the
            table embeddings like them (:mod:`deepcrossing.model.numeric`).
        feature_slices: feature -> slice of the stacked vector (``stacking.feature_slices``).
    """

    def __init__(self, spec: FeatureSpec, config: ModelConfig, cardinalities: dict[str, int],
                 sparse: bool = False) -> None:
        super().__init__()
        self.spec = spec
        self.config = config
        self.embedding = EmbeddingLayer(spec, cardinalities, sparse)
        self.numeric = NumericEmbeddingLayer(spec)
        self.stacking = StackingLayer({**self.embedding.dims, **self.numeric.dims}, dense_feature_names(spec),
                                      config.embedding_dropout)
        self.mlp = MLP(self.stacking.out_dim, config)
        self.scoring = ScoringLayer(self.mlp.out_dim)

    @property
    def feature_slices(self) -> dict[str, slice]:
        return self.stacking.feature_slices

    def forward(self, batch: Batch) -> Tensor:
        """Batch of B samples -> (B,) logits."""
        return self.score_embedded(self.embed(batch), batch.dense)

    def embed(self, batch: Batch) -> dict[str, Tensor]:
        """{feature: (B, D_f)}: the table embeddings, then the numeric embeddings."""
        return {**self.embedding(batch), **self.numeric(batch.numeric)}

    def score_embedded(self, embedded: dict[str, Tensor], dense: Tensor) -> Tensor:
        """Everything after the embeddings: {feature: (B, D_f)} (:meth:`embed`), (B, n_dense) -> (B,) logits.

        The training wrapper (:class:`~deepcrossing.model.train_module.DeepCrossingTrain`) calls the
        embedding layers itself, to penalize the looked-up vectors, and then this.
        """
        stacked = self.stacking(embedded, dense)         # (B, sum D_f + n_dense)
        logits: Tensor = self.scoring(self.mlp(stacked))  # (B,)
        return logits

    # ---- the first-layer split (serving): W x + b = W x_item + (W x_request + b), then the rest ----

    def stack(self, batch: Batch) -> Tensor:
        """(B, S) stacked vectors (embedding + stacking layers) of a batch."""
        stacked: Tensor = self.stacking(self.embed(batch), batch.dense)
        return stacked

    def first_layer_split(self) -> FirstLayerSplit:
        """The first MLP layer split by side: item-side columns vs the request's (user and context) columns."""
        mask = torch.zeros(self.stacking.out_dim, dtype=torch.bool)
        for feature in self.spec.features:
            if feature.side == "item" and feature.name in self.feature_slices:
                mask[self.feature_slices[feature.name]] = True
        first = self.mlp.first_linear
        return FirstLayerSplit(weight=first.weight, bias=first.bias, item_mask=mask,
                               needs_stacked=self.mlp.first_needs_input)

    def head_from_first_layer(self, pre: Tensor, stacked: Tensor) -> Tensor:
        """(B,) logits given the first layer's pre-activation ``pre`` (B, H) and, for a residual first block,
        the stacked vectors (B, S) (else any (B, 0) tensor): ``forward`` minus embedding, stacking and the
        first ``Linear``."""
        logits: Tensor = self.scoring(self.mlp.from_first_layer(pre, stacked))
        return logits


@dataclass(frozen=True)
class FirstLayerSplit:
    """The first MLP layer ``W x + b`` of a :class:`DeepCrossing`, split by input columns.

    The stacked vector is ``x = x_item + x_request`` (disjoint columns, zeros elsewhere), so
    ``W x + b = W x_item + (W x_request + b)``: the item share is computed once per movie and the request share
    once per request; :meth:`DeepCrossing.head_from_first_layer` does the rest per candidate.

    Attributes:
        weight: (H, S) the first layer's weight (a view of the model's parameter).
        bias: (H,) its bias.
        item_mask: (S,) True on the columns of item-side features.
        needs_stacked: the head needs ``x`` itself (a residual first block's skip connection).

    Example:
        >>> from deepcrossing.config import Feature, FeatureSpec, ModelConfig
        >>> spec = FeatureSpec((Feature("movieId", "categorical", "item", dim=4),
        ...                     Feature("userAvgRating", "numeric", "user", transform="standardize")))
        >>> model = DeepCrossing(spec, ModelConfig(hidden=(8,), width=6), {"movieId": 10}).eval()
        >>> batch = Batch(torch.ones(3, 1), {"movieId": torch.tensor([0, 2, 9])})
        >>> split = model.first_layer_split()
        >>> x_item, p_item = split.item_partial(model.stack(batch))
        >>> x_user, p_user = split.request_partial(model.stack(batch)[0])
        >>> logits = model.head_from_first_layer(p_item + p_user, x_item + x_user)
        >>> torch.allclose(logits, model(batch), atol=1e-6)
        True
    """

    weight: Tensor
    bias: Tensor
    item_mask: Tensor
    needs_stacked: bool

    def item_partial(self, stacked: Tensor) -> tuple[Tensor, Tensor]:
        """(M, S) stacked movie rows -> ((M, S) item columns only, (M, H) ``x_item W^T``)."""
        x = stacked.masked_fill(~self.item_mask, 0.0).contiguous()
        return x, x @ self.weight.T

    def request_partial(self, stacked: Tensor) -> tuple[Tensor, Tensor]:
        """(S,) stacked vector of one request -> ((S,) request columns only, (H,) ``W x_request + b``)."""
        x = stacked.masked_fill(self.item_mask, 0.0)
        return x, self.weight @ x + self.bias


class FlatDeepCrossing(nn.Module):
    """DeepCrossing over flat tensors (for TorchScript/ONNX export and fast serving).

    Inputs, in order: ``dense (B, n_dense) float32``, ``sparse (B, n_sparse) int64`` (columns in
    ``sparse_names`` order), then for each name in ``bag_names`` its ``(B, L) int64`` ids, then for each name
    in ``weighted_names`` its ``(B, L) float32`` weights, then for each name in ``numeric_names`` its
    ``(B, W) float32`` numeric-embedding input (``Batch.numeric``).
    """

    def __init__(self, model: DeepCrossing, sparse_names: list[str], bag_names: list[str],
                 weighted_names: list[str], numeric_names: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.model = model
        self.sparse_names = list(sparse_names)
        self.bag_names = list(bag_names)
        self.weighted_names = list(weighted_names)
        self.numeric_names = list(numeric_names)

    def forward(self, dense: Tensor, sparse: Tensor, *bags: Tensor) -> Tensor:
        n_bags, n_weighted = len(self.bag_names), len(self.weighted_names)
        batch = Batch(
            dense=dense,
            sparse={name: sparse[:, i] for i, name in enumerate(self.sparse_names)},
            bags={name: bags[i] for i, name in enumerate(self.bag_names)},
            bag_weights={name: bags[n_bags + i] for i, name in enumerate(self.weighted_names)},
            numeric={name: bags[n_bags + n_weighted + i] for i, name in enumerate(self.numeric_names)},
        )
        logits: Tensor = self.model(batch)
        return logits


__all__ = ["DeepCrossing", "FirstLayerSplit", "FlatDeepCrossing", "dense_feature_names"]
