"""The item-based CF score of a (user, movie) pair at time t, point-in-time, for the samples and the service.

Definition (every count from ratings strictly before t, so there are no snapshots to choose and nothing of the
future can enter):

* co-occurrence: each positive of a user is paired with the user's previous ``window`` positives (the
  user's positives in time order, same second: larger movieId first, as ``userRecentPositives``); a pair
  (i, j), i != j, counts in both directions at the time of its later positive. ``co(i, j)`` is the number of
  such pairs before t. The window bounds the self-join to ``window`` rows per positive (no O(n^2) per user).
* similarity: ``sim(i, j) = co(i, j) / sqrt(n_i * n_j)``, n_i the number of positives of i before t (the
  cosine of the two movies' positive-user vectors when windows hold whole histories).
* score of movie i for user u: ``sum_j sim(i, j) * r_uj / sum_j sim(i, j)`` over j in the user's last
  ``history`` ratings before t (most recent first, then smaller movieId; a rating of i itself or without a
  value is skipped); NULL when no j has ``co(i, j) > 0``. ``sqrt(n_i)`` cancels, so the weight computed is
  ``co(i, j) / sqrt(n_j)`` (SQL and :func:`itemcf_scores` alike).

Why no similarity snapshots: a per-cutoff neighbour table costs one full similarity matrix per cutoff (a
first try with 30-day cutoffs and top-20 neighbours took 73 s on ml-latest-small on a loaded machine), while
the running counts above cost two window sorts over the pairs and the (sample, history item) lookups, and
are exact at every t. The service computes the same value at ``t_end`` from the user's stored history and
the movies' stored co-occurrence lists (:func:`cooccurrence_sql`, :class:`CoOccurrence`): all neighbours are
kept (no top-M cut), so online equals offline.

SQL fragments here are rendered by :mod:`deepcrossing.features.sql` for DuckDB and Spark alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from deepcrossing.features.dialect import DUCKDB, Dialect


def _running(flag: str, partition: str) -> str:
    # the flagged rows strictly before each row's second: rows sorted by (timestamp, flag) put a second's
    # unflagged lookups before its flagged events, so one running ROWS sum counts exactly the earlier seconds'
    # events at every lookup (one streaming pass; two RANGE frames per many tiny partitions cost 5x more)
    return (f"SUM({flag}) OVER (PARTITION BY {partition} ORDER BY timestamp, {flag} "
            "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)")


def _pick(prefix: str, count: int, index: str) -> str:
    # column prefix{k} for k = the value of `index` (1..count): unpivots lag columns after a cross join
    return "CASE " + index + " " + " ".join(f"WHEN {k} THEN {prefix}{k}" for k in range(1, count + 1)) + " END"


def _lag_pairs(positives: str, window: int, dialect: Dialect) -> str:
    # (item_id, j, timestamp): each positive with each of the user's previous `window` positives (one direction)
    w = int(window)
    lags = ", ".join(f"LAG(item_id, {k}) OVER w_p AS p{k}" for k in range(1, w + 1))
    return f"""(
    SELECT item_id, timestamp, j
    FROM (SELECT l.item_id, l.timestamp, {_pick("l.p", w, "k.o")} AS j
          FROM (SELECT item_id, timestamp, {lags} FROM {positives}
                WINDOW w_p AS (PARTITION BY user_id ORDER BY timestamp, item_id DESC)) l
          CROSS JOIN {dialect.integers(1, w + 1, "o")} k) y
    WHERE j IS NOT NULL AND j <> item_id)"""


def pairs_sql(positives: str, window: int, dialect: Dialect = DUCKDB) -> str:
    """The co-occurrence pair events: ``(i, j, timestamp)``, both directions, at the later positive's time.

    Each positive's previous ``window`` positives come from ``LAG`` columns over the user's positives (no
    self-join: a join on a computed rank let the planner pair every two positives of a user first).

    Args:
        positives: a relation with ``user_id, item_id, timestamp`` (the positive events only).
        window: each positive is paired with the user's previous ``window`` positives.

    Example:
        >>> "LAG(item_id, 3)" in pairs_sql("p", 3)
        True
    """
    return f"""(
    SELECT CASE WHEN d.o = 0 THEN x.item_id ELSE x.j END AS i, CASE WHEN d.o = 0 THEN x.j ELSE x.item_id END AS j,
           x.timestamp
    FROM {_lag_pairs(positives, window, dialect)} x
    CROSS JOIN {dialect.integers(0, 2, "o")} d)"""


_KEY = 4_294_967_296
"""2**32: a pair's key is ``ix_i * 2**32 + ix_j`` over the dense item numbers (below 2**31: fits a BIGINT)."""


