"""FeatureConfig: what the Feature layer computes and how it splits, frozen and validated on construction."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from deepcrossing.errors import InputError
from deepcrossing.strict import StrictConfig, one_of, strict_config

SPLITS = ("time", "random")


def _three(value: Any) -> Any:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ValueError("must be three numbers (train, valid, test)")
    return tuple(value)


@strict_config
class FeatureConfig(StrictConfig):
    """Settings of :func:`deepcrossing.features.build_samples`.

    Args:
        label_threshold: a rating ``>=`` this is a positive (label 1); ignored for rows whose source gave an
            explicit 0/1 label.
        recent_n: length N of ``userRecentPositives`` (the last N positively rated movies), >= 5 so that
            ``userRatedMovie1..5`` can be filled.
        split: ``"time"`` (global timestamp quantiles; rows tied with a boundary go to the later split) or
            ``"random"`` (seeded hash per rating).
        fractions: (train, valid, test) shares, each >= 0, train > 0, summing to 1.
        seed: seed of the random split (unused by the time split).
        threads: DuckDB worker threads (does not change results).
        memory_limit: DuckDB memory limit, e.g. ``"4GB"``; beyond it DuckDB spills to a temp folder.
        itemcf: compute ``userItemCFScore`` (off: the column is NULL; it more than doubles the query time on
            ml-latest-small and 2M synthetic ratings, so it is opt-in).
        itemcf_window: ``userItemCFScore``: each positive co-occurs with the user's previous so many positives.
        itemcf_history: ``userItemCFScore``: the user's last so many ratings are scored against the movie
            (the service's stored history must hold at least as many: ``DEFAULT_HISTORY_N``).
        movie_bayes: compute ``movieBayesAvgRating`` (off: NULL; it gave no valid AUC gain and its global
            running mean, an unpartitioned window, cost ~40 s of 250 on 20M ratings, so it is opt-in).
        movie_prior_weight: m of ``movieBayesAvgRating`` (prior weight, in ratings, of the global mean; 3: the
            best valid AUC of the feature alone among 0, 1, 3, 10, 30, 100 on ml-latest-small and ml-100k).

    Example:
        >>> FeatureConfig(split="random", fractions=(0.7, 0.15, 0.15), seed=7).recent_n
        10
    """

    label_threshold: float = 3.5
    recent_n: Annotated[int, Field(ge=5, le=1000)] = 10
    split: Annotated[str, one_of(*SPLITS)] = "time"
    fractions: Annotated[tuple[float, float, float], BeforeValidator(_three)] = (0.8, 0.1, 0.1)
    seed: int = 0
    threads: Annotated[int, Field(ge=1)] = 2
    memory_limit: str = "4GB"
    itemcf: bool = False
    itemcf_window: Annotated[int, Field(ge=1, le=100)] = 10
    itemcf_history: Annotated[int, Field(ge=1, le=1000)] = 20
    movie_bayes: bool = False
    movie_prior_weight: Annotated[float, Field(ge=0)] = 3.0

    def sql_settings(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~deepcrossing.features.sql.feature_sql` this config sets besides the
        threshold and N (the item-CF and prior settings).

        Example:
            >>> FeatureConfig().sql_settings()["itemcf_history"]
            20
        """
        return {"itemcf": self.itemcf, "itemcf_window": self.itemcf_window, "itemcf_history": self.itemcf_history,
                "movie_bayes": self.movie_bayes, "movie_prior_weight": self.movie_prior_weight}

    def __post_init__(self) -> None:
        train = self.fractions[0]
        if any(f < 0 for f in self.fractions) or train <= 0 or abs(sum(self.fractions) - 1.0) > 1e-9:
            raise InputError(f"must be >= 0 with train > 0 and sum to 1, not {self.fractions!r}", field="fractions")
        if not self.memory_limit.strip():
            raise InputError(f"must be a size such as '4GB', not {self.memory_limit!r}", field="memory_limit")
