"""Choosing the ``trending`` list (its window and half-life) by backtesting on the periods before the split.

The trending list is :func:`~deepcrossing.features.online.trending_sql` over the ``days`` before a start,
each rating decayed with a half-life; it is the only list a cold user (no positive before the start) gets,
and 47 of ml-latest-small's 72 test users are cold. Judged on the validation period alone (62 users there)
the choice is noisy: it picked a 180-day window and a 60-day half-life, whose test Recall@100 was 0.309.
:func:`choose_trending` instead pools the users of several periods of the validation period's length
(rolling origin): the validation period itself and the ``periods - 1`` periods before it, each judged only by
the ratings before its own start (:func:`backtest_periods`). Every period ends before the test start, so the
test split is never read.

Example:
    >>> choice = choose_trending(load_retrieval_data("samples", split="valid"), periods=4,   # doctest: +SKIP
    ...                          length=split_start("samples", "test") - split_start("samples", "valid"))
    >>> choice.days, choice.half_life_days                                                    # doctest: +SKIP
    (1460, 365.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from deepcrossing.duck import connection, sql_str
from deepcrossing.errors import InputError
from deepcrossing.training.retrieval import IdArray, UserState, recall_at_ks, trending_channel
from deepcrossing.training.retrieval_data import TRENDING_DAYS, RetrievalData, trending_lists, with_trending_list

__all__ = ["TRENDING_BACKTESTS", "TRENDING_HALF_LIVES", "TRENDING_WINDOWS", "Period", "TrendingChoice",
           "backtest_periods", "choose_trending"]

#: The windows (days) and half-lives (days; ``None``: the plain count) ``train-recall`` tries.
TRENDING_WINDOWS: tuple[int, ...] = (180, 365, 730, 1460, 3650)
TRENDING_HALF_LIVES: tuple[float | None, ...] = (None, 15.0, 30.0, 60.0, 120.0, 240.0, 365.0, 730.0)
#: The periods ``train-recall`` pools: the validation period and the three of its length before it.
TRENDING_BACKTESTS = 4


@dataclass(frozen=True)
class Period:
    """One backtest period ``[start, end)``: its users as of ``start`` (``rated`` only) and their relevant sets
    (the movies they rated positively in the period and had not rated before it; users without one left out)."""

    start: int
    end: int
    users: list[UserState]
    relevant: list[IdArray]


@dataclass(frozen=True)
class TrendingChoice:
    """The chosen window and half-life.

    Attributes:
        days, half_life_days: the window and half-life of the best pooled Recall@k.
        scores: ``"<days>d/<half-life>"`` -> pooled Recall@k, for every pair tried (``None``: no user).
        periods: ``[start, end, users]`` of each period pooled (the first: ``data``'s own).
        data: ``data`` with that trending list (``prior.trending``) and its scores (``movie_rows``'
            ``movieTrendingScore``).
    """

    days: int
    half_life_days: float | None
    scores: dict[str, float | None]
    periods: list[list[int]]
    data: RetrievalData


def backtest_periods(data: RetrievalData, periods: int, length: int | None = None) -> list[Period]:
    """``data``'s own period, then up to ``periods - 1`` periods of ``length`` seconds before it, back to back
    (the j-th starts ``j * length`` before ``data.test_start``), built from the ratings of ``data``'s samples
    folder before ``data.test_start`` only; a period with no user with a relevant movie is left out.

    Raises:
        InputError: ``periods < 1``, or ``periods > 1`` without a ``length`` >= 1.
    """
    if periods < 1 or (periods > 1 and (length is None or length < 1)):
        raise InputError(f"backtesting needs periods >= 1 and a length >= 1 s, not {periods} and {length}",
                         field="periods")
    own = [(u, r) for u, r in zip(data.users, data.relevant, strict=True) if r.size]
    out = [Period(data.test_start, data.test_start + int(length or 0), [u for u, _ in own], [r for _, r in own])]
    files = ", ".join(sql_str(data.samples / f"{name}.parquet") for name in ("train", "valid"))
    with connection() as con:
        con.execute(f"CREATE TEMP VIEW prior AS SELECT userId, movieId, label, timestamp FROM read_parquet([{files}], "
                    f"union_by_name = true) WHERE timestamp < {int(data.test_start)}")
        for j in range(1, periods):
            start, end = data.test_start - j * int(length or 0), data.test_start - (j - 1) * int(length or 0)
            rows = con.execute(f"""
                WITH rel AS (SELECT userId, list(DISTINCT movieId ORDER BY movieId) AS relevant FROM prior x
                             WHERE label = 1 AND timestamp >= {start} AND timestamp < {end} AND NOT EXISTS (
                                 SELECT 1 FROM prior p WHERE p.userId = x.userId AND p.movieId = x.movieId
                                 AND p.timestamp < {start}) GROUP BY userId),
                rated AS (SELECT userId, list(DISTINCT movieId ORDER BY movieId) AS rated FROM prior
                          WHERE timestamp < {start} GROUP BY userId)
                SELECT rel.userId, rel.relevant, rated.rated FROM rel LEFT JOIN rated USING (userId)
                ORDER BY rel.userId""").fetchall()
            if rows:
                none = np.zeros(0, dtype=np.int64)
                out.append(Period(start, end, [UserState(int(u), np.asarray(r or [], dtype=np.int64), none, ())
                                               for u, _, r in rows],
                                  [np.asarray(rel, dtype=np.int64) for _, rel, _ in rows]))
    return out


def choose_trending(data: RetrievalData, k: int = 100, grid: Sequence[float | None] = TRENDING_HALF_LIVES, *,
                    windows: Sequence[int] = (TRENDING_DAYS,), periods: int = 1,
                    length: int | None = None) -> TrendingChoice:
    """The (window, half-life) of ``windows`` x ``grid`` whose trending channel alone has the best Recall@``k``
    over the users of :func:`backtest_periods` pooled (each period's list as of its own start); ties go to the
    earlier window, then the earlier half-life. Use the VALIDATION split as ``data``: every period then ends
    before the test start. ``periods=1``: ``data``'s users alone.

    Example:
        >>> choice = choose_trending(valid, windows=(180, 730), periods=4, length=3600 * 24 * 90)  # doctest: +SKIP
    """
    pairs = [(int(days), half) for days in windows for half in grid]
    hits: dict[tuple[int, float | None], list[IdArray]] = {pair: [] for pair in pairs}
    relevant: list[IdArray] = []
    used = backtest_periods(data, periods, length)
    by_period = [trending_lists(data.samples, period.start, pairs) for period in used]   # [0]: data's own
    for period, lists in zip(used, by_period, strict=True):
        relevant += period.relevant
        for pair, (order, _) in lists.items():
            channel = trending_channel(replace(data.prior, trending=order))
            hits[pair] += [channel(user, k) for user in period.users]
    scores = {pair: recall_at_ks(hits[pair], relevant, (k,)).recall[k] for pair in pairs}
    best = max(pairs, key=lambda pair: (scores[pair] if scores[pair] == scores[pair] else -1.0, -pairs.index(pair)))
    return TrendingChoice(best[0], best[1], {f"{d}d/{h}": s if s == s else None for (d, h), s in scores.items()},
                          [[p.start, p.end, len(p.users)] for p in used],
                          with_trending_list(data, *by_period[0][best]))