def itemcf_ctes(window: int, history: int, dialect: Dialect = DUCKDB) -> str:
    """CTEs (each after a comma) that give ``icf(user_id, item_id, timestamp, icf_score)`` per sample.

    Expects the feature SQL's ``ev`` (events with ``label`` and ``is_probe``). Probe rows never count as
    history or as positives. Movies are renumbered densely (``icf_items``) so that a pair (i, j) is one BIGINT
    key: the co-occurrence stream is partitioned and joined on that one integer instead of two ids.

    Example:
        >>> "icf AS" in itemcf_ctes(10, 20)
        True
    """
    d = dialect
    hist = int(history)
    return f""",
icf_items AS (
    -- dense movie numbers 1..M (M < 2**31), so that a pair (i, j) is the one key i * 2**32 + j
    SELECT item_id, ROW_NUMBER() OVER (ORDER BY item_id) AS ix
    FROM (SELECT DISTINCT item_id FROM ev WHERE item_id IS NOT NULL) u
),
icf_evx AS (
    -- ev with the dense movie numbers (NULL for a NULL movie id: such a row still takes its place in streams)
    SELECT e.user_id, e.item_id, x.ix, e.rating, e.timestamp, e.is_probe, e.label
    FROM ev e LEFT JOIN icf_items x ON e.item_id = x.item_id
),
icf_pairs AS (
    -- each pair event once, as the key of the unordered pair (co is symmetric: both directions count at once)
    SELECT LEAST(q.item_id, q.j) * {_KEY} + GREATEST(q.item_id, q.j) AS pk, q.timestamp
    FROM {_lag_pairs("(SELECT user_id, ix AS item_id, timestamp FROM icf_evx WHERE label = 1 AND NOT is_probe)",
                     window, d)} q
),
icf_keys AS (SELECT pk, MIN(timestamp) AS first_t FROM icf_pairs GROUP BY pk),
icf_ev AS (
    -- every row of a user, numbered r = 1, 2, ... in the order real ratings by time (same second: larger
    -- movieId first), then probes; u_n = the user's real ratings before t, so rows r = u_n, u_n - 1, ... are
    -- the user's ratings before t, most recent first (same second: smaller movieId first)
    SELECT user_id, item_id, ix, rating, timestamp, is_probe,
           ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY is_probe, timestamp, item_id DESC) AS r,
           COALESCE(COUNT(CASE WHEN NOT is_probe THEN 1 END) OVER (PARTITION BY user_id ORDER BY timestamp
               RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS u_n
    FROM icf_evx WHERE user_id IS NOT NULL
),
icf_look AS (
    -- one row per (sample, rated movie j among the user's last `history` ratings before t) with a pair (i, j)
    -- before t: the rows r = u_n - o, o < history, found by an equi-join
    SELECT x.user_id, x.item_id, x.timestamp, x.j, x.rating, x.pk
    FROM (SELECT w.user_id, w.item_id, w.timestamp, h.ix AS j, h.rating,
                 LEAST(w.ix, h.ix) * {_KEY} + GREATEST(w.ix, h.ix) AS pk
          FROM (SELECT w0.user_id, w0.item_id, w0.ix, w0.timestamp, w0.u_n - k.o AS hr
                FROM icf_ev w0 CROSS JOIN {d.integers(0, hist, "o")} k
                WHERE w0.u_n - k.o >= 1 AND w0.ix IS NOT NULL) w
          JOIN icf_ev h ON h.user_id = w.user_id AND h.r = w.hr
          WHERE NOT h.is_probe AND h.rating IS NOT NULL AND h.ix <> w.ix) x
    JOIN icf_keys ks ON ks.pk = x.pk
    WHERE ks.first_t < x.timestamp
),
icf_co AS (
    -- co(i, j) before t: pair events and lookups in one stream per pair key
    SELECT * FROM (
        SELECT user_id, item_id, timestamp, j, rating, is_pair, {_running("is_pair", "pk")} AS co
        FROM (SELECT CAST(NULL AS BIGINT) AS user_id, CAST(NULL AS BIGINT) AS item_id, timestamp,
                     CAST(NULL AS BIGINT) AS j, CAST(NULL AS DOUBLE) AS rating, pk, 1 AS is_pair FROM icf_pairs
              UNION ALL
              SELECT user_id, item_id, timestamp, j, rating, pk, 0 AS is_pair FROM icf_look) s
    ) c WHERE is_pair = 0 AND co > 0
),
icf_n AS (
    -- n_j before t: the positives of j and the lookups in one stream per movie j
    SELECT * FROM (
        SELECT user_id, item_id, timestamp, rating, co, is_pos, {_running("is_pos", "j")} AS nj
        FROM (SELECT CAST(NULL AS BIGINT) AS user_id, CAST(NULL AS BIGINT) AS item_id, timestamp, ix AS j,
                     CAST(NULL AS DOUBLE) AS rating, CAST(NULL AS BIGINT) AS co, 1 AS is_pos
              FROM icf_evx WHERE label = 1 AND NOT is_probe
              UNION ALL
              SELECT user_id, item_id, timestamp, j, rating, co, 0 AS is_pos FROM icf_co) s
    ) n WHERE is_pos = 0
),
icf AS (
    SELECT user_id, item_id, timestamp,
           SUM(co / SQRT(CAST(nj AS DOUBLE)) * rating) / SUM(co / SQRT(CAST(nj AS DOUBLE))) AS icf_score
    FROM icf_n GROUP BY user_id, item_id, timestamp
)"""


