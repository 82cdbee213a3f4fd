"""A within-user pairwise (BPR) loss term, trained on a second, user-grouped batch per step (``train.pairwise``).

Deep Crossing is trained pointwise (binary cross-entropy on random batches), but GAUC and NDCG@k rank the
movies of one user against each other. With ``TrainConfig.pairwise = lambda > 0`` every step also takes a
*grouped* batch: the train rows in an order where the rows of one user are adjacent (users shuffled, rows
shuffled within a user, drawn once per epoch by :func:`grouped_order`), cut into batches of ``batch_size``
rows, so most of a grouped batch's rows have same-user partners. The objective of a step is::

    BCE(random batch) + lambda * mean over (p, n) of softplus(-(s_p - s_n))

over the grouped batch's pairs of a positive ``p`` and a negative ``n`` of the same user (:func:`pair_loss`;
``s`` the logits of the model's training forward: dropout, in-place ReLU, the bag lookups). The random
batches are the same as with ``lambda = 0`` (the grouped order has its own generator); ``lambda = 0`` adds
nothing and draws nothing. The grouped rows come from the samples' ``userId`` (:func:`train_users`).

Under DDP each rank groups its own shard and averages over its own pairs; DDP averages the ranks'
gradients. ``train --stream`` is refused (the grouped order needs the train rows held in memory).

Measured on the valid split (default spec, 3 seeds, mean; a shared, loaded 2-core machine), lambda 0 / 0.3 / 1:

=====================  ======================  ======================  ======================
samples                AUC                     GAUC                    NDCG@10
=====================  ======================  ======================  ======================
ml-latest-small, icf   .7973 / .7974 / .7959   .7146 / .7143 / .7148   .8558 / .8557 / .8509
ml-100k, icf           .7511 / .7508 / .7497   .6862 / .6883 / .6912   .7991 / .8035 / .8054
SparrowRecSys CSV      .7657 / .7659 / .7670   .6828 / .6822 / .6833   .8407 / .8416 / .8377
=====================  ======================  ======================  ======================

Only ml-100k gains (GAUC +.005, NDCG@10 +.006 at lambda 1, AUC -.001); elsewhere the changes are within
seed noise (GAUC std .001-.005), so the default stays 0. An epoch costs ~2.4x (ml-latest-small: 1.9 vs
0.8 s): the grouped batch's forward and backward, and ~4 ms of pair loss per 1024 rows (~63k pairs).

Example:
    >>> logits = torch.tensor([2.0, 0.0, 1.0, 3.0])
    >>> labels = torch.tensor([1.0, 0.0, 0.0, 1.0])
    >>> users = torch.tensor([7, 7, 9, 9])
    >>> round(float(pair_loss(logits, labels, users)), 4)  # (softplus(-2) + softplus(-2)) / 2
    0.1269
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepcrossing.config import TrainConfig
from deepcrossing.encoding.batch import Batch
from deepcrossing.errors import InputError
from deepcrossing.model.train_module import ParameterGroups
from deepcrossing.training.distributed import DistContext, shard_rows

USER_COLUMN = "userId"
MAX_PAIRS = 1 << 24
"""At most so many pairs per grouped batch (an evenly strided subset beyond: bounded memory, no RNG draw)."""


def grouped_order(users: Tensor, generator: torch.Generator) -> Tensor:
    """A permutation of the rows where the rows of one user are adjacent: users in a random order, rows in a
    random order within each user.

    Args:
        users: (N,) int64 user of each row (any ids).
        generator: draws the two permutations (users, rows).

    Returns:
        (N,) int64 row indices (on ``users``' device).

    Example:
        >>> order = grouped_order(torch.tensor([5, 3, 5, 3, 8]), torch.Generator().manual_seed(0))
        >>> users = torch.tensor([5, 3, 5, 3, 8])[order].tolist()
        >>> sorted(order.tolist()), [u for i, u in enumerate(users) if i == 0 or u != users[i - 1]].__len__()
        ([0, 1, 2, 3, 4], 3)
    """
    n = len(users)
    _, user_of_row = torch.unique(users, return_inverse=True)                     # (N,) dense user numbers
    n_users = int(user_of_row.max()) + 1 if n else 0
    user_rank = torch.randperm(n_users, generator=generator).to(users.device)    # a random order of users
    row_rank = torch.randperm(n, generator=generator).to(users.device)          # a random order within a user
    return torch.argsort(user_rank[user_of_row] * max(n, 1) + row_rank)


def pair_loss(logits: Tensor, labels: Tensor, users: Tensor, max_pairs: int = MAX_PAIRS) -> Tensor:
    """Mean of ``softplus(-(s_p - s_n))`` over every pair of a positive ``p`` and a negative ``n`` of the same user.

    A user with one label class only has no pair; rows of different users never pair. More than
    ``max_pairs`` pairs: an evenly strided subset of them (all users' pairs enumerated in one order).

    Args:
        logits: (B,) float scores.
        labels: (B,) 0/1 labels.
        users: (B,) int64 user of each row (need not be sorted).
        max_pairs: the most pairs averaged.

    Returns:
        () the mean over the pairs (0, with no gradient path, when there is no pair).

    Example:
        >>> pair_loss(torch.tensor([1.0, 5.0]), torch.tensor([1.0, 0.0]), torch.tensor([1, 2]))  # two users
        tensor(0.)
    """
    _, seg = torch.unique(users, return_inverse=True)                  # (B,) dense user number of each row
    positive = labels > 0.5
    order = torch.argsort(seg * 2 + positive.long(), stable=True)      # per user: its negatives, then positives
    n_seg = int(seg.max()) + 1 if len(seg) else 0
    rows = torch.bincount(seg, minlength=n_seg)                                   # (U,) rows of each user
    pos = torch.bincount(seg[positive], minlength=n_seg)                          # (U,) positives
    neg = rows - pos
    start = torch.cumsum(rows, 0) - rows                                          # (U,) first row in ``order``
    pairs = pos * neg                                                             # (U,) pairs of each user
    total = int(pairs.sum())
    if total == 0:
        return logits.new_zeros(())
    stride = -(-total // max_pairs)                                               # ceil: 1 unless capped
    pair = torch.arange(0, total, stride, device=logits.device)                   # (P,) pair numbers
    first_pair = torch.cumsum(pairs, 0) - pairs                                   # (U,) number of a user's first
    # a user without pairs shares its first number with the next user; right=True picks the last of them
    u = torch.searchsorted(first_pair, pair, right=True) - 1                      # (P,) user of each pair
    k = pair - first_pair.index_select(0, u)                                      # (P,) pair number in the user
    n_neg = neg.index_select(0, u)
    a = torch.div(k, n_neg, rounding_mode="floor")                                # (P,) its positive, negative:
    b = k - a * n_neg
    first = start.index_select(0, u)
    p_row = order.index_select(0, first + n_neg + a)
    n_row = order.index_select(0, first + b)
    return F.softplus(logits.index_select(0, n_row) - logits.index_select(0, p_row)).mean()


class PairwiseTrain(nn.Module):
    """A training wrapper plus the pairwise term: ``(batch, grouped, grouped_users) -> (objective, loss, pair)``.

    One module so that under DDP both forwards go through DDP's one forward per step.

    Args:
        module: the pointwise training wrapper (:class:`~deepcrossing.model.DeepCrossingTrain`): ``batch ->
            (objective, loss)``, with ``.model`` (``Batch -> logits``).
        weight: lambda, the weight of the pairwise term.
    """

    def __init__(self, module: Any, weight: float) -> None:
        super().__init__()
        self.module: Any = module
        self.weight = weight

    @property
    def model(self) -> nn.Module:
        """The wrapped model."""
        model = self.module.model
        assert isinstance(model, nn.Module)
        return model

    def forward(self, batch: Batch, grouped: Batch, grouped_users: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """() objective (pointwise objective + weight * pair term), () detached BCE loss, () detached pair term."""
        objective, loss = self.module(batch)
        assert grouped.labels is not None
        pair = pair_loss(self.model(grouped).float(), grouped.labels, grouped_users)   # (G,) logits -> ()
        return objective + self.weight * pair, loss, pair.detach()

    def parameter_groups(self) -> ParameterGroups:
        """The wrapped module's parameter groups."""
        groups = self.module.parameter_groups()
        assert isinstance(groups, ParameterGroups)
        return groups


def train_users(tables: Mapping[str, pa.Table | None], config: TrainConfig, source: str | None = None,
                dist: DistContext | None = None, streaming: bool = False) -> Tensor | None:
    """The user of each train row (this rank's shard), when ``config.pairwise > 0``; else None (nothing read).

    Args:
        tables: the sample tables (``train``).
        config: the training config.
        source: the train file, for errors.
        dist: this rank: its shard's rows (:func:`training.distributed.shard_rows`), as the train rows.
        streaming: ``train --stream`` (refused with ``pairwise > 0``).

    Returns:
        (N,) int64 user numbers (dense codes of the ``userId`` column), or None.

    Raises:
        InputError: streaming, no train table, no ``userId`` column or a null in it.
    """
    if not config.pairwise:
        return None
    if streaming:
        raise InputError("train.pairwise > 0 groups the train rows by user in memory; it does not work with "
                         "--stream (set train.pairwise = 0 or leave out --stream)", field="train.pairwise")
    train = tables.get("train")
    if train is None:
        raise InputError("train.pairwise > 0 needs the train samples in memory", field="train.pairwise")
    if USER_COLUMN not in train.column_names:
        raise InputError(f"train.pairwise > 0 pairs the rows of one user, but the train samples have no "
                         f"{USER_COLUMN!r} column", path=source, field=USER_COLUMN)
    column = train.column(USER_COLUMN)
    if column.null_count:
        raise InputError(f"the {USER_COLUMN!r} column has {column.null_count} null values; train.pairwise > 0 "
                         "needs the user of every row", path=source, field=USER_COLUMN)
    codes = column.combine_chunks().dictionary_encode().indices.to_numpy(zero_copy_only=False)
    users = torch.from_numpy(codes.astype("int64"))
    return users if dist is None else users[shard_rows(len(users), dist)]


__all__ = ["MAX_PAIRS", "USER_COLUMN", "PairwiseTrain", "grouped_order", "pair_loss", "train_users"]
