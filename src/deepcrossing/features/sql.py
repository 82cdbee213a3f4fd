"""The point-in-time feature SQL: one query from rating events to samples.

Every feature of a sample at time t reads only events with ``timestamp < t`` (strictly earlier; ratings in
the same second are not seen). The query is written in portable window-function style that Spark SQL can also
run: the user's history is summed per (user, second) first, then ``ROWS`` windows over those rows give the
sums over the earlier seconds, the previous second and the means at the last k seconds (``u_sec`` / ``u_hist``
of :mod:`deepcrossing.features.history`, joined back on the second); the movie's running aggregates over
integer unix seconds are "up to t, same-second peers included" minus "the peers" (``RANGE BETWEEN UNBOUNDED
PRECEDING AND CURRENT ROW`` minus ``RANGE BETWEEN CURRENT ROW AND CURRENT ROW``), the "last N positives" and
genre counts come from a per-user numbered stream of positive events (``pos_rank``) computed with ``LAG`` /
cumulative ``SUM`` windows once per positive event and joined back on ``(user, number of earlier
positives)``: no ASOF JOIN and no O(n^2) window. The nested columns are assembled from flat state
columns by ``features/nested.py``'s ``assemble`` (vectorized Arrow/numpy, the same for every engine).
The query is rendered for DuckDB or Spark SQL by a :class:`~deepcrossing.features.dialect.Dialect` (list
indexing, types, literals); every feature is written here once. To add a column: declare it in
:data:`~deepcrossing.features.columns.COLUMNS` (type in DuckDB spelling) and compute it here in portable SQL,
with a ``Dialect`` method for anything the engines spell differently (add one there if needed); the engine
equality test (tests/features/test_spark_equality.py) then proves both engines agree on it.

Relations the query expects in the connection:
    events(user_id BIGINT, item_id BIGINT, rating DOUBLE, label TINYINT, timestamp BIGINT, is_probe BOOLEAN)
        ``label`` is the explicit 0/1 label or NULL (then ``rating >= threshold`` decides); probe rows
        (see :func:`deepcrossing.features.latest_features`) get features but never count as history.
    items_src(item_id BIGINT, year INTEGER, genres VARCHAR[])
    users_src(user_id BIGINT, gender VARCHAR, age INTEGER, occupation VARCHAR, zip VARCHAR)
        only with ``user_attributes`` (the dataset has a users table): static, joined on the user id.
"""

from __future__ import annotations

import pyarrow as pa

from deepcrossing.features import columns, history
from deepcrossing.features.columns import COLUMNS, USER_ATTRIBUTE_COLUMNS, USER_ATTRIBUTES, arrow_type, sample_columns
from deepcrossing.features.dialect import DUCKDB, Dialect
from deepcrossing.features.history import counter_packs, stddev
from deepcrossing.features.itemcf import itemcf_ctes


NESTED_COLUMNS = ("userRecentPositives", "userGenre1", "userGenre2", "userGenre3", "userGenre4", "userGenre5",
                  "userGenreCounts")
"""The user-history columns that ``assemble`` builds from the query's flat state columns."""
ASSEMBLED_COLUMNS = (*NESTED_COLUMNS, "userGenreCosine")
"""Every column ``assemble`` builds (the nested ones, and the genre cosine from the same counts)."""
DAY = 86_400


_ICF_JOIN = ("LEFT JOIN icf ON joined.user_id = icf.user_id AND joined.item_id = icf.item_id "
             "AND joined.timestamp = icf.timestamp")


def _prior(weight: float) -> str:
    return f"CAST({float(weight)!r} AS DOUBLE)"


def genre_bits(max_positives: int | None) -> int:
    """Bits per packed genre counter, enough for a user with ``max_positives`` positives (31 when unknown).

    Example:
        >>> genre_bits(20_000), genre_bits(None)
        (15, 31)
    """
    if max_positives is None:
        return 31
    return min(max(int(max_positives).bit_length(), 1), 31)


def _before(aggregate: str, window: str) -> str:
    # the aggregate over rows strictly before t (0 instead of NULL when there are none)
    return (f"(COALESCE({aggregate} OVER {window}_upto, 0) - COALESCE({aggregate} OVER {window}_peers, 0))")


_BAYES_CTES = """,
-- movieBayesAvgRating's global mean of the ratings before t, per second (opt-in: FeatureConfig.movie_bayes)
g_sec AS (SELECT timestamp, COALESCE(SUM(rating), 0) AS s, COUNT(rating) AS n FROM ev GROUP BY timestamp),
g_before AS (
    SELECT timestamp, (SUM(s) OVER w_g) - s AS g_s, (SUM(n) OVER w_g) - n AS g_n FROM g_sec
    WINDOW w_g AS (ORDER BY timestamp ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)"""


