"""The point-in-time feature SQL: one query from rating events to samples.

Every feature of a sample at time t reads only events with ``timestamp < t`` (strictly earlier; ratings in
the same second are not seen). The query is written in portable window-function style that Spark SQL can also
run: running aggregates use ``RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING`` over integer unix seconds,
the "last N positives" and genre counts come from a per-user numbered stream of positive events (``pos_rank``)
computed with ``LAG`` / cumulative ``SUM`` windows and joined back on ``(user, number of earlier positives)``:
no ASOF JOIN and no O(n^2) window. The few DuckDB-only functions are marked ``-- DuckDB:`` with their Spark
equivalent.

Relations the query expects in the connection:
    events(user_id BIGINT, item_id BIGINT, rating DOUBLE, label TINYINT, timestamp BIGINT, is_probe BOOLEAN)
        ``label`` is the explicit 0/1 label or NULL (then ``rating >= threshold`` decides); probe rows
        (see :func:`deepcrossing.features.latest_features`) get features but never count as history.
    items_src(item_id BIGINT, year INTEGER, genres VARCHAR[])
"""

from __future__ import annotations

# The output schema, in order: name -> (DuckDB type, meaning). The first block is docs/design.md section 2;
# the second block are the extra leakage-free signals.
SAMPLE_COLUMNS: dict[str, tuple[str, str]] = {
    "userId": ("BIGINT", "user id"),
    "movieId": ("BIGINT", "movie (item) id"),
    "rating": ("DOUBLE", "the rating; NULL for label-only logs"),
    "timestamp": ("BIGINT", "unix seconds of the rating"),
    "label": ("TINYINT", "1 if rating >= label_threshold (or the given label column), else 0"),
    "releaseYear": ("INTEGER", "release year from the title; NULL when unknown"),
    "movieGenres": ("VARCHAR[]", "all genres of the movie"),
    "movieGenre1": ("VARCHAR", "first genre of the movie"),
    "movieGenre2": ("VARCHAR", "second genre of the movie"),
    "movieGenre3": ("VARCHAR", "third genre of the movie"),
    "movieRatingCount": ("BIGINT", "ratings of the movie strictly before t"),
    "movieAvgRating": ("DOUBLE", "mean of those ratings; NULL when none"),
    "movieRatingStddev": ("DOUBLE", "sample stddev of those ratings; NULL under 2"),
    "userRatingCount": ("BIGINT", "the user's ratings strictly before t"),
    "userAvgRating": ("DOUBLE", "mean of those ratings; NULL when none"),
    "userRatingStddev": ("DOUBLE", "sample stddev of those ratings; NULL under 2"),
    "userAvgReleaseYear": ("DOUBLE", "mean release year of those movies (known years only)"),
    "userReleaseYearStddev": ("DOUBLE", "sample stddev of those release years; NULL under 2"),
    "userRecentPositives": ("BIGINT[]", "last N movies the user rated positively before t, most recent first "
                                        "(same second: smaller movieId first)"),
    "userRatedMovie1": ("BIGINT", "userRecentPositives[1]"),
    "userRatedMovie2": ("BIGINT", "userRecentPositives[2]"),
    "userRatedMovie3": ("BIGINT", "userRecentPositives[3]"),
    "userRatedMovie4": ("BIGINT", "userRecentPositives[4]"),
    "userRatedMovie5": ("BIGINT", "userRecentPositives[5]"),
    "userGenre1": ("VARCHAR", "top genre over the user's positives before t (count desc, then name)"),
    "userGenre2": ("VARCHAR", "second top genre"),
    "userGenre3": ("VARCHAR", "third top genre"),
    "userGenre4": ("VARCHAR", "fourth top genre"),
    "userGenre5": ("VARCHAR", "fifth top genre"),
    "userGenreCounts": ("MAP(VARCHAR, BIGINT)", "genre -> count over the user's positives before t"),
    "userPositiveRate": ("DOUBLE", "share of the user's ratings before t that are positive; NULL when none"),
    "userSecondsSincePrevRating": ("BIGINT", "t minus the user's latest rating time before t; NULL when none"),
    "moviePositiveRate": ("DOUBLE", "share of the movie's ratings before t that are positive; NULL when none"),
    "movieSecondsSinceFirstRating": ("BIGINT", "t minus the movie's first rating time before t; NULL when none"),
}
DOCUMENTED_COLUMNS = tuple(list(SAMPLE_COLUMNS)[:30])
EXTRA_COLUMNS = tuple(list(SAMPLE_COLUMNS)[30:])
ID_COLUMNS = ("userId", "movieId", "rating", "timestamp", "label")
FEATURE_COLUMNS = tuple(c for c in SAMPLE_COLUMNS if c not in ID_COLUMNS)

