"""Two-tower retrieval model (Yi et al., "Sampling-bias-corrected neural modeling", RecSys 2019).

A user tower over the user's point-in-time features (recent positives pooled through the movie id table,
genre counts, numeric stats) and an item tower over the movie's features (id, genres, year, stats) map into
one D-dimensional space; both outputs are L2-normalized, so the score is a cosine, divided by a fixed
temperature during training. The movie table is shared: a movie's id row is the same vector whether it is
the item or one of the user's recent positives. The towers reuse Deep Crossing's
:class:`~deepcrossing.model.layers.EmbeddingLayer` and :class:`~deepcrossing.model.layers.StackingLayer`
over a :class:`~deepcrossing.config.FeatureSpec`, and the fitted :class:`~deepcrossing.encoding.Encoder`.

The model returns vectors; the loss lives in :func:`sampled_softmax_loss` (in-batch sampled softmax with the
log-Q correction). Shapes: B = batch, D = output width.

Example:
    >>> from deepcrossing.encoding.encoder import Encoder
    >>> import pyarrow as pa
    >>> spec = two_tower_spec()
    >>> table = pa.table({"movieId": [1, 2], "movieGenres": [["Drama"], ["Comedy"]], "releaseYear": [1999, 2001],
    ...     "movieRatingCount": [3, 0], "movieAvgRating": [4.0, None], "moviePositiveRate": [0.5, None],
    ...     "movieSecondsSinceFirstRating": [86400, None],
    ...     "userRecentPositives": [[2], []], "userRatingCount": [1, 0],
    ...     "userGenreCounts": pa.array([[("Comedy", 1)], []], pa.map_(pa.string(), pa.int64())),
    ...     "userAvgRating": [4.0, None], "userPositiveRate": [1.0, None], "userAvgReleaseYear": [2001.0, None]})
    >>> enc = Encoder(spec).fit(table)
    >>> user, item = TwoTower(spec, TwoTowerConfig(dim=8, hidden=(16,)), enc.cardinalities)(enc.transform(table))
    >>> user.shape, item.shape
    (torch.Size([2, 8]), torch.Size([2, 8]))
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from deepcrossing.config import Feature, FeatureSpec
from deepcrossing.encoding.batch import Batch
from deepcrossing.encoding.numeric import is_dense
from deepcrossing.errors import InputError
from deepcrossing.model.layers import EmbeddingLayer, StackingLayer
from deepcrossing.strict import AS_TUPLE, StrictConfig, strict_config

__all__ = ["TwoTower", "TwoTowerConfig", "sampled_softmax_loss", "two_tower_spec"]


def two_tower_spec(movie_dim: int = 32, genre_dim: int = 16, history: int = 10) -> FeatureSpec:
    """The default features of the towers, over ``deepcrossing prepare``'s sample columns.

    Item side: ``movieId`` and the user's ``userRecentPositives`` share the table ``movie``; ``movieGenres``
    and ``userGenreCounts`` (weighted by the counts) share ``genre``. Numeric stats are standardized (NULL
    -> the train mean -> 0). ``userSecondsSincePrevRating`` is left out: offline it would carry the time of
    the evaluated event.

    Example:
        >>> [f.name for f in two_tower_spec().features if f.side == "user"][:2]
        ['userRecentPositives', 'userGenreCounts']
    """
    def num(name: str, side: str, log: bool = False) -> Feature:
        return Feature(name, "numeric", side, transform="log1p_standardize" if log else "standardize")

    return FeatureSpec((
        Feature("movieId", "categorical", "item", table="movie", dim=movie_dim),
        Feature("movieGenres", "multi_hot", "item", table="genre", dim=genre_dim),
        num("releaseYear", "item"), num("movieRatingCount", "item", log=True), num("movieAvgRating", "item"),
        num("moviePositiveRate", "item"), num("movieSecondsSinceFirstRating", "item", log=True),
        Feature("userRecentPositives", "multi_hot", "user", table="movie", max_len=history),
        Feature("userGenreCounts", "multi_hot", "user", table="genre", weights_from="values"),
        num("userRatingCount", "user", log=True), num("userAvgRating", "user"), num("userPositiveRate", "user"),
        num("userAvgReleaseYear", "user"),
    ))


@strict_config
class TwoTowerConfig(StrictConfig):
    """Shape of the towers.

    Args:
        dim: width D of the shared space.
        hidden: widths of each tower's ``Linear + ReLU`` layers before the last ``Linear`` to ``dim``.
        temperature: the cosine is divided by it in the training softmax (fixed; smaller = sharper).
        dropout: dropout after each hidden layer.
    """

    dim: Annotated[int, Field(ge=2, le=1024)] = 64
    hidden: Annotated[tuple[Annotated[int, Field(ge=1, le=8192)], ...], AS_TUPLE] = (256,)
    #: 0.1 with 2048-sample batches, chosen on the validation splits (Recall@100 of ml-latest-small / ml-100k:
    #: 0.2478 / 0.4513 vs 0.2388 / 0.3859 for 0.05 with 512; benchmarks/retrieval.py)
    temperature: Annotated[float, Field(gt=0.0, le=10.0)] = 0.1
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0


def _tower(in_dim: int, config: TwoTowerConfig) -> nn.Sequential:
    """``[Linear + ReLU (+ Dropout)] * len(hidden)`` then ``Linear`` to ``dim``: (B, in_dim) -> (B, dim)."""
    layers: list[nn.Module] = []
    for width in config.hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        if config.dropout > 0:
            layers.append(nn.Dropout(config.dropout))
        in_dim = width
    layers.append(nn.Linear(in_dim, config.dim))
    return nn.Sequential(*layers)


class TwoTower(nn.Module):
    """User tower and item tower over one feature spec, in one space.

    Args:
        spec: features with ``side`` ``user`` or ``item`` (embedded or standardized numerics; numeric
            embeddings are not supported here).
        config: the towers' shape.
        cardinalities: table name -> rows (``Encoder.cardinalities``).

    Raises:
        InputError: a side without features, a ``context`` feature or a numeric embedding.
    """

    def __init__(self, spec: FeatureSpec, config: TwoTowerConfig, cardinalities: dict[str, int]) -> None:
        super().__init__()
        for i, f in enumerate(spec.features):
            if f.side not in ("user", "item"):
                raise InputError("a two-tower feature is on the user or the item side", field=f"features[{i}].side")
            if f.kind == "numeric" and not is_dense(f):
                raise InputError("the towers take standardized numerics only", field=f"features[{i}].transform")
        self.spec, self.config = spec, config
        self.embedding = EmbeddingLayer(spec, cardinalities)
        dense = [f for f in spec.features if is_dense(f)]                   # Batch.dense column order
        self.stacks = nn.ModuleDict()
        self.towers = nn.ModuleDict()
        self._dense_index: dict[str, list[int]] = {}
        for side in ("user", "item"):
            names = [f.name for f in spec.features if f.side == side]
            if not names:
                raise InputError(f"the two-tower spec has no {side}-side feature", field="features")
            dims = {n: d for n, d in self.embedding.dims.items() if n in names}
            side_dense = [f.name for f in dense if f.side == side]
            self._dense_index[side] = [i for i, f in enumerate(dense) if f.side == side]
            stack = StackingLayer(dims, side_dense)
            self.stacks[side] = stack
            self.towers[side] = _tower(stack.out_dim, config)

    def _side(self, batch: Batch, side: str, embedded: dict[str, Tensor] | None = None) -> Tensor:
        if embedded is None:
            embedded = self.embedding(batch)                                # {feature: (B, D_f)}
        dense = batch.dense[:, self._dense_index[side]]                     # (B, n_dense of the side)
        stacked = self.stacks[side](embedded, dense)                        # (B, S_side)
        return F.normalize(self.towers[side](stacked), dim=1)               # (B, D) unit rows

    def user_tower(self, batch: Batch) -> Tensor:
        """(B, D) unit user vectors (only the user-side features of ``batch`` are read)."""
        return self._side(batch, "user")

    def item_tower(self, batch: Batch) -> Tensor:
        """(B, D) unit item vectors (only the item-side features of ``batch`` are read)."""
        return self._side(batch, "item")

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Batch -> ((B, D) user vectors, (B, D) item vectors), row i of each from sample i."""
        embedded = self.embedding(batch)                                    # one lookup per table
        return self._side(batch, "user", embedded), self._side(batch, "item", embedded)