_UA_FINAL = ", ua.gender AS ua_gender, ua.age AS ua_age, ua.occupation AS ua_occupation, ua.zip AS ua_zip"
ZIP_PREFIX = 3
"""Characters of the zip code kept in ``userZipPrefix`` (a US zip's first 3 digits: its sectional center)."""


def _user_attribute_select(d: Dialect) -> str:
    # the static user attributes (features/columns.py's USER_ATTRIBUTE_COLUMNS), in that order; blank text NULL
    exprs = {"userGender": "NULLIF(trim(ua_gender), '')", "userAge": d.cast("ua_age", "INTEGER"),
             "userOccupation": "NULLIF(trim(ua_occupation), '')", "userZipPrefix": d.text_prefix("ua_zip", ZIP_PREFIX)}
    assert tuple(exprs) == USER_ATTRIBUTES
    return "".join(f"\n    {d.cast(e, USER_ATTRIBUTE_COLUMNS[n].type)} AS {n}," for n, e in exprs.items())


def feature_sql(genres: list[str], *, label_threshold: float, recent_n: int,
                genre_bits: int = 31, dialect: Dialect = DUCKDB, itemcf: bool = False, itemcf_window: int = 10,
                itemcf_history: int = 20, movie_bayes: bool = False,
                movie_prior_weight: float = 3.0, user_attributes: bool = False) -> str:
    """The sample query over ``events`` and ``items_src``; one output row per event (probes included).

    The query computes everything as flat columns. The user's positive history at a sample is the state
    right after the user's k-th positive, k = ``_npos`` (positives strictly before t): ``_rp0.._rp{N-1}``
    (the last N positive movies, most recent first, NULL beyond k) and the cumulative count per genre of the
    sorted vocabulary, packed ``genre_bits`` bits per genre into ``_gp*`` BIGINTs so that one running SUM
    counts several genres (20 genre windows were the costliest part of the query). That state is computed
    once per positive event and joined to the samples on (user, k); ``assemble`` then turns it into the
    nested columns (:data:`NESTED_COLUMNS`) with vectorized Arrow/numpy code instead of per-row list
    functions, which were most of the run time (building and exporting lists of 20M rows). Every engine's
    flat rows go through that same ``assemble`` (Spark's too), so the nested columns have one definition.

    Args:
        genres: the genre vocabulary (sorted distinct genres of the items, every one of them: a genre outside it
            is left out of ``userGenreAvgRating``); one cumulative count per genre.
        label_threshold: rating >= this is a positive when the row has no explicit label.
        recent_n: N of ``userRecentPositives``.
        genre_bits: bits per packed genre counter (:func:`genre_bits` of the largest number of events of one
            user); a user must have fewer than ``2**genre_bits`` events (the history's event counters
            are packed the same way).
        dialect: the engine to render for (:data:`~deepcrossing.features.dialect.DUCKDB` or ``SPARK``).
        itemcf: compute ``userItemCFScore`` (False: NULL).
        itemcf_window, itemcf_history: ``userItemCFScore``'s co-occurrence window and history length
            (:mod:`deepcrossing.features.itemcf`).
        movie_bayes: compute ``movieBayesAvgRating`` (False: NULL).
        movie_prior_weight: m of ``movieBayesAvgRating``.
        user_attributes: add :data:`~deepcrossing.features.columns.USER_ATTRIBUTE_COLUMNS` from ``users_src``
            (static: the user's row, the same at every t; NULL for a user without a row).

    Returns:
        SQL text selecting :func:`flat_columns` (:func:`sample_columns` in order except
        :data:`ASSEMBLED_COLUMNS`, then ``_npos``, ``_rp*``, ``_gp*``) and ``is_probe``.

    Example:
        >>> "ROWS BETWEEN 5 PRECEDING AND 1 PRECEDING" in feature_sql(["Drama"], label_threshold=3.5, recent_n=10)
        True
    """
    d = dialect
    lags = ",\n        ".join(
        f"LAG(item_id, {j}) OVER w_pos AS rp{j}" if j else "item_id AS rp0" for j in range(recent_n)
    )
    packs = counter_packs(len(genres), genre_bits)
    # per item: its genres as 0/1 counters at bit offsets genre_bits * slot (plain integer arithmetic)
    item_packs = ",\n           ".join(
        "CAST(" + " + ".join(f"CASE WHEN array_contains(genres, {d.str_lit(genres[g])}) "
                             f"THEN {1 << (genre_bits * slot)} ELSE 0 END" for slot, g in enumerate(pack))
        + f" AS BIGINT) AS gp{p}"
        for p, pack in enumerate(packs)
    ) or "0 AS gp_none"
    pos_packs = ", ".join(f"COALESCE(i.gp{p}, 0) AS gp{p}" for p in range(len(packs))) or "0 AS gp_none"
    gcounts = ",\n        ".join(
        f"CAST(SUM(gp{p}) OVER w_pos_cum AS BIGINT) AS gs{p}" for p in range(len(packs))
    ) or "0 AS gs_none"
    state_cols = ", ".join([f"st.rp{j} AS _rp{j}" for j in range(recent_n)]
                           + [f"COALESCE(st.gs{p}, 0) AS _gp{p}" for p in range(len(packs))])
    out_state = ", ".join([f"_rp{j}" for j in range(recent_n)] + [f"_gp{p}" for p in range(len(packs))])
    rated = ",\n    ".join(f"_rp{i - 1} AS userRatedMovie{i}" for i in range(1, 6))
    # a row without a user (a movie probe) has no u_hist row: no history, zero counts (what assemble expects)
    hist_cols = ", ".join(f"COALESCE(uh.{c}, 0) AS {c}" if c in history.COUNTS else f"uh.{c}"
                          for c in history.JOIN_COLUMNS)
    recent_select = ",\n    ".join(columns.RECENT_RATING_TIMES.values())
    genre_number = ("CASE g " + " ".join(f"WHEN {d.str_lit(g)} THEN {k}" for k, g in enumerate(genres)) + " END"
                    if genres else "CAST(NULL AS INTEGER)")
    return f"""
WITH item_bits AS (
    SELECT item_id,
           {item_packs}
    FROM items_src
),
ev AS (
    SELECT e.user_id, e.item_id, e.rating, e.timestamp, e.is_probe,
           CAST(CASE WHEN e.is_probe THEN NULL
                     WHEN e.label IS NOT NULL THEN e.label
                     WHEN e.rating >= CAST({float(label_threshold)!r} AS DOUBLE) THEN 1 ELSE 0 END
                AS TINYINT) AS label,
           CAST(i.year AS BIGINT) AS year
    FROM events e LEFT JOIN items_src i ON e.item_id = i.item_id
),
{history.history_ctes(genre_bits, d).lstrip()},
ev_genre AS (
    -- one row per (rating, genre of its movie): the user's running rating sum and count per genre (the genre
    -- as its vocabulary number: an integer partition key sorts faster than the name)
    SELECT e.user_id, e.item_id, e.timestamp, e.rating, ig.genre
    FROM ev e JOIN (SELECT item_id, {genre_number} AS genre
                    FROM (SELECT item_id, {d.unnest("genres")} AS g FROM items_src) u) ig ON e.item_id = ig.item_id
    WHERE e.user_id IS NOT NULL AND ig.genre IS NOT NULL
),
genre_before AS (
    SELECT user_id, item_id, timestamp,
        {_before("SUM(rating)", "w_ug")} AS gs,
        {_before("COUNT(rating)", "w_ug")} AS gn
    FROM ev_genre
    WINDOW w_ug_upto AS (PARTITION BY user_id, genre ORDER BY timestamp
                         RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
           w_ug_peers AS (PARTITION BY user_id, genre ORDER BY timestamp RANGE BETWEEN CURRENT ROW AND CURRENT ROW)
),
genre_avg AS (
    -- summed over the movie's genres (a duplicated rating doubles both sums: the ratio is unchanged)
    SELECT user_id, item_id, timestamp, CASE WHEN SUM(gn) > 0 THEN SUM(gs) / SUM(gn) END AS userGenreAvgRating
    FROM genre_before GROUP BY user_id, item_id, timestamp
),
ev_ga AS (
    -- joined to the narrow events before the window sorts, not to the wide rows after them (at 20M rows the
    -- late join spilled the wide probe side)
    SELECT ev.*, ga.userGenreAvgRating, {hist_cols}
    FROM ev LEFT JOIN genre_avg ga
      ON ev.user_id = ga.user_id AND ev.item_id = ga.item_id AND ev.timestamp = ga.timestamp
    LEFT JOIN u_hist uh ON ev.user_id = uh.user_id AND ev.timestamp = uh.timestamp
),
win AS (
    SELECT ev_ga.*,
        {_before("COUNT(*)", "w_movie")} AS m_n,
        {_before("COUNT(rating)", "w_movie")} AS m_nr,
        {_before("SUM(rating)", "w_movie")} AS m_s,
        {_before("SUM(rating * rating)", "w_movie")} AS m_ss,
        CAST({_before("SUM(label)", "w_movie")} AS BIGINT) AS m_pos,
        -- the movie's first rating time if it is before t (the sort puts it first in the partition)
        CASE WHEN FIRST_VALUE(timestamp) OVER w_movie_upto < timestamp
             THEN FIRST_VALUE(timestamp) OVER w_movie_upto END AS m_first,
        COUNT(*) OVER w_movie_7d AS m_n7,
        COUNT(*) OVER w_movie_30d AS m_n30
    FROM ev_ga
    -- "strictly before t" sums are (running sum up to t, same-second peers included) minus (the peers' sum):
    -- both frames come from one sort and are much cheaper than a RANGE ... 1 PRECEDING frame per aggregate
    WINDOW w_movie_upto AS (PARTITION BY item_id ORDER BY timestamp
                            RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
           w_movie_peers AS (PARTITION BY item_id ORDER BY timestamp RANGE BETWEEN CURRENT ROW AND CURRENT ROW),
           w_movie_7d AS (PARTITION BY item_id ORDER BY timestamp
                          RANGE BETWEEN {7 * DAY} PRECEDING AND 1 PRECEDING),
           w_movie_30d AS (PARTITION BY item_id ORDER BY timestamp
                           RANGE BETWEEN {30 * DAY} PRECEDING AND 1 PRECEDING)
),
pos AS (
    -- the user's positive events (packed genre counters are joined here, not carried through the sorts above)
    SELECT p.user_id, p.item_id, p.timestamp, {pos_packs}
    FROM ev p LEFT JOIN item_bits i ON p.item_id = i.item_id
    WHERE p.label = 1
),
state AS (
    -- the user's positive history right after positive number pos_rank: last N items and genre counts;
    -- one row per positive event, joined to every sample that has exactly pos_rank earlier positives.
    -- Positives are numbered in time order, within one second larger movieId first, so that the most
    -- recent-first list puts the smaller movieId first; the number, the lags and the running counts share
    -- one sort (rows tied on (timestamp, movieId) are the same movie: any order of them gives the same values)
    SELECT user_id, ROW_NUMBER() OVER w_pos AS pos_rank,
        {lags},
        {gcounts}
    FROM pos
    WINDOW w_pos AS (PARTITION BY user_id ORDER BY timestamp, item_id DESC),
           w_pos_cum AS (PARTITION BY user_id ORDER BY timestamp, item_id DESC
                         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
),
joined AS (
    -- samples with no earlier positive (u_pos = 0) find no state row: NULL lags, zero counts
    SELECT win.*, {state_cols}
    FROM win LEFT JOIN state st ON win.user_id = st.user_id AND win.u_pos = st.pos_rank
){_BAYES_CTES if movie_bayes else ""}{itemcf_ctes(itemcf_window, itemcf_history, d) if itemcf else ""},
final AS (
    SELECT joined.*, COALESCE(i.genres, {d.empty_list('VARCHAR[]')}) AS genres,
           {"gb.g_s, gb.g_n" if movie_bayes else "CAST(NULL AS DOUBLE) AS g_s, CAST(NULL AS BIGINT) AS g_n"},
           {"icf.icf_score" if itemcf else "CAST(NULL AS DOUBLE) AS icf_score"}{_UA_FINAL if user_attributes else ""}
    FROM joined LEFT JOIN items_src i ON joined.item_id = i.item_id
    {"LEFT JOIN g_before gb ON joined.timestamp = gb.timestamp" if movie_bayes else ""}
    {_ICF_JOIN if itemcf else ""}
    {"LEFT JOIN users_src ua ON joined.user_id = ua.user_id" if user_attributes else ""}
)
SELECT
    user_id AS userId,
    item_id AS movieId,
    CAST(rating AS DOUBLE) AS rating,
    timestamp,
    label,
    {d.cast("year", "INTEGER")} AS releaseYear,
    genres AS movieGenres,
    {d.list_get("genres", 1)} AS movieGenre1,
    {d.list_get("genres", 2)} AS movieGenre2,
    {d.list_get("genres", 3)} AS movieGenre3,
    m_n AS movieRatingCount,
    CASE WHEN m_nr > 0 THEN m_s / m_nr END AS movieAvgRating,
    {stddev("m_nr", "m_s", "m_ss")} AS movieRatingStddev,
    u_n AS userRatingCount,
    userAvgRating,
    userRatingStddev,
    userAvgReleaseYear,
    userReleaseYearStddev,
    {rated},
    userPositiveRate,
    userSecondsSincePrevRating,
    CASE WHEN m_n > 0 THEN CAST(m_pos AS DOUBLE) / m_n END AS moviePositiveRate,
    timestamp - m_first AS movieSecondsSinceFirstRating,
    m_n7 AS movieLast7dRatingCount,
    m_n30 AS movieLast30dRatingCount,
    userGenreAvgRating,
    CASE WHEN m_nr > 0 AND g_n > 0
         THEN (m_s + {_prior(movie_prior_weight)} * (g_s / g_n)) / (m_nr + {_prior(movie_prior_weight)})
         END AS movieBayesAvgRating,
    icf_score AS userItemCFScore,
    {recent_select},{_user_attribute_select(d) if user_attributes else ""}
    u_pos AS _npos,
    {out_state},
    is_probe
FROM final
"""


