"""Response models of the SparrowRecSys-compatible routes: SparrowRecSys's Jackson shapes, for ``/docs`` and
for the contract tests (see :mod:`deepcrossing.serving.compat`).

Example:
    >>> Rating(movieId=1, userId=7, score=4.5, timestamp=964982703).model_dump()["score"]
    4.5
"""

from __future__ import annotations

from deepcrossing.serving.schemas import _Strict


class Rating(_Strict):
    """SparrowRecSys's Rating."""

    movieId: int
    userId: int
    score: float
    timestamp: int


class WrappedRating(_Strict):
    """How SparrowRecSys's ``RatingListSerializer`` writes each rating of a list: ``{"rating": {...}}``."""

    rating: Rating


class CompatMovie(_Strict):
    """SparrowRecSys's Movie: ``title`` without the year, ``releaseYear`` -1 when unknown, ``imdbId`` /
    ``tmdbId`` null when the data has no links, ``averageRating`` 0 when unrated, at most 10 ``topRatings``
    (highest score first, then most recent)."""

    movieId: int
    title: str
    releaseYear: int
    imdbId: str | None
    tmdbId: str | None
    genres: list[str]
    ratingNumber: int
    averageRating: float
    topRatings: list[WrappedRating]


class CompatUser(_Strict):
    """SparrowRecSys's User: ``ratings`` are the most recent (at most 1,000, most recent first); the four
    numbers are over all the user's ratings."""

    userId: int
    averageRating: float
    highestRating: float
    lowestRating: float
    ratingCount: int
    ratings: list[WrappedRating]
