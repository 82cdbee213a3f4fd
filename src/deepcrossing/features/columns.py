"""The sample columns, defined once: type, meaning, side (user, movie or event) and cold-start value.

Everything that asks "which columns describe the user?" or "what does a user with no history look like?"
reads :data:`COLUMNS`: the manifest, :func:`user_side_columns` / :func:`movie_side_columns`, the online
records of :mod:`deepcrossing.features.online` and the service's cold start. The cold value of a column is
exactly what :func:`deepcrossing.features.sql.feature_sql` gives a sample with no earlier rating of its user
(user side) or of its movie, for a movie missing from the items file (movie side): 0 for counts, ``None``
for averages, rates, times and single ids or genres, ``[]`` for lists and ``{}`` for maps. A key column
(``userId``, ``movieId``) has no cold value: it is the id asked for.

Example:
    >>> user_side_columns()[:3]
    ('userId', 'userRatingCount', 'userAvgRating')
    >>> cold_features("movie", 7)["movieId"], cold_features("movie", 7)["movieGenres"]
    (7, [])
    >>> COLUMNS["userGenreCounts"].side, COLUMNS["userGenreCounts"].cold
    ('user', {})
"""

from __future__ import annotations

import copy
from typing import Any, Literal, NamedTuple

import pyarrow as pa

Side = Literal["user", "movie", "event", "pair"]
SIDES: tuple[Side, ...] = ("user", "movie", "event", "pair")
KEYS: dict[Side, str] = {"user": "userId", "movie": "movieId"}
"""The id column of each entity side; it comes first among that side's columns."""


class Column(NamedTuple):
    """One sample column.

    Attributes:
        type: DuckDB type of the column.
        side: ``"user"`` (describes the user as of the sample time), ``"movie"`` (describes the movie) or
            ``"event"`` (the rating itself: rating, time, label; no online value) or ``"pair"`` (user x movie:
            a function of both as of the sample time; in the samples only, not in the online records).
        cold: its value for a user / movie with no earlier ratings (``None`` for keys and event columns).
        meaning: one line for the manifest and the docs.
    """

    type: str
    side: Side
    cold: Any
    meaning: str


def _user(kind: str, cold: Any, meaning: str) -> Column:
    return Column(kind, "user", cold, meaning)


def _movie(kind: str, cold: Any, meaning: str) -> Column:
    return Column(kind, "movie", cold, meaning)


def _pair(kind: str, cold: Any, meaning: str) -> Column:
    return Column(kind, "pair", cold, meaning)


RECENT_RATING_TIMES = {1: "userLastRating", 5: "userRecent5AvgRating", 20: "userRecent20AvgRating"}
"""k -> the column of the mean rating at the user's last k rating times (distinct seconds) before t."""

