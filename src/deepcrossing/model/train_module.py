"""DeepCrossingTrain: the model plus what only training needs (loss, embedding penalty, parameter groups).

It lives here, next to :class:`DeepCrossing`, as torchrec's ``DLRMTrain`` lives next to ``DLRM``: the
penalty reads the model's embedding layer and the parameter groups name its tables, so both change when the
model changes, and a newcomer looking for "how is this model trained" finds them beside it. The
:class:`~deepcrossing.training.trainer.Trainer` sees only this wrapper (any module with the same three
members), never the model's layer names.

Example:
    >>> from deepcrossing.config import Feature, FeatureSpec, ModelConfig
    >>> spec = FeatureSpec((Feature("movieId", "categorical", "item", dim=4),))
    >>> model = DeepCrossing(spec, ModelConfig(hidden=(8,), width=6, embedding_l2=1e-3), {"movieId": 10})
    >>> wrapper = DeepCrossingTrain(model)
    >>> batch = Batch(torch.zeros(2, 0), {"movieId": torch.tensor([1, 2])}, labels=torch.tensor([0.0, 1.0]))
    >>> objective, loss = wrapper(batch)
    >>> bool(objective > loss), [len(g) for g in (wrapper.parameter_groups().embedding,)]
    (True, [1])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from deepcrossing.encoding.batch import Batch
from deepcrossing.model.deep_crossing import DeepCrossing


@dataclass(frozen=True)
class ParameterGroups:
    """The trainable parameters by optimizer treatment, each list in the model's parameter order.

    Attributes:
        embedding: the embedding tables (own weight decay; ``SparseAdam`` when their gradients are sparse).
        dense: everything else (Adam/AdamW).
        sparse_gradients: the tables were built with ``sparse=True`` (row-sparse gradients).
    """

    embedding: list[nn.Parameter]
    dense: list[nn.Parameter]
    sparse_gradients: bool


class DeepCrossingTrain(nn.Module):
    """Training view of a :class:`DeepCrossing`: ``BCEWithLogitsLoss`` plus the embedding L2 penalty.

    The penalty is ``model.config.embedding_l2 * mean_b sum_f ||e_f||^2`` over the vectors looked up in the
    batch, so frequent ids are regularized more often (id-frequency regularization).

    Args:
        model: the model to train (its weights are what checkpoints and model files hold).

    Attributes:
        model: the wrapped model (Batch -> logits; for evaluation and saving).
    """

    def __init__(self, model: DeepCrossing) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.embedding_l2 = model.config.embedding_l2

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """A labelled batch -> (() objective to minimize: loss + penalty, () detached BCE loss to report)."""
        if batch.labels is None:
            raise ValueError("a training batch needs labels")
        embedded = self.model.embedding(batch)                        # {feature: (B, D_f)} table lookups
        numeric = self.model.numeric(batch.numeric)                   # not penalized: no id frequency
        logits = self.model.score_embedded({**embedded, **numeric}, batch.dense)     # (B,)
        loss = self.loss_fn(logits, batch.labels)
        if self.embedding_l2 == 0.0 or not embedded:
            return loss + logits.new_zeros(()), loss.detach()
        # sum_f ||e_f||^2 as one squared norm of the features side by side: 4 operations, not 2 per feature
        squares = torch.cat(list(embedded.values()), dim=1).pow(2).sum(dim=1)           # (B,)
        return loss + self.embedding_l2 * squares.mean(), loss.detach()

    def parameter_groups(self) -> ParameterGroups:
        """Trainable parameters: the embedding tables vs the rest (see :class:`ParameterGroups`)."""
        tables = {id(p) for p in self.model.embedding.parameters()}
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        return ParameterGroups(embedding=[p for p in trainable if id(p) in tables],
                               dense=[p for p in trainable if id(p) not in tables],
                               sparse_gradients=self.model.embedding.sparse)


__all__ = ["DeepCrossingTrain", "ParameterGroups"]