def sampled_softmax_loss(user: Tensor, item: Tensor, item_ids: Tensor, log_q: Tensor,
                         temperature: float) -> Tensor:
    """In-batch sampled softmax with the log-Q correction, in-batch duplicates of the positive masked.

    Sample i's positive is item i; every other item j of the batch is a negative. The logit of (i, j) is
    ``u_i . v_j / temperature - log q_j``, with ``q_j`` the probability that item j is drawn as an in-batch
    candidate (its share of the train positives), so popular movies are not over-penalized for being
    sampled often. A column j != i holding the same movie as i (``item_ids[j] == item_ids[i]``) is masked:
    it is the positive again, not a negative.

    Args:
        user: (B, D) user vectors; item: (B, D) item vectors.
        item_ids: (B,) movie ids (or table rows) of the items, for the duplicate mask.
        log_q: (B,) log sampling probability of each item.
        temperature: divides the dot products.

    Returns:
        The mean cross-entropy over the batch (a scalar).

    Example:
        >>> u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> loss = sampled_softmax_loss(u, u, torch.tensor([5, 6]), torch.log(torch.tensor([0.5, 0.5])), 1.0)
        >>> round(float(loss), 4)    # -log(e / (e + 1))
        0.3133
    """
    logits = user @ item.T / temperature - log_q[None, :]                   # (B, B)
    dup = item_ids[None, :] == item_ids[:, None]                             # (B, B) same movie
    dup.fill_diagonal_(False)
    logits = logits.masked_fill(dup, float("-inf"))
    return F.cross_entropy(logits, torch.arange(user.shape[0], device=user.device))