# The output schema of the sample query, in order. The first block is docs/design.md section 2; the second
# block are the extra leakage-free signals.
COLUMNS: dict[str, Column] = {
    "userId": _user("BIGINT", None, "user id"),
    "movieId": _movie("BIGINT", None, "movie (item) id"),
    "rating": Column("DOUBLE", "event", None, "the rating; NULL for label-only logs"),
    "timestamp": Column("BIGINT", "event", None, "unix seconds of the rating"),
    "label": Column("TINYINT", "event", None,
                    "1 if rating >= label_threshold (or the given label column), else 0"),
    "releaseYear": _movie("INTEGER", None, "release year from the title; NULL when unknown"),
    "movieGenres": _movie("VARCHAR[]", [], "all genres of the movie"),
    "movieGenre1": _movie("VARCHAR", None, "first genre of the movie"),
    "movieGenre2": _movie("VARCHAR", None, "second genre of the movie"),
    "movieGenre3": _movie("VARCHAR", None, "third genre of the movie"),
    "movieRatingCount": _movie("BIGINT", 0, "ratings of the movie strictly before t"),
    "movieAvgRating": _movie("DOUBLE", None, "mean of those ratings; NULL when none"),
    "movieRatingStddev": _movie("DOUBLE", None, "sample stddev of those ratings; NULL under 2"),
    "userRatingCount": _user("BIGINT", 0, "the user's ratings strictly before t"),
    "userAvgRating": _user("DOUBLE", None, "mean of those ratings; NULL when none"),
    "userRatingStddev": _user("DOUBLE", None, "sample stddev of those ratings; NULL under 2"),
    "userAvgReleaseYear": _user("DOUBLE", None, "mean release year of those movies (known years only)"),
    "userReleaseYearStddev": _user("DOUBLE", None, "sample stddev of those release years; NULL under 2"),
    "userRecentPositives": _user("BIGINT[]", [], "last N movies the user rated positively before t, most "
                                                 "recent first (same second: smaller movieId first)"),
    "userRatedMovie1": _user("BIGINT", None, "userRecentPositives[1]"),
    "userRatedMovie2": _user("BIGINT", None, "userRecentPositives[2]"),
    "userRatedMovie3": _user("BIGINT", None, "userRecentPositives[3]"),
    "userRatedMovie4": _user("BIGINT", None, "userRecentPositives[4]"),
    "userRatedMovie5": _user("BIGINT", None, "userRecentPositives[5]"),
    "userGenre1": _user("VARCHAR", None, "top genre over the user's positives before t (count desc, then name)"),
    "userGenre2": _user("VARCHAR", None, "second top genre"),
    "userGenre3": _user("VARCHAR", None, "third top genre"),
    "userGenre4": _user("VARCHAR", None, "fourth top genre"),
    "userGenre5": _user("VARCHAR", None, "fifth top genre"),
    "userGenreCounts": _user("MAP(VARCHAR, BIGINT)", {}, "genre -> count over the user's positives before t"),
    "userPositiveRate": _user("DOUBLE", None,
                              "share of the user's ratings before t that are positive; NULL when none"),
    "userSecondsSincePrevRating": _user("BIGINT", None,
                                        "t minus the user's latest rating time before t; NULL when none"),
    "moviePositiveRate": _movie("DOUBLE", None,
                                "share of the movie's ratings before t that are positive; NULL when none"),
    "movieSecondsSinceFirstRating": _movie("BIGINT", None,
                                           "t minus the movie's first rating time before t; NULL when none"),
    "movieLast7dRatingCount": _movie("BIGINT", 0, "ratings of the movie in [t - 7 days, t)"),
    "movieLast30dRatingCount": _movie("BIGINT", 0, "ratings of the movie in [t - 30 days, t)"),
    "userGenreCosine": _pair("DOUBLE", None,
                             "cosine of userGenreCounts with the movie's 0/1 genre vector; NULL when either is "
                             "empty"),
    "userGenreAvgRating": _pair("DOUBLE", None,
                                "the user's mean rating before t over (earlier movie, genre) pairs whose genre "
                                "is one of this movie's; NULL when none"),
    # issue 11, itemcf slice: the shrunk movie average and the item-CF score (features/itemcf.py)
    "movieBayesAvgRating": _movie("DOUBLE", None,
                                  "(n * movieAvgRating + m * mu) / (n + m): the movie's mean shrunk toward mu, the "
                                  "mean of all ratings before t (m: FeatureConfig.movie_prior_weight); NULL when "
                                  "n = 0 or FeatureConfig.movie_bayes is off (opt-in)"),
    "userItemCFScore": _pair("DOUBLE", None,
                             "sum_j sim(movie, j) * r_uj / sum_j sim(movie, j) over the user's last "
                             "itemcf_history ratings before t, sim the windowed co-occurrence cosine before t; "
                             "NULL when no j co-occurs"),
    # issue 11, the user's recent ratings (their mood and drift; features/history.py's u_hist): a rating time is a
    # distinct second of the user's ratings, so ratings in one second are all in a window or all out of it
    **{name: _user("DOUBLE", None, f"mean of the user's ratings at their last {k} rating time{'s' * (k > 1)} "
                                   f"(distinct seconds) before t; NULL when none")
       for k, name in RECENT_RATING_TIMES.items()},
}

