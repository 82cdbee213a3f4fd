"""The two-tower score with a trending prior: the ``two_tower_trending`` recall channel (issue 9).

The two-tower model (:mod:`deepcrossing.training.two_tower`) learns which movies a user rates from the
train years, popularity of those years included; a later period rates what is trending then. This channel
moves the score's popularity from the train years to the trending list's, for every movie ``i``::

    score(u, i) = scale * cos(u, v_i) + trending * log(T_i + TREND_SMOOTHING) + share * log(q_i + SHARE_SMOOTHING)

``T_i``: the trending list's decayed score at the start (the movie table's ``movieTrendingScore``:
:func:`~deepcrossing.training.retrieval_data.load_retrieval_data` offline, ``publish`` online, both from
:func:`~deepcrossing.features.online.trending_sql` with ``with_score``), ``q_i``: the movie's share of the train
positives (the two-tower's own log-Q; kept in the recall folder). The three weights are fitted by maximum
likelihood of the validation period's positives (:func:`fit_trending_prior`: a multinomial logit over each
user's unrated catalogue, every user weighing the same), which uses every positive of the period rather than a
Recall@100 grid over a few dozen users. As vectors it is an ordinary ``dot`` channel (:class:`TrendingTwoTower`:
item ``[scale * v_i, bias_i]``, user ``[u, 1]``), so ``publish`` indexes it and the service searches it like any
other.

Example:
    >>> prior = TrendingPrior(scale=10.0, trending=1.0, share=-0.5)
    >>> round(float(prior.bias(np.array([1.5]), np.array([0.0]))[0]), 3)   # log 2 - 0.5 log 1e-5
    6.45
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from numpy.typing import NDArray

from deepcrossing.duck import connection, sql_str
from deepcrossing.errors import InputError
from deepcrossing.training.retrieval import IdArray
from deepcrossing.training.retrieval_data import TRENDING_SCORE, RetrievalData
from deepcrossing.training.vectors import ItemVectors, Metric

__all__ = ["NAME", "SHARE_SMOOTHING", "TREND_SMOOTHING", "TrendingPrior", "TrendingTwoTower", "fit_on",
           "fit_trending_prior", "positive_shares"]

#: The channel's name (in the recall folder, the merge, responses and ``?channels=``).
NAME = "two_tower_trending"

#: Added to the decayed trending score (a sum of ratings) before the log: half a star of weight.
TREND_SMOOTHING = 0.5
#: Added to a movie's share of the train positives before the log (a movie with none stays finite).
SHARE_SMOOTHING = 1e-5


@dataclass(frozen=True)
class TrendingPrior:
    """The fitted weights.

    Attributes:
        scale: multiplies the cosine of the user and item vectors.
        trending: weight of ``log(T + TREND_SMOOTHING)``.
        share: weight of ``log(q + SHARE_SMOOTHING)`` (negative: the train years' popularity taken out).
        nll: the mean negative log-likelihood per user at the fit (NaN when given, not fitted).
    """

    scale: float
    trending: float
    share: float
    nll: float = float("nan")

    def bias(self, trend: NDArray[np.float64], share: NDArray[np.float64]) -> NDArray[np.float64]:
        """(N,) the item-only part of the score from (N,) trending scores and (N,) positive shares."""
        return np.asarray(self.trending * np.log(np.maximum(trend, 0.0) + TREND_SMOOTHING)
                          + self.share * np.log(np.maximum(share, 0.0) + SHARE_SMOOTHING), dtype=np.float64)

    def items(self, unit: NDArray[np.float32], trend: NDArray[np.float64],
              share: NDArray[np.float64]) -> NDArray[np.float32]:
        """(N, D + 1) item vectors ``[scale * unit, bias]``: their dot with :meth:`users` is the score."""
        return np.hstack([self.scale * unit, self.bias(trend, share)[:, None]]).astype(np.float32)

    @staticmethod
    def users(unit: NDArray[np.float32]) -> NDArray[np.float32]:
        """(B, D + 1) user vectors ``[u, 1]``."""
        return np.hstack([unit, np.ones((unit.shape[0], 1), dtype=np.float32)]).astype(np.float32)


def positive_shares(train: str | Path) -> dict[int, float]:
    """movieId -> its share of the positives (``label = 1``) of a train samples file (what the two-tower's
    log-Q correction used)."""
    with connection() as con:
        got = con.sql(f"SELECT movieId, COUNT(*) AS n FROM read_parquet({sql_str(train)}) WHERE label = 1 "
                      "GROUP BY movieId").fetchnumpy()
    total = float(got["n"].sum()) if len(got["n"]) else 0.0
    return {int(m): float(n) / total for m, n in zip(got["movieId"], got["n"], strict=True)} if total else {}


def _aligned(ids: IdArray, values: Mapping[int, float]) -> NDArray[np.float64]:
    return np.array([values.get(int(m), 0.0) for m in ids], dtype=np.float64)


def fit_trending_prior(cos: NDArray[np.float32], relevant: Sequence[NDArray[np.int64]],
                       rated: Sequence[NDArray[np.int64]], trend: NDArray[np.float64], share: NDArray[np.float64],
                       *, max_iter: int = 200) -> TrendingPrior:
    """Maximum-likelihood weights of the score: each user's relevant movies under the softmax of the score
    over the catalogue less the movies they rated (each user's mean log-likelihood weighs the same).

    Args:
        cos: (U, N) cosine of each user's vector with each catalogue movie's.
        relevant: per user, the catalogue positions (0..N-1) of their relevant movies (users without one
            are left out).
        rated: per user, the catalogue positions of the movies they had rated (left out of the softmax).
        trend, share: (N,) each movie's trending score and train-positive share.

    Raises:
        InputError: no user with a relevant movie.

    Example:
        >>> cos = np.zeros((2, 3), dtype=np.float32)                      # the vectors say nothing
        >>> trend = np.array([9.0, 1.0, 0.0])                             # users pick the trending movie
        >>> fit = fit_trending_prior(cos, [np.array([0]), np.array([0])], [np.array([], int)] * 2, trend,
        ...                          np.full(3, 1 / 3))
        >>> fit.trending > 1.0
        True
    """
    keep = [i for i, r in enumerate(relevant) if len(r)]
    if not keep:
        raise InputError("the trending prior needs at least one user with a relevant movie")
    c = torch.as_tensor(np.asarray(cos, dtype=np.float64)[keep])                       # (U, N)
    log_t = torch.as_tensor(np.log(np.maximum(trend, 0.0) + TREND_SMOOTHING))            # (N,)
    log_q = torch.as_tensor(np.log(np.maximum(share, 0.0) + SHARE_SMOOTHING))            # (N,)
    masked = torch.zeros(c.shape, dtype=torch.bool)
    pos = torch.zeros(c.shape, dtype=torch.float64)                                    # (U, N) 1 / |R_u|
    for row, i in enumerate(keep):
        masked[row, torch.as_tensor(np.asarray(rated[i], dtype=np.int64))] = True
        targets = torch.as_tensor(np.asarray(relevant[i], dtype=np.int64))
        masked[row, targets] = False                  # a relevant movie is never one the user had rated
        pos[row, targets] = 1.0 / targets.numel()
    weights = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights], max_iter=max_iter, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        score = weights[0] * c + weights[1] * log_t[None, :] + weights[2] * log_q[None, :]
        score = score.masked_fill(masked, float("-inf"))
        return -(pos * torch.log_softmax(score, dim=1).masked_fill(masked, 0.0)).sum(dim=1).mean()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = loss()
        torch.autograd.backward(value)
        return value

    optimizer.step(closure)      # type: ignore[no-untyped-call]
    with torch.no_grad():
        nll = float(loss())
    scale, a, b = (float(x) for x in weights.detach())
    return TrendingPrior(scale, a, b, nll)


def _trend(movies: pa.Table) -> NDArray[np.float64]:
    """(N,) the rows' :data:`TRENDING_SCORE` (NULL as 0)."""
    return np.nan_to_num(np.asarray(movies.column(TRENDING_SCORE).to_numpy(zero_copy_only=False), dtype=np.float64))


def _unit(x: NDArray[np.float32]) -> NDArray[np.float32]:
    out: NDArray[np.float32] = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    return out


class TrendingTwoTower:
    """The channel as an :class:`~deepcrossing.training.vectors.ItemVectors` (``dot``): a vector channel (the
    two-tower model's) with the prior's weights and each movie's train-positive share.

    Args:
        base: the two-tower channel (its unit vectors); prior: the weights; shares: movieId -> q (absent: 0).
    """

    name: str = NAME
    metric: Metric = "dot"

    def __init__(self, base: ItemVectors, prior: TrendingPrior, shares: Mapping[int, float]) -> None:
        self.base, self.prior, self.shares = base, prior, dict(shares)

    def item_vectors(self, movies: pa.Table) -> NDArray[np.float32]:
        """(N, D + 1) ``[scale * v, bias]`` of the movie rows, which must hold ``movieTrendingScore``.

        Raises:
            InputError: the table has no ``movieTrendingScore`` (publish without the trending list).
        """
        if TRENDING_SCORE not in movies.column_names:
            raise InputError(f"the {NAME} channel needs each movie's {TRENDING_SCORE} (publish it with the recall "
                             "folder's trending list: publish --recall)", field=TRENDING_SCORE)
        trend = _trend(movies)
        ids = np.asarray(movies.column("movieId").to_numpy(), dtype=np.int64)
        return self.prior.items(_unit(np.asarray(self.base.item_vectors(movies), dtype=np.float32)), trend,
                                _aligned(ids, self.shares))

    @property
    def user_columns(self) -> tuple[str, ...] | None:
        """What the base's user side reads (``None``: not declared)."""
        columns: tuple[str, ...] | None = getattr(self.base, "user_columns", None)
        return columns

    def user_vectors(self, users: pa.Table) -> NDArray[np.float32]:
        """(B, D + 1) ``[u, 1]`` (``u`` the base's unit user vector)."""
        return TrendingPrior.users(_unit(np.asarray(self.base.user_vectors(users), dtype=np.float32)))


def fit_on(valid: RetrievalData, base: ItemVectors, shares: Mapping[int, float]) -> TrendingTwoTower:
    """The channel with its weights fitted on ``valid`` (the VALIDATION split, whose ``movie_rows`` hold the
    trending scores of the chosen list): each user's relevant movies among every movie row."""
    ids = np.asarray(valid.movie_rows.column("movieId").to_numpy(), dtype=np.int64)
    unit = _unit(np.asarray(base.item_vectors(valid.movie_rows), dtype=np.float32))
    users = _unit(np.asarray(base.user_vectors(valid.user_rows), dtype=np.float32))
    position = {int(m): j for j, m in enumerate(ids)}

    def where(movies: Any) -> NDArray[np.int64]:
        return np.array([position[int(m)] for m in movies if int(m) in position], dtype=np.int64)

    prior = fit_trending_prior(users @ unit.T, [where(r) for r in valid.relevant],
                               [where(u.rated) for u in valid.users], _trend(valid.movie_rows), _aligned(ids, shares))
    return TrendingTwoTower(base, prior, shares)
