"""The online records: what the service needs about every user and movie as of now, from the sample SQL.

:func:`online_records` is the one place that computes them (serving only writes them to a store and reads
them back):

* the latest user and movie features: :func:`latest_features`, i.e. :func:`deepcrossing.features.sql.
  feature_sql` (the query that made the training samples) with one probe row per user and per movie at
  ``t_end = max(timestamp) + 1``, so a feature means online exactly what it meant in training;
* per user: the recent history (last ``history_n`` ratings, most recent first, then smaller movie id), the
  sorted ids of every movie the user rated (excluded from that user's recommendations), and for display
  (SparrowRecSys's User) the last ``user_ratings_n`` ratings and the count, mean, highest and lowest rating
  over all of them;
* per movie, for display: title, year, genres, IMDb and TMDB ids (MovieLens's links.csv), the number and
  mean of all its ratings and its ten highest ratings (SparrowRecSys's Movie.topRatings: highest score
  first, then most recent, then smaller user id);
* candidates: the ``max_candidates`` most popular movies as of ``t_end``, by number of ratings, then average
  rating, then id (SparrowRecSys ranks its 800 candidates the same way, by popularity);
* the cold-start records of an unknown user and an unknown movie (:func:`deepcrossing.features.columns.
  cold_features`, defined with the columns).

Everything is set-based DuckDB over the normalized files, one connection per call.

Example:
    >>> records = online_records(dataset, FeatureConfig(), history_n=20, max_candidates=800)  # doctest: +SKIP
    >>> records.users.num_rows == records.histories.num_rows                                  # doctest: +SKIP
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from deepcrossing.data.schema import Dataset
from deepcrossing.duck import ident, sql_str
from deepcrossing.errors import InputError
from deepcrossing.features.columns import MOVIE_SIDE, ONLINE_USER_SIDE, USER_ATTRIBUTES, USER_SIDE, cold_features
from deepcrossing.features.config import FeatureConfig
from deepcrossing.features.inputs import (
    connect,
    events_genre_bits,
    fetch_one,
    genre_vocabulary,
    register_inputs,
)
from deepcrossing.features.itemcf import COOCCURRENCE_SCHEMA, cooccurrence_sql
from deepcrossing.features.nested import assemble
from deepcrossing.features.sql import feature_sql

#: The popularity order of movies: ``items i`` left-joined to per-movie stats ``s(n, avg)``: most rated, then
#: best average (unrated last), then smaller id. The candidates follow it, and so does retrieval's
#: popularity channel (:mod:`deepcrossing.training.retrieval_data`).
POPULARITY_ORDER = "COALESCE(s.n, 0) DESC, s.avg DESC NULLS LAST, i.item_id"



def trending_sql(ratings: str, items: str, *, since: int, until: int, item: str = "item_id",
                 half_life_days: float | None = None, with_score: bool = False) -> str:
    """The one definition of the ``trending`` list: every movie of ``items`` (column ``item_id``) by its score
    over the ratings in ``[since, until)``, then :data:`POPULARITY_ORDER`'s tie rules (average, unrated last,
    id). The score is the rating count, or with ``half_life_days`` a time-decayed sum of the ratings: each
    rating weighs ``rating * 2 ** (-(until - timestamp) / half_life)`` (``label`` for a rating-less log), so
    a recent 5 counts most. The service's list (``since`` = N days before the store's last rating) and
    retrieval's trending channel (N days before the test start) both run it; ``train-recall`` chooses the
    half-life on the validation split.

    Args:
        ratings: a relation with ``timestamp``, ``rating`` (and ``label`` for ``half_life_days``) and the movie
            column ``item``; items: a relation with ``item_id``; since, until: the window in seconds;
        half_life_days: ``None`` (count) or > 0.
        with_score: a second column ``score`` (0 for a movie without a rating in the window): what the
            trending prior of :mod:`deepcrossing.training.retrieval_prior` reads.

    Example:
        >>> import duckdb
        >>> con = duckdb.connect()
        >>> _ = con.execute("CREATE TABLE r AS SELECT * FROM (VALUES (1, 4.0, 1, 10), (2, 3.0, 0, 50), "
        ...                 "(2, 5.0, 1, 60), (1, 5.0, 1, 61), (3, 1.0, 0, 60)) t(movieId, rating, label, timestamp)")
        >>> _ = con.execute("CREATE TABLE i AS SELECT * FROM (VALUES (1), (2), (3), (4)) t(item_id)")
        >>> con.sql(trending_sql("r", "i", since=20, until=61, item="movieId")).fetchall()
        [(2,), (3,), (1,), (4,)]
        >>> con.sql(trending_sql("r", "i", since=0, until=61, item="movieId", half_life_days=1)).fetchall()
        [(2,), (1,), (3,), (4,)]
        >>> con.sql(trending_sql("r", "i", since=20, until=61, item="movieId", with_score=True)).fetchall()
        [(2, 2.0), (3, 1.0), (1, 0.0), (4, 0.0)]
    """
    score = "COUNT(*)"
    if half_life_days is not None:
        if not half_life_days > 0:
            raise InputError(f"the trending half-life must be > 0 days, not {half_life_days!r}",
                             field="trending_half_life_days")
        score = (f"SUM(COALESCE(rating, label) * pow(2.0, -({int(until)} - timestamp) / "
                 f"{86400.0 * float(half_life_days)!r}))")
    score_column = ", CAST(COALESCE(s.n, 0) AS DOUBLE) AS score" if with_score else ""
    return (f"SELECT i.item_id{score_column} FROM {items} i LEFT JOIN (SELECT {item} AS item_id, {score} AS n, "
            f"AVG(rating) AS avg FROM {ratings} WHERE timestamp >= {int(since)} AND timestamp < {int(until)} "
            f"GROUP BY {item}) s ON s.item_id = i.item_id ORDER BY {POPULARITY_ORDER}")


DEFAULT_HISTORY_N = 20
DEFAULT_MAX_CANDIDATES = 5000
DEFAULT_USER_RATINGS_N = 1000   # ratings per user kept for display (SparrowRecSys's /getuser), most recent first
TOP_RATINGS_N = 10              # a movie's highest ratings kept for display (SparrowRecSys's Movie.topRatings)


@dataclass(frozen=True)
class OnlineRecords:
    """Every user's and movie's online record as of ``t_end``, as Arrow tables (U users, M movies).

    Attributes:
        users: (U rows) :data:`~deepcrossing.features.columns.ONLINE_USER_SIDE` (the user-side sample
            columns, then the per-genre rating sums and counts the pair columns are computed from; then the
            static :data:`~deepcrossing.features.columns.USER_ATTRIBUTES` when the dataset has a users table),
            sorted by ``userId``.
        histories: (U rows, the order of ``users``) ``userId``, ``history`` (``list<struct<movieId int64,
            rating double, timestamp int64>>``, at most ``history_n``, most recent first, then smaller
            movieId) and ``rated`` (``list<int64>``, every movie the user rated, sorted, distinct).
        movies: (M rows) :func:`~deepcrossing.features.movie_side_columns`, sorted by ``movieId``; every
            movie of the items file, rated or not.
        movie_info: (M rows, the order of ``movies``) ``movieId``, ``title``, ``year``, ``genres``,
            ``imdbId`` and ``tmdbId`` (strings or null), ``ratingNumber`` (int64, 0 when unrated),
            ``averageRating`` (double, null when unrated or label-only) and ``topRatings``
            (``list<struct<userId int64, rating double, timestamp int64>>``, at most :data:`TOP_RATINGS_N`).
        user_info: (U rows, the order of ``users``; empty when not computed) ``userId``, ``ratings`` (like
            ``history``, at most ``user_ratings_n``), ``ratingCount``, ``averageRating``, ``highestRating``,
            ``lowestRating`` (over all the user's ratings; null for label-only logs).
        candidates: (C,) movie ids, most popular first.
        trending: (C,) movie ids by :func:`trending_sql` over the ``trending_days`` before ``t_end`` (empty:
            not asked for).
        trending_scores: movieId -> its trending score (every movie with one > 0, not only the first C): the
            trending prior's T (:mod:`deepcrossing.training.retrieval_prior`).
        t_end: the "now" of the features: the last rating's time + 1 (relative columns count from it).
        cold_user: the features of an unknown user (``userId`` None: put the id asked for; NULL attributes).
        cold_movie: the features of an unknown movie (``movieId`` None).
        cooccurrence: (one row per movie with a positive; empty unless ``config.itemcf``) ``movieId``,
            ``positives``, ``neighbours``, ``co``: :func:`deepcrossing.features.itemcf.cooccurrence_sql` at
            ``t_end``; with ``histories`` it gives ``userItemCFScore`` online
            (:func:`deepcrossing.features.itemcf.itemcf_scores`).
    """

    users: pa.Table
    histories: pa.Table
    movies: pa.Table
    movie_info: pa.Table
    candidates: list[int]
    t_end: int
    user_info: pa.Table = field(default_factory=lambda: pa.table({}))
    trending: list[int] = field(default_factory=list)
    trending_scores: dict[int, float] = field(default_factory=dict)
    cold_user: dict[str, Any] = field(default_factory=lambda: cold_features("user"))
    cold_movie: dict[str, Any] = field(default_factory=lambda: cold_features("movie"))
    cooccurrence: pa.Table = field(default_factory=lambda: COOCCURRENCE_SCHEMA.empty_table())


def online_records(
    dataset: Dataset,
    config: FeatureConfig | None = None,
    *,
    history_n: int = DEFAULT_HISTORY_N,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    user_ratings_n: int = DEFAULT_USER_RATINGS_N,
    trending_days: int | None = None,
    trending_half_life_days: float | None = None,
) -> OnlineRecords:
    """Compute the online records of every user and movie as of the end of the data.

    Args:
        dataset: normalized ratings/items (from :func:`deepcrossing.data.load_dataset`).
        config: the :class:`FeatureConfig` the model's samples were built with (threshold, N, threads).
        history_n: ratings kept per user for display (>= 0).
        max_candidates: length of the candidate list (>= 1).
        user_ratings_n: ratings kept per user for display in ``user_info`` (>= 0; the count and the mean,
            highest and lowest rating are over all of them).
        trending_days: compute ``trending`` (the ``max_candidates`` most rated movies of the last so many
            days, :func:`trending_sql`); ``None``: not computed.
        trending_half_life_days: the trending score's half-life (:func:`trending_sql`; ``None``: the count).

    Returns:
        :class:`OnlineRecords`.

    Raises:
        InputError: a bad ``history_n`` / ``max_candidates`` / ``user_ratings_n``, a missing file or column,
            no ratings.

    Example:
        >>> r = online_records(dataset, history_n=5, max_candidates=100)   # doctest: +SKIP
        >>> r.histories.column("rated")[0]                                  # doctest: +SKIP
    """
    config = config or FeatureConfig()
    for name, value, low in (("history_n", history_n, 0), ("max_candidates", max_candidates, 1),
                             ("user_ratings_n", user_ratings_n, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"{name} must be an integer >= {low}, not {value!r}", field=name)
    with connect(config) as con:
        register_inputs(con, dataset)
        users, movies, t_end = _latest(con, config, dataset.users is not None)
        per_user = con.sql(
            f"SELECT userId, all_ratings[1:{history_n}] AS history, rated, all_ratings[1:{user_ratings_n}] AS ratings, "
            "ratingCount, averageRating, highestRating, lowestRating FROM ("
            "SELECT user_id AS userId, list({'movieId': item_id, 'rating': rating, 'timestamp': timestamp} "
            "ORDER BY timestamp DESC, item_id) AS all_ratings, list(DISTINCT item_id ORDER BY item_id) AS rated, "
            "count(*) AS ratingCount, avg(rating) AS averageRating, max(rating) AS highestRating, "
            "min(rating) AS lowestRating FROM ratings_src WHERE user_id IS NOT NULL GROUP BY user_id) "
            "ORDER BY userId"
        ).to_arrow_table()
        con.execute("CREATE TEMP TABLE movie_stats AS SELECT item_id, COUNT(*) AS n, AVG(rating) AS avg "
                    "FROM ratings_src GROUP BY item_id")
        movie_info = con.sql(_movie_info_sql(con, dataset)).to_arrow_table()
        candidates = [int(r[0]) for r in con.execute(
            "SELECT i.item_id FROM items_src i LEFT JOIN movie_stats s USING (item_id) "
            f"ORDER BY {POPULARITY_ORDER} LIMIT {max_candidates}"
        ).fetchall()]
        ranked = [] if trending_days is None else con.execute(trending_sql(
            "ratings_src", "items_src", since=t_end - 86400 * int(trending_days), until=t_end,
            half_life_days=trending_half_life_days, with_score=True)).fetchall()
        trending = [int(r[0]) for r in ranked[:max_candidates]]
        trending_scores = {int(m): float(score) for m, score in ranked if score > 0}
        cooccurrence = (con.sql(cooccurrence_sql(
            "(SELECT user_id, item_id, timestamp FROM ratings_src WHERE COALESCE(label, CASE WHEN rating >= "
            f"CAST({float(config.label_threshold)!r} AS DOUBLE) THEN 1 ELSE 0 END) = 1)",
            config.itemcf_window)).to_arrow_table().cast(COOCCURRENCE_SCHEMA)
            if config.itemcf else COOCCURRENCE_SCHEMA.empty_table())
    histories = per_user.select(["userId", "history", "rated"])
    user_info = per_user.select(["userId", "ratings", "ratingCount", "averageRating", "highestRating",
                                 "lowestRating"])
    _check_aligned(users, histories, "userId")
    _check_aligned(movies, movie_info, "movieId")
    return OnlineRecords(users=users, histories=histories, movies=movies, movie_info=movie_info,
                         candidates=candidates, t_end=t_end, user_info=user_info,
                         trending=trending, trending_scores=trending_scores, cooccurrence=cooccurrence,
                         cold_user=cold_features("user", user_attributes=dataset.users is not None))


def latest_features(dataset: Dataset, config: FeatureConfig | None = None) -> tuple[pa.Table, pa.Table]:
    """Each user's and each movie's features as of the end of the data, by the same SQL as the samples.

    One probe row per user and one per movie (every item of ``items.parquet``, rated or not) is appended at
    ``t_end = max(timestamp) + 1``; probes never count as history. The user-side columns of the user probes
    and the movie-side columns of the movie probes are exactly what a sample arriving at ``t_end`` would get.

    Args:
        dataset: normalized ratings/items.
        config: the :class:`FeatureConfig` used for the samples (threshold, N).

    Returns:
        ``(users, movies)``: ``users`` has :func:`user_side_columns` (one row per user, ``(U, len)``),
        ``movies`` has :func:`movie_side_columns` (one row per item), both sorted by id. The relative
        columns (``userSecondsSincePrevRating``, ``movieSecondsSinceFirstRating``) are relative to ``t_end``.

    Example:
        >>> users, movies = latest_features(dataset)  # doctest: +SKIP
        >>> users.column("userRecentPositives")[0]  # doctest: +SKIP
    """
    config = config or FeatureConfig()
    with connect(config) as con:
        register_inputs(con, dataset)
        users, movies, _ = _latest(con, config, dataset.users is not None)
    return users, movies


def _latest(con: duckdb.DuckDBPyConnection, config: FeatureConfig,
            user_attributes: bool = False) -> tuple[pa.Table, pa.Table, int]:
    """:func:`latest_features` on a connection with the input views (``users_src`` too when
    ``user_attributes``: the user records then end with the static user attributes); also returns ``t_end``."""
    genres = genre_vocabulary(con)
    t_end = int(fetch_one(con, "SELECT MAX(timestamp) FROM ratings_src")[0]) + 1
    con.execute(
        "CREATE VIEW events AS "
        "SELECT user_id, item_id, rating, label, timestamp, FALSE AS is_probe FROM ratings_src "
        f"UNION ALL SELECT DISTINCT user_id, CAST(NULL AS BIGINT), CAST(NULL AS DOUBLE), "
        f"CAST(NULL AS TINYINT), {t_end}, TRUE FROM ratings_src "
        f"UNION ALL SELECT DISTINCT CAST(NULL AS BIGINT), item_id, CAST(NULL AS DOUBLE), "
        f"CAST(NULL AS TINYINT), {t_end}, TRUE FROM items_src"
    )
    bits = events_genre_bits(con)
    con.execute("CREATE TEMP TABLE probes AS SELECT * FROM ("
                + feature_sql(genres, label_threshold=config.label_threshold, recent_n=config.recent_n,
                              genre_bits=bits, user_attributes=user_attributes,
                              **(config.sql_settings() | {"itemcf": False}))
                + ") WHERE is_probe")   # the probes keep no pair column: item-CF (3x the query) is not needed
    attrs = list(USER_ATTRIBUTES) if user_attributes else []
    users = assemble(con.sql("SELECT * FROM probes WHERE userId IS NOT NULL ORDER BY userId").to_arrow_table(),
                     genres, config.recent_n, bits).select([*USER_SIDE, *attrs])
    users = with_genre_ratings(con, users).select([*ONLINE_USER_SIDE, *attrs])
    movies = assemble(con.sql("SELECT * FROM probes WHERE movieId IS NOT NULL ORDER BY movieId")
                      .to_arrow_table(), genres, config.recent_n, bits).select(list(MOVIE_SIDE))
    assert isinstance(users, pa.Table) and isinstance(movies, pa.Table)
    return users, movies, t_end


# ---- online-only user columns (issue 11): what the pair columns are computed from at request time ----
def with_genre_ratings(con: duckdb.DuckDBPyConnection, users: pa.Table, ratings: str = "ratings_src",
                       items: str = "items_src", user: str = "user_id", item: str = "item_id") -> pa.Table:
    """``users`` (a ``userId`` column, any order) with ``userGenreRatingSums`` / ``userGenreRatingCounts``
    appended: per genre, the sum and number of the user's non-NULL ratings in ``ratings`` (columns ``user``,
    ``item``, ``rating``) of movies of that genre (``items``: ``item_id``, ``genres``), a genre listed twice
    counting twice, exactly the ``genre_before`` sums of :func:`~deepcrossing.features.sql.feature_sql` after
    the last of them; genres sorted by name, ``{}`` for a user with none. The online records call it at
    ``t_end``; retrieval's offline ranker at the split start."""
    user, item = ident(user), ident(item)
    con.register("_online_users", pa.table({"userId": users.column("userId"),
                                            "_pos": pa.array(range(users.num_rows), pa.int64())}))
    maps = con.sql(
        f"WITH g AS (SELECT r.{user} AS user_id, ig.genre, SUM(r.rating) AS s, COUNT(r.rating) AS n FROM {ratings} r "
        f"JOIN (SELECT item_id, UNNEST(genres) AS genre FROM {items}) ig ON r.{item} = ig.item_id "
        f"WHERE r.{user} IS NOT NULL AND r.rating IS NOT NULL AND ig.genre IS NOT NULL GROUP BY r.{user}, ig.genre), "
        "m AS (SELECT user_id, MAP(list(genre ORDER BY genre), list(s ORDER BY genre)) AS sums, "
        "MAP(list(genre ORDER BY genre), list(n ORDER BY genre)) AS counts FROM g GROUP BY user_id) "
        "SELECT COALESCE(m.sums, MAP(CAST([] AS VARCHAR[]), CAST([] AS DOUBLE[]))) AS userGenreRatingSums, "
        "COALESCE(m.counts, MAP(CAST([] AS VARCHAR[]), CAST([] AS BIGINT[]))) AS userGenreRatingCounts "
        "FROM _online_users u "
        "LEFT JOIN m ON u.userId = m.user_id ORDER BY u._pos"
    ).to_arrow_table()
    con.unregister("_online_users")
    out = users
    for name, kind in (("userGenreRatingSums", pa.float64()), ("userGenreRatingCounts", pa.int64())):
        typed = pa.map_(pa.string(), kind)
        out = out.append_column(pa.field(name, typed), maps.column(name).cast(typed))
    return out