SAMPLE_COLUMNS: dict[str, tuple[str, str]] = {name: (c.type, c.meaning) for name, c in COLUMNS.items()}
"""name -> (DuckDB type, meaning) of every sample column, in order (the view of :data:`COLUMNS` the
manifest and the file writers use)."""
DOCUMENTED_COLUMNS = tuple(list(SAMPLE_COLUMNS)[:30])
EXTRA_COLUMNS = tuple(list(SAMPLE_COLUMNS)[30:])
ID_COLUMNS = ("userId", "movieId", "rating", "timestamp", "label")
FEATURE_COLUMNS = tuple(c for c in SAMPLE_COLUMNS if c not in ID_COLUMNS)
PAIR_SIDE = tuple(name for name, c in COLUMNS.items() if c.side == "pair")
"""User x movie columns: they depend on both records, so the online records hold neither."""
SERVED_PAIR = ("userGenreCosine", "userGenreAvgRating", "userItemCFScore")
"""The pair columns the service computes per candidate: the genre ones from the user record and the movie's
genres (:func:`deepcrossing.features.pair.pair_features`), ``userItemCFScore`` from the user's stored history
and the store version's co-occurrence lists (:func:`deepcrossing.features.itemcf.itemcf_scores`)."""
USER_SIDE = tuple(name for name, c in COLUMNS.items() if c.side == "user")

# ---- online-only user columns (issue 11, serving the pair columns) ----
# Not sample columns: the online user record carries them so that the service can compute the pair columns
# (:data:`PAIR_SIDE`) for any candidate at request time (:mod:`deepcrossing.features.pair`). Their values at
# ``t_end`` are what the sample SQL's ``userGenreAvgRating`` sums over (tests/features/test_pair.py).
ONLINE_USER_COLUMNS: dict[str, Column] = {
    "userGenreRatingSums": _user("MAP(VARCHAR, DOUBLE)", {},
                                 "genre -> sum of the user's ratings before t of movies of that genre"),
    "userGenreRatingCounts": _user("MAP(VARCHAR, BIGINT)", {},
                                   "genre -> number of those ratings (non-NULL ratings only)"),
}
ONLINE_USER_SIDE = (*USER_SIDE, *ONLINE_USER_COLUMNS)
"""The columns of an online user record: the sample's user-side columns, then :data:`ONLINE_USER_COLUMNS`
(then :data:`USER_ATTRIBUTE_COLUMNS` when the dataset has a users table)."""

# ---- user attributes (issue 11): static demographics from a users table (ml-100k, ml-1m) ----
# Only in samples (and online records) of a dataset with a users table (``Dataset.users``): a log without one
# gets none of these columns, so its samples are unchanged. They are NOT point-in-time: a users table is a
# snapshot as of the export date, the same for every sample of the user (it must not hold post-hoc facts
# such as churn). NULL for a user without a row in the users table, and for an unknown user online.
USER_ATTRIBUTE_COLUMNS: dict[str, Column] = {
    "userGender": _user("VARCHAR", None, "static user attribute (users table, as of the export date): gender; "
                                         "NULL when the user has no row"),
    "userAge": _user("INTEGER", None, "static user attribute: age in years (ml-100k) or ml-1m's age-group code "
                                      "(1: under 18, 18: 18-24, 25, 35, 45, 50, 56: 56+); NULL when unknown"),
    "userOccupation": _user("VARCHAR", None, "static user attribute: occupation (ml-100k: its name; ml-1m: its "
                                             "code 0..20 as text); NULL when unknown"),
    "userZipPrefix": _user("VARCHAR", None, "static user attribute: the first 3 characters of the zip code; NULL "
                                            "when unknown or empty"),
}
USER_ATTRIBUTES = tuple(USER_ATTRIBUTE_COLUMNS)
"""The user attribute columns, in order: after every other sample column (and online user column)."""
_RECORD_COLUMNS: dict[str, Column] = {**COLUMNS, **ONLINE_USER_COLUMNS}   # a record without user attributes
_ALL_COLUMNS: dict[str, Column] = {**_RECORD_COLUMNS, **USER_ATTRIBUTE_COLUMNS}
MOVIE_SIDE = tuple(name for name, c in COLUMNS.items() if c.side == "movie")