COOCCURRENCE_SCHEMA = pa.schema([("movieId", pa.int64()), ("positives", pa.int64()),
                                 ("neighbours", pa.list_(pa.int64())), ("co", pa.list_(pa.int64()))])
"""The columns of :func:`cooccurrence_sql` (``OnlineRecords.cooccurrence``)."""


def cooccurrence_sql(positives: str, window: int) -> str:
    """Every movie's co-occurrence list over all of ``positives`` (DuckDB): what the service stores.

    Returns:
        SQL selecting ``movieId``, ``positives`` (n_i), ``neighbours`` (``list<int64>``, sorted) and ``co``
        (``list<int64>``, aligned), one row per movie with at least one positive, sorted by ``movieId``.
    """
    return f"""
WITH pairs AS {pairs_sql(positives, window)},
co AS (SELECT i, j, COUNT(*) AS co FROM pairs GROUP BY i, j),
lists AS (SELECT i, list(j ORDER BY j) AS neighbours, list(co ORDER BY j) AS co FROM co GROUP BY i),
n AS (SELECT item_id, COUNT(*) AS n FROM {positives} GROUP BY item_id)
SELECT n.item_id AS movieId, n.n AS positives,
       COALESCE(lists.neighbours, CAST([] AS BIGINT[])) AS neighbours, COALESCE(lists.co, CAST([] AS BIGINT[])) AS co
FROM n LEFT JOIN lists ON lists.i = n.item_id ORDER BY movieId"""


@dataclass(frozen=True)
class CoOccurrence:
    """Every movie's co-occurrence list as flat numpy arrays (CSR), from :func:`cooccurrence_sql`'s table.

    Attributes:
        movies: (M,) sorted movie ids with at least one positive.
        positives: (M,) n_i of each.
        offsets: (M + 1,) row ``k``'s neighbours are ``neighbours[offsets[k]:offsets[k + 1]]`` (sorted).
        neighbours, co: (E,) neighbour ids and co-occurrence counts.
    """

    movies: np.ndarray
    positives: np.ndarray
    offsets: np.ndarray
    neighbours: np.ndarray
    co: np.ndarray

    @classmethod
    def from_table(cls, table: pa.Table) -> CoOccurrence:
        """From the table of :func:`cooccurrence_sql` (``OnlineRecords.cooccurrence``)."""
        table = table.combine_chunks()
        lists = table.column("neighbours").chunk(0) if table.num_rows else pa.array([], pa.list_(pa.int64()))
        co = table.column("co").chunk(0) if table.num_rows else pa.array([], pa.list_(pa.int64()))
        offsets = np.asarray(lists.offsets, np.int64)
        base = offsets[0] if len(offsets) else 0
        return cls(movies=np.asarray(table.column("movieId"), np.int64),
                   positives=np.asarray(table.column("positives"), np.int64),
                   offsets=offsets - base,
                   neighbours=np.asarray(lists.flatten(), np.int64),
                   co=np.asarray(co.flatten(), np.int64))