def _movie_info_sql(con: duckdb.DuckDBPyConnection, dataset: Dataset) -> str:
    """The display data of every movie of the items file, by id (needs the temp table ``movie_stats``).

    An items file without a title or link column (a log given without titles, a file normalized before links
    were read) gets NULL there."""
    have = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet({sql_str(dataset.items)})").fetchall()}

    def column(name: str) -> str:
        return name if name in have else "CAST(NULL AS VARCHAR)"

    order = "rating DESC NULLS LAST, timestamp DESC, user_id"
    return f"""
        WITH info AS (
            SELECT item_id, first({column("title")}) AS title, first(year) AS year, first(genres) AS genres,
                   first({column("imdb_id")}) AS imdbId, first({column("tmdb_id")}) AS tmdbId
            FROM read_parquet({sql_str(dataset.items)}) WHERE item_id IS NOT NULL GROUP BY item_id),
        best AS (
            SELECT item_id, list({{'userId': user_id, 'rating': rating, 'timestamp': timestamp}}
                                 ORDER BY {order}) AS topRatings
            FROM (SELECT * FROM ratings_src
                  QUALIFY row_number() OVER (PARTITION BY item_id ORDER BY {order}) <= {TOP_RATINGS_N})
            GROUP BY item_id)
        SELECT info.item_id AS movieId, title, year, genres, imdbId, tmdbId,
               COALESCE(s.n, 0) AS ratingNumber, s.avg AS averageRating,
               COALESCE(best.topRatings,
                        CAST([] AS STRUCT(userId BIGINT, rating DOUBLE, timestamp BIGINT)[])) AS topRatings
        FROM info LEFT JOIN movie_stats s USING (item_id) LEFT JOIN best USING (item_id)
        ORDER BY movieId"""


def _check_aligned(features: pa.Table, extra: pa.Table, key: str) -> None:
    """The two tables describe the same ids in the same order (both come from the same files)."""
    same = features.num_rows == extra.num_rows and (
        features.num_rows == 0 or pc.all(pc.equal(features.column(key), extra.column(key))).as_py())
    if not same:
        raise InputError(f"the {key} rows of the features and of the display data differ (duplicate or null "
                         "ids in the normalized files?); load the data again with load_dataset", field=key)