def flat_columns(n_genres: int, recent_n: int, genre_bits: int = 31, user_attributes: bool = False) -> list[str]:
    """The columns :func:`feature_sql` selects before ``is_probe``, in order (what ``assemble`` reads).

    Example:
        >>> flat_columns(2, 5)[-7:]
        ['_npos', '_rp0', '_rp1', '_rp2', '_rp3', '_rp4', '_gp0']
        >>> flat_columns(2, 1, user_attributes=True)[-5:-2]
        ['userOccupation', 'userZipPrefix', '_npos']
    """
    packs = counter_packs(n_genres, genre_bits)
    return ([c for c in sample_columns(user_attributes) if c not in ASSEMBLED_COLUMNS] + ["_npos"]
            + [f"_rp{j}" for j in range(recent_n)] + [f"_gp{p}" for p in range(len(packs))])


def flat_schema(n_genres: int, recent_n: int, genre_bits: int = 31, user_attributes: bool = False) -> pa.Schema:
    """Arrow types of :func:`flat_columns` (DuckDB's, from :data:`~deepcrossing.features.columns.COLUMNS`) plus
    the ``split`` text column: what every engine's query result is cast to.

    Example:
        >>> flat_schema(2, 5).field("label").type, flat_schema(2, 5).field("_rp0").type
        (DataType(int8), DataType(int64))
    """
    types = {**COLUMNS, **USER_ATTRIBUTE_COLUMNS}
    fields = [pa.field(c, arrow_type(types[c].type) if c in types else pa.int64())
              for c in flat_columns(n_genres, recent_n, genre_bits, user_attributes)]
    return pa.schema([*fields, pa.field("split", pa.string())])