USER_SIDE = (
    "userId", "userRatingCount", "userAvgRating", "userRatingStddev", "userAvgReleaseYear",
    "userReleaseYearStddev", "userRecentPositives", "userRatedMovie1", "userRatedMovie2", "userRatedMovie3",
    "userRatedMovie4", "userRatedMovie5", "userGenre1", "userGenre2", "userGenre3", "userGenre4", "userGenre5",
    "userGenreCounts", "userPositiveRate", "userSecondsSincePrevRating",
)
MOVIE_SIDE = (
    "movieId", "releaseYear", "movieGenres", "movieGenre1", "movieGenre2", "movieGenre3", "movieRatingCount",
    "movieAvgRating", "movieRatingStddev", "moviePositiveRate", "movieSecondsSinceFirstRating",
)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _stddev(n: str, s: str, ss: str) -> str:
    # Sample stddev from count, sum and sum of squares: (n*ss - s^2) / (n*(n-1)) is exact for ratings on a
    # 0.5 grid and for integer years (all terms stay below 2^53), so no running-variance drift.
    return (f"CASE WHEN {n} >= 2 THEN SQRT(GREATEST(CAST({n} * {ss} - {s} * {s} AS DOUBLE), 0) "
            f"/ (CAST({n} AS DOUBLE) * ({n} - 1))) END")