def arrow_type(duck_type: str) -> pa.DataType:
    """The Arrow type of a column type given in DuckDB spelling (what DuckDB's Arrow export gives).

    Raises:
        ValueError: for a type not listed here (add it once; the Spark dialect has the same table).

    Example:
        >>> arrow_type("MAP(VARCHAR, BIGINT)"), arrow_type("BIGINT[]")
        (MapType(map<string, int64>), ListType(list<item: int64>))
    """
    t = duck_type.strip().upper()
    if t.endswith("[]"):
        return pa.list_(arrow_type(t[:-2]))
    if t.startswith("MAP(") and t.endswith(")"):
        key, value = (part.strip() for part in t[4:-1].split(",", 1))
        return pa.map_(arrow_type(key), arrow_type(value))
    scalars = {"BIGINT": pa.int64(), "INTEGER": pa.int32(), "TINYINT": pa.int8(), "DOUBLE": pa.float64(),
               "VARCHAR": pa.string(), "BOOLEAN": pa.bool_()}
    if t not in scalars:
        raise ValueError(f"no Arrow type for column type {duck_type!r}")
    return scalars[t]


def user_side_columns() -> tuple[str, ...]:
    """Sample columns that describe the user (as of the sample time), ``userId`` first.

    Example:
        >>> user_side_columns()[:2]
        ('userId', 'userRatingCount')
    """
    return USER_SIDE


def movie_side_columns() -> tuple[str, ...]:
    """Sample columns that describe the movie (as of the sample time), ``movieId`` first.

    Example:
        >>> movie_side_columns()[:2]
        ('movieId', 'releaseYear')
    """
    return MOVIE_SIDE


def side_of(name: str) -> Side:
    """The side of a sample column.

    Raises:
        KeyError: naming the column when it is not a sample column.

    Example:
        >>> side_of("movieId"), side_of("userGenre1"), side_of("label")
        ('movie', 'user', 'event')
    """
    try:
        return _ALL_COLUMNS[name].side
    except KeyError:
        raise KeyError(f"{name!r} is not a sample column") from None


def sample_columns(user_attributes: bool = False) -> dict[str, tuple[str, str]]:
    """name -> (DuckDB type, meaning) of the sample columns, in order: :data:`SAMPLE_COLUMNS`, then
    :data:`USER_ATTRIBUTE_COLUMNS` when ``user_attributes`` (the dataset has a users table).

    Example:
        >>> list(sample_columns(True))[-4:], len(sample_columns()) == len(SAMPLE_COLUMNS)
        (['userGender', 'userAge', 'userOccupation', 'userZipPrefix'], True)
    """
    extra = {n: (c.type, c.meaning) for n, c in USER_ATTRIBUTE_COLUMNS.items()} if user_attributes else {}
    return {**SAMPLE_COLUMNS, **extra}


def cold_features(side: Side, key: int | None = None, *, user_attributes: bool = False) -> dict[str, Any]:
    """The features of a user or movie with no earlier ratings (a cold-start user, an unknown movie).

    Args:
        side: ``"user"`` or ``"movie"``.
        key: the id to put in the key column (``userId`` / ``movieId``); ``None`` leaves it empty.
        user_attributes: the user side also gets :data:`USER_ATTRIBUTE_COLUMNS` (all ``None``: an unknown
            user has no row in the users table).

    Returns:
        ``{column: cold value}`` for every column of the side, in column order (fresh lists and dicts on
        every call, so a caller may change them); the user side includes :data:`ONLINE_USER_COLUMNS`.

    Example:
        >>> cold = cold_features("user", 42)
        >>> cold["userId"], cold["userRatingCount"], cold["userAvgRating"], cold["userRecentPositives"]
        (42, 0, None, [])
    """
    if side not in KEYS:
        raise ValueError(f"side must be 'user' or 'movie', not {side!r}")
    columns = _ALL_COLUMNS if user_attributes else _RECORD_COLUMNS
    out = {name: copy.copy(c.cold) for name, c in columns.items() if c.side == side}
    out[KEYS[side]] = None if key is None else int(key)
    return out
