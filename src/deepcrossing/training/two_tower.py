"""Training the two-tower model on the positives of train, early stopping on the validation split's Recall@K.

Each step takes a minibatch of positive samples (label 1): sample i's user features (as of its time) and
its movie's features; the other movies of the batch are the negatives (:func:`sampled_softmax_loss`, with
the log-Q correction: q of a movie = its share of the train positives). After each epoch the model is
measured as served: ``item_vectors`` of every movie known at the validation start and ``user_vectors`` of
each validation user's row (:func:`~deepcrossing.training.retrieval_data.recall_channel`), Recall@K over
their validation positives; the best epoch's weights are kept.

Example:
    >>> valid = load_retrieval_data("samples", split="valid")                     # doctest: +SKIP
    >>> result = train_two_tower(pq.read_table("samples/train.parquet"), valid)   # doctest: +SKIP
    >>> result.vectors.user_vectors(valid.user_rows).shape                        # doctest: +SKIP
    (62, 64)
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from numpy.typing import NDArray
from pydantic import Field

from deepcrossing.config import FeatureSpec
from deepcrossing.encoding.batch import Batch
from deepcrossing.encoding.encoder import Encoder
from deepcrossing.errors import InputError
from deepcrossing.features.columns import cold_features
from deepcrossing.model.two_tower import TwoTower, TwoTowerConfig, sampled_softmax_loss, two_tower_spec
from deepcrossing.strict import StrictConfig, strict_config
from deepcrossing.training.retrieval import recall_at_ks
from deepcrossing.training.retrieval_data import RetrievalData, recall_channel
from deepcrossing.training.vectors import Metric

__all__ = ["TwoTowerResult", "TwoTowerTrainConfig", "TwoTowerVectors", "train_two_tower"]


@strict_config
class TwoTowerTrainConfig(StrictConfig):
    """How the towers are trained.

    Args:
        epochs: at most so many passes over the train positives.
        batch_size: positives per step (the in-batch negatives: batch_size - 1 per sample).
        lr: Adam's learning rate. weight_decay: Adam's L2 term.
        patience: stop after this many epochs without a better validation Recall@``k``.
        k: the cut-off of the early-stopping Recall@K.
        cold_rate: share of the training samples whose user side is replaced by a cold user's (empty
            history, zero counts, NULL stats), so the user tower learns what to recall for a new user (few
            train samples are a user's first rating, while most test users are new).
        seed: initialization, shuffling and the cold draws.
    """

    epochs: Annotated[int, Field(ge=1, le=1000)] = 20
    batch_size: Annotated[int, Field(ge=2)] = 2048   # more in-batch negatives: see TwoTowerConfig.temperature
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = 2e-3
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    patience: Annotated[int, Field(ge=1)] = 3
    k: Annotated[int, Field(ge=1)] = 100
    cold_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    seed: int = 0


class TwoTowerVectors:
    """A trained two-tower model as an :class:`~deepcrossing.training.vectors.ItemVectors` (unit vectors,
    ``cosine``): the fitted encoder encodes only one side's columns, then that side's tower runs.

    Args:
        model: the towers (set to eval mode here). encoder: fitted on train.
    """

    name: str = "two_tower"
    metric: Metric = "cosine"

    def __init__(self, model: TwoTower, encoder: Encoder) -> None:
        self.model = model.eval()
        self.encoder = encoder
        self.user_columns = tuple(f.name for f in model.spec.features if f.side == "user")
        self.item_columns = tuple(f.name for f in model.spec.features if f.side == "item")

    @torch.inference_mode()
    def item_vectors(self, movies: pa.Table, batch_size: int = 65536) -> NDArray[np.float32]:
        """(N, D) unit vectors of the movie rows (``movieId`` + the item-side columns)."""
        parts = [self.model.item_tower(self.encoder.transform(movies.slice(i, batch_size), only=self.item_columns))
                 for i in range(0, movies.num_rows, batch_size)]
        out = torch.cat(parts) if parts else torch.zeros(0, self.model.config.dim)
        return out.numpy().astype(np.float32, copy=False)

    @torch.inference_mode()
    def user_vectors(self, users: pa.Table) -> NDArray[np.float32]:
        """(B, D) unit vectors of the user rows (the user-side columns; a cold user's empty lists and NULL
        stats give a vector too)."""
        return self.model.user_tower(self.encoder.transform(users, only=self.user_columns)).numpy()


@dataclass
class TwoTowerResult:
    """What :func:`train_two_tower` returns.

    Attributes:
        vectors: the best epoch's model, ready to serve.
        history: per epoch ``{epoch, loss, valid_recall, seconds}``.
        best_epoch: the epoch kept (1-based).
    """

    vectors: TwoTowerVectors
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0


def _log_q(movie_rows: torch.Tensor) -> torch.Tensor:
    """(N,) log of each sample's movie's share of the N positives: log of its in-batch sampling probability."""
    _, inverse, counts = torch.unique(movie_rows, return_inverse=True, return_counts=True)
    return torch.log(counts.to(torch.float32) / movie_rows.numel())[inverse]


def _cold_user_batch(train: pa.Table, encoder: Encoder, columns: tuple[str, ...]) -> Batch:
    """The one-row encoding of a cold user (``features.columns``'s cold values) on the user side."""
    present = [c for c in columns if c in train.column_names]
    cold = cold_features("user", 0)
    return encoder.transform(pa.Table.from_pylist([{c: cold[c] for c in present}], schema=train.select(present).schema),
                             only=columns)


def _with_cold_users(mb: Batch, cold: Batch, mask: torch.Tensor, columns: tuple[str, ...],
                     dense_index: list[int]) -> Batch:
    """``mb`` with the user-side tensors of the rows in ``mask`` ((b,) bool) replaced by ``cold``'s row."""
    m = mask[:, None]
    bags = {k: torch.where(m, cold.bags[k], v) if k in columns else v for k, v in mb.bags.items()}
    weights = {k: torch.where(m, cold.bag_weights[k], v) if k in columns else v for k, v in mb.bag_weights.items()}
    dense = mb.dense.clone()
    dense[:, dense_index] = torch.where(m, cold.dense[:, dense_index], mb.dense[:, dense_index])
    return Batch(dense, mb.sparse, bags, weights, mb.labels, mb.numeric)


def train_two_tower(train: pa.Table, valid: RetrievalData, spec: FeatureSpec | None = None,
                    config: TwoTowerConfig | None = None, train_config: TwoTowerTrainConfig | None = None,
                    on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TwoTowerResult:
    """Fit the encoder on ``train``, train the towers on its positives, keep the epoch with the best
    validation Recall@K (``valid``: :func:`~deepcrossing.training.retrieval_data.load_retrieval_data` with
    ``split="valid"``).

    Args:
        train: the train samples (all rows; the positives are the training pairs).
        valid: the validation split's users and relevant movies.
        spec: the towers' features (default :func:`~deepcrossing.model.two_tower.two_tower_spec`).
        config: the towers' shape. train_config: the loop.
        on_epoch: called with each epoch's row of the history.

    Raises:
        InputError: no positive in ``train``.
    """
    spec = spec or two_tower_spec()
    config = config or TwoTowerConfig()
    tc = train_config or TwoTowerTrainConfig()
    positives = train.filter(pc.equal(train.column("label"), 1))
    if positives.num_rows < 2:
        raise InputError("two-tower training needs at least 2 positive train samples", field="label")
    encoder = Encoder(spec).fit(train)
    batch = encoder.transform(positives)
    movie_rows = batch.sparse["movieId"]                                          # (N,) table rows
    log_q = _log_q(movie_rows)
    torch.manual_seed(tc.seed)
    model = TwoTower(spec, config, encoder.cardinalities)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    shuffle = torch.Generator().manual_seed(tc.seed)
    users = TwoTowerVectors(model, encoder).user_columns
    cold = _cold_user_batch(train, encoder, users)
    user_dense = [i for i, name in enumerate(encoder.dense_names) if spec[name].side == "user"]
    result = TwoTowerResult(TwoTowerVectors(model, encoder))
    best_state, best, waited = copy.deepcopy(model.state_dict()), -1.0, 0
    for epoch in range(1, tc.epochs + 1):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(batch), generator=shuffle)
        total, steps = 0.0, 0
        for start in range(0, len(order) - 1, tc.batch_size):
            index = order[start:start + tc.batch_size]
            if index.numel() < 2:
                break
            mb = batch.take(index)
            if tc.cold_rate > 0:
                mask = torch.rand(index.numel(), generator=shuffle) < tc.cold_rate
                mb = _with_cold_users(mb, cold, mask, users, user_dense)
            user, item = model(mb)
            loss = sampled_softmax_loss(user, item, movie_rows[index], log_q[index], config.temperature)
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            optimizer.step()
            total, steps = total + float(loss.detach()), steps + 1
        score = validation_recall(TwoTowerVectors(model, encoder), valid, tc.k)
        row = {"epoch": epoch, "loss": round(total / max(steps, 1), 5), "valid_recall": round(score, 5),
               "seconds": round(time.perf_counter() - started, 2)}
        result.history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if score > best:
            best, best_state, waited, result.best_epoch = score, copy.deepcopy(model.state_dict()), 0, epoch
        else:
            waited += 1
            if waited >= tc.patience:
                break
    model.load_state_dict(best_state)
    result.vectors = TwoTowerVectors(model, encoder)
    return result


def validation_recall(vectors: Any, valid: RetrievalData, k: int) -> float:
    """Mean Recall@``k`` of a recall model (an ``ItemVectors``) over ``valid``'s users (NaN counts as 0)."""
    channel = recall_channel(valid, vectors)
    score = recall_at_ks([channel(u, k) for u in valid.users], valid.relevant, (k,)).recall[k]
    return 0.0 if np.isnan(score) else float(score)