def itemcf_scores(history_movies: np.ndarray, history_ratings: np.ndarray, candidates: np.ndarray,
                  table: CoOccurrence, history: int) -> np.ndarray:
    """The item-CF score of each candidate for one user, as the sample SQL computes it at ``t_end``.

    Args:
        history_movies: (L,) the user's rated movies, most recent first, then smaller movieId (the stored
            ``history``); only the first ``history`` count.
        history_ratings: (L,) their ratings (NaN: no value, skipped).
        candidates: (C,) movie ids.
        table: the co-occurrence lists at ``t_end``.
        history: the ``itemcf_history`` of the samples' FeatureConfig.

    Returns:
        (C,) float64 scores, NaN where the candidate co-occurs with none of the history (SQL NULL).

    Example:
        >>> t = CoOccurrence(np.array([1, 2]), np.array([1, 4]), np.array([0, 1, 2]), np.array([2, 1]),
        ...                  np.array([1, 1]))
        >>> itemcf_scores(np.array([2]), np.array([4.0]), np.array([1, 2, 3]), t, 20).tolist()
        [4.0, nan, nan]
    """
    return neighbour_scores(user_neighbours(history_movies, history_ratings, table, history), candidates)


@dataclass(frozen=True)
class UserNeighbours:
    """One user's item-CF sums over every neighbour of the rated history (what :func:`itemcf_scores` sums per
    candidate, computed once per user and store version; the service caches it with the user's partial).

    Attributes:
        ids: (K,) sorted distinct movies co-occurring with at least one scored history movie.
        num, den: (K,) ``sum_j co(i, j) / sqrt(n_j) * r_uj`` and ``sum_j co(i, j) / sqrt(n_j)`` of each.
    """

    ids: np.ndarray
    num: np.ndarray
    den: np.ndarray


def user_neighbours(history_movies: np.ndarray, history_ratings: np.ndarray, table: CoOccurrence,
                    history: int) -> UserNeighbours:
    """The sums of :class:`UserNeighbours` over the user's first ``history`` ratings (NaN ratings and movies
    without a positive skipped): one gather of their neighbour rows, no loop (O(sum of their row lengths)).

    The sums run in history order per neighbour (``np.bincount`` adds in array order), so the scores are
    bit-equal to a loop over the history.

    Example:
        >>> t = CoOccurrence(np.array([1, 2]), np.array([1, 4]), np.array([0, 1, 2]), np.array([2, 1]),
        ...                  np.array([1, 1]))
        >>> u = user_neighbours(np.array([2, 1]), np.array([4.0, np.nan]), t, 20)
        >>> u.ids.tolist(), u.num.tolist(), u.den.tolist()
        ([1], [2.0], [0.5])
    """
    movies = np.asarray(history_movies, np.int64)[:history]
    ratings = np.asarray(history_ratings, np.float64)[:history]
    keep = ~np.isnan(ratings)
    movies, ratings = movies[keep], ratings[keep]
    rows = np.minimum(np.searchsorted(table.movies, movies), max(len(table.movies) - 1, 0))
    known = (table.movies[rows] == movies) if len(table.movies) else np.zeros(len(movies), bool)
    rows, ratings = rows[known], ratings[known]
    lo, lengths = table.offsets[rows], table.offsets[rows + 1] - table.offsets[rows]   # (L,) each
    starts = np.cumsum(lengths) - lengths
    at = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(starts - lo, lengths)   # (E_u,) edge positions
    weight = table.co[at] / np.repeat(np.sqrt(table.positives[rows].astype(np.float64)), lengths)
    ids, inverse = np.unique(table.neighbours[at], return_inverse=True)
    return UserNeighbours(ids=ids, num=np.bincount(inverse, weight * np.repeat(ratings, lengths), len(ids)),
                          den=np.bincount(inverse, weight, len(ids)))


def neighbour_scores(user: UserNeighbours, candidates: np.ndarray) -> np.ndarray:
    """(C,) float64 ``num / den`` of each candidate, NaN where it is no neighbour (SQL NULL): the per-request
    part of :func:`itemcf_scores` (one ``searchsorted`` of the candidates).

    Example:
        >>> u = UserNeighbours(np.array([3, 7]), np.array([8.0, 3.0]), np.array([2.0, 1.0]))
        >>> neighbour_scores(u, np.array([7, 5, 3])).tolist()
        [3.0, nan, 4.0]
    """
    candidates = np.asarray(candidates, np.int64)
    out = np.full(len(candidates), np.nan)
    if len(user.ids) == 0:
        return out
    at = np.minimum(np.searchsorted(user.ids, candidates), len(user.ids) - 1)
    den = user.den[at]
    np.divide(user.num[at], den, out=out, where=(user.ids[at] == candidates) & (den > 0))
    return out