def feature_sql(genres: list[str], *, label_threshold: float, recent_n: int) -> str:
    """The sample query over ``events`` and ``items_src``; one output row per event (probes included).

    Args:
        genres: the genre vocabulary (sorted distinct genres of the items); one cumulative count per genre.
        label_threshold: rating >= this is a positive when the row has no explicit label.
        recent_n: N of ``userRecentPositives``.

    Returns:
        SQL text selecting :data:`SAMPLE_COLUMNS` in order plus ``is_probe``. ``userGenreCounts`` comes out as
        its entries, ``STRUCT(key VARCHAR, value BIGINT)[]`` sorted by genre; :func:`entries_to_map` turns
        them into the MAP column without copying (Spark: ``map_from_entries``; DuckDB's own
        ``map_from_entries`` validates every key and was the slowest step of the whole query).

    Example:
        >>> "RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING" in feature_sql(["Drama"], label_threshold=3.5,
        ...                                                                     recent_n=10)
        True
    """
    lags = ",\n        ".join(
        f"LAG(item_id, {j}) OVER w_pos AS rp{j}" if j else "item_id AS rp0" for j in range(recent_n)
    )
    gcounts = ",\n        ".join(
        f"CAST(SUM(CASE WHEN array_contains(genres, {_quote(g)}) THEN 1 ELSE 0 END) OVER w_pos_cum AS BIGINT) AS g{i}"
        for i, g in enumerate(genres)
    ) or "0 AS g_none"
    recent = f"[{', '.join(f'st.rp{j}' for j in range(recent_n))}]"
    entries = "[" + ", ".join(f"{{'key': {_quote(g)}, 'value': CAST(st.g{i} AS BIGINT)}}"
                              for i, g in enumerate(genres)) + "]"
    # top genres: encode (count, genre index) as one integer count * G + (G - 1 - index), so that sorting plain
    # integers descending gives count desc, then name asc (the vocabulary is sorted); decode by % and //
    width = max(len(genres), 1)
    ranked = "[" + ", ".join(f"st.g{i} * {width} + {width - 1 - i}" for i in range(len(genres))) + "]"
    names = "[" + ", ".join(_quote(g) for g in genres) + "]"
    if not genres:
        entries, ranked, names = ("CAST([] AS STRUCT(key VARCHAR, value BIGINT)[])", "CAST([] AS BIGINT[])",
                                  "CAST([] AS VARCHAR[])")
    user_genres = ",\n    ".join(
        f"CASE WHEN top[{i}] >= {width} THEN {names}[{width} - top[{i}] % {width}] END AS userGenre{i}"
        for i in range(1, 6)
    )
    rated = ",\n    ".join(f"userRecentPositives[{i}] AS userRatedMovie{i}" for i in range(1, 6))
    return f"""
WITH ev AS (
    SELECT e.user_id, e.item_id, e.rating, e.timestamp, e.is_probe,
           CAST(CASE WHEN e.is_probe THEN NULL
                     WHEN e.label IS NOT NULL THEN e.label
                     WHEN e.rating >= {label_threshold!r} THEN 1 ELSE 0 END AS TINYINT) AS label,
           CAST(i.year AS BIGINT) AS year
    FROM events e LEFT JOIN items_src i ON e.item_id = i.item_id
),
win AS (
    SELECT ev.*,
        COUNT(*) OVER w_user AS u_n,
        COUNT(rating) OVER w_user AS u_nr,
        SUM(rating) OVER w_user AS u_s,
        SUM(rating * rating) OVER w_user AS u_ss,
        COUNT(year) OVER w_user AS u_ny,
        SUM(year) OVER w_user AS u_ys,
        SUM(year * year) OVER w_user AS u_yss,
        COALESCE(SUM(label) OVER w_user, 0) AS u_pos,
        MAX(timestamp) OVER w_user AS u_prev,
        COUNT(*) OVER w_movie AS m_n,
        COUNT(rating) OVER w_movie AS m_nr,
        SUM(rating) OVER w_movie AS m_s,
        SUM(rating * rating) OVER w_movie AS m_ss,
        SUM(label) OVER w_movie AS m_pos,
        MIN(timestamp) OVER w_movie AS m_first
    FROM ev
    WINDOW w_user AS (PARTITION BY user_id ORDER BY timestamp
                      RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
           w_movie AS (PARTITION BY item_id ORDER BY timestamp
                       RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
),
pos AS (
    -- the user's positive events, numbered in time order; within one second larger movieId first, so that
    -- the most recent-first list puts the smaller movieId first
    -- (genre lists are joined here and at the end, not carried through the window sorts above)
    SELECT p.user_id, p.item_id, COALESCE(i.genres, CAST([] AS VARCHAR[])) AS genres,
           ROW_NUMBER() OVER (PARTITION BY p.user_id ORDER BY p.timestamp, p.item_id DESC) AS pos_rank
    FROM ev p LEFT JOIN items_src i ON p.item_id = i.item_id
    WHERE p.label = 1
),
state AS (
    -- the user's positive history right after positive number pos_rank: last N items and genre counts
    SELECT user_id, pos_rank,
        {lags},
        {gcounts}
    FROM pos
    WINDOW w_pos AS (PARTITION BY user_id ORDER BY pos_rank),
           w_pos_cum AS (PARTITION BY user_id ORDER BY pos_rank ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
),
joined AS (
    SELECT win.*,
        -- Spark: slice(array(...), 1, least(u_pos, N)); the lags are NULL exactly beyond position u_pos
        CASE WHEN win.u_pos = 0 THEN CAST([] AS BIGINT[])
             ELSE list_slice({recent}, 1, LEAST(win.u_pos, {recent_n})) END AS userRecentPositives,
        -- DuckDB: list_filter with a lambda (Spark: filter(array(...), x -> x.value > 0)) keeps genres seen
        CASE WHEN win.u_pos = 0 THEN CAST([] AS STRUCT(key VARCHAR, value BIGINT)[])
             ELSE list_filter({entries}, lambda x: x.value > 0) END AS genre_entries,
        -- Spark: sort_array(array(...), false)
        CASE WHEN win.u_pos = 0 THEN CAST([] AS BIGINT[])
             ELSE list_sort({ranked}, 'DESC') END AS top
    FROM win LEFT JOIN state st ON win.user_id = st.user_id AND win.u_pos = st.pos_rank
),
final AS (
    SELECT joined.*, COALESCE(i.genres, CAST([] AS VARCHAR[])) AS genres
    FROM joined LEFT JOIN items_src i ON joined.item_id = i.item_id
)
SELECT
    user_id AS userId,
    item_id AS movieId,
    CAST(rating AS DOUBLE) AS rating,
    timestamp,
    label,
    CAST(year AS INTEGER) AS releaseYear,
    genres AS movieGenres,
    genres[1] AS movieGenre1,
    genres[2] AS movieGenre2,
    genres[3] AS movieGenre3,
    m_n AS movieRatingCount,
    CASE WHEN m_nr > 0 THEN m_s / m_nr END AS movieAvgRating,
    {_stddev("m_nr", "m_s", "m_ss")} AS movieRatingStddev,
    u_n AS userRatingCount,
    CASE WHEN u_nr > 0 THEN u_s / u_nr END AS userAvgRating,
    {_stddev("u_nr", "u_s", "u_ss")} AS userRatingStddev,
    CASE WHEN u_ny > 0 THEN CAST(u_ys AS DOUBLE) / u_ny END AS userAvgReleaseYear,
    {_stddev("u_ny", "u_ys", "u_yss")} AS userReleaseYearStddev,
    userRecentPositives,
    {rated},
    {user_genres},
    genre_entries AS userGenreCounts,
    CASE WHEN u_n > 0 THEN CAST(u_pos AS DOUBLE) / u_n END AS userPositiveRate,
    timestamp - u_prev AS userSecondsSincePrevRating,
    CASE WHEN m_n > 0 THEN CAST(m_pos AS DOUBLE) / m_n END AS moviePositiveRate,
    timestamp - m_first AS movieSecondsSinceFirstRating,
    is_probe
FROM final
"""