SPLIT_BUCKETS = 1_000_000
"""The random split's resolution: a row's bucket in ``[0, SPLIT_BUCKETS)`` is compared with integer cuts."""


def random_split_sql(seed: int, fractions: tuple[float, float, float], dialect: Dialect = DUCKDB) -> str:
    """The split of each sample row (``'train'``/``'valid'``/``'test'``) by a seeded md5 coin per rating.

    The bucket is md5 of ``"userId:movieId:timestamp:seed"`` (see
    :meth:`~deepcrossing.features.dialect.Dialect.md5_bucket`), compared with integer cuts, so DuckDB and Spark
    put every row in the same split (``hash()`` differs between the engines).

    Example:
        >>> random_split_sql(7, (0.8, 0.1, 0.1)).count("800000"), "md5(" in random_split_sql(7, (0.8, 0.1, 0.1))
        (1, True)
    """
    bucket = dialect.md5_bucket(["userId", "movieId", "timestamp", str(int(seed))], SPLIT_BUCKETS)
    cut_train = round(fractions[0] * SPLIT_BUCKETS)
    cut_valid = round((fractions[0] + fractions[1]) * SPLIT_BUCKETS)
    return (f"CASE WHEN {bucket} < {cut_train} THEN 'train' WHEN {bucket} < {cut_valid} THEN 'valid' "
            "ELSE 'test' END")


def time_split_sql(valid_start: int, test_start: int) -> str:
    """The split of each sample row by time: train before ``valid_start``, test from ``test_start`` on."""
    return (f"CASE WHEN timestamp < {int(valid_start)} THEN 'train' WHEN timestamp < {int(test_start)} "
            "THEN 'valid' ELSE 'test' END")