def entries_to_map(batch: "pa.RecordBatch | pa.Table") -> "pa.RecordBatch | pa.Table":
    """Replace the ``userGenreCounts`` entries column (list of key/value structs) by a MAP column, zero-copy.

    Args:
        batch: a record batch or table from :func:`feature_sql` (any number of rows, B).

    Returns:
        The same rows with ``userGenreCounts`` typed ``map<string, int64>``.

    Example:
        >>> import pyarrow as pa
        >>> t = pa.table({"userGenreCounts": [[{"key": "Drama", "value": 2}]]})
        >>> entries_to_map(t).column("userGenreCounts").type
        MapType(map<string, int64>)
    """
    import pyarrow as pa

    index = batch.schema.get_field_index("userGenreCounts")
    column = batch.column(index)
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    maps = []
    for chunk in chunks:
        if pa.types.is_map(chunk.type):
            maps.append(chunk)
            continue
        entries = chunk.values
        maps.append(pa.MapArray.from_arrays(chunk.offsets, entries.field("key"), entries.field("value")))
    kind = pa.map_(pa.string(), pa.int64())
    if isinstance(column, pa.ChunkedArray):
        return batch.set_column(index, pa.field("userGenreCounts", kind), pa.chunked_array(maps, kind))
    return batch.set_column(index, pa.field("userGenreCounts", kind), maps[0])
