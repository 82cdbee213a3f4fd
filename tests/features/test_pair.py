"""The served pair columns (features.pair from the online records) equal the sample SQL's at t_end.

A real sample of (user, movie) at ``t_end`` must carry exactly what the service computes for that user and
candidate from the online user record and the movie's genres: probe ratings at ``t_end`` are added to the
log, the sample SQL run on it, and each probe row's pair columns compared with :func:`pair_features`.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deepcrossing.data.schema import Dataset
from deepcrossing.features import FeatureConfig, cold_features, compute_samples, online_records
from deepcrossing.features.columns import ONLINE_USER_SIDE
from deepcrossing.features.pair import GENRE_PAIR, genre_occurrences, pair_features

from .conftest import write_dataset

# movie 3 has no genres, movie 6 lists Drama twice, movie 7 is rated but missing from the items file
ITEMS = [(1, 1995, ["Comedy", "Drama"]), (2, 2000, ["Action"]), (3, None, []), (4, 1980, ["Drama", "War"]),
         (5, 2010, ["Action", "Comedy", "Drama", "Sci-Fi"]), (6, 2001, ["Drama", "Drama", "Horror"])]
RATINGS = [(1, 1, 4.0, 10), (1, 2, 2.0, 20), (1, 4, 5.0, 20), (1, 5, 4.5, 30), (2, 5, 3.0, 30),
           (2, 1, 1.0, 40), (3, 2, 5.0, 41), (1, 3, 3.5, 41), (1, 6, 3.3, 35), (4, 3, 2.0, 12),
           (4, 7, 5.0, 13), (2, 6, 0.7, 39)]


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


def _served(records, users: list[int], movies: list[int]) -> dict[tuple[int, int], dict]:
    """The pair columns the service computes: user record x candidates' genres (store-version vocabulary)."""
    movie_rows = records.movies
    names = sorted({g for gs in movie_rows.column("movieGenres").to_pylist() for g in gs})
    row_of = {m: i for i, m in enumerate(movie_rows.column("movieId").to_pylist())}
    occ_all = genre_occurrences(movie_rows.column("movieGenres"), pa.array(names, pa.string()))
    occ = np.stack([occ_all[row_of[m]] if m in row_of else np.zeros(len(names), np.int64) for m in movies])
    by_user = {r["userId"]: r for r in records.users.to_pylist()}
    out = {}
    for user in users:
        record = by_user.get(user, cold_features("user", user))
        values = pair_features(record, occ, names)
        for j, movie in enumerate(movies):
            out[(user, movie)] = {c: values[c][j].as_py() for c in GENRE_PAIR}
    return out


def _check(tmp_path, ratings, items, users, movies, t_end=None):
    ds = write_dataset(tmp_path / "log", ratings, items)
    records = online_records(ds, FeatureConfig(), history_n=0, max_candidates=1)
    assert records.users.column_names == list(ONLINE_USER_SIDE)
    t_end = records.t_end
    probes = [(u, m, 3.0, t_end) for u in users for m in movies]
    samples = compute_samples(write_dataset(tmp_path / "probed", ratings + probes, items), FeatureConfig())
    sampled = {(r["userId"], r["movieId"]): r for r in samples.to_pylist() if r["timestamp"] == t_end}
    served = _served(records, users, movies)
    nulls = 0
    for key, want in served.items():
        for column in GENRE_PAIR:
            assert _same(sampled[key][column], want[column]), (key, column, sampled[key][column], want[column])
            nulls += want[column] is None
    return served, nulls


def test_served_pair_columns_equal_the_sample_sql_by_hand(tmp_path):
    # user 9 has no history (cold), user 4 only rated a genre-less and an unknown movie, movie 8 is unknown
    served, nulls = _check(tmp_path, RATINGS, ITEMS, [1, 2, 3, 4, 9], [1, 2, 3, 4, 5, 6, 7, 8])
    assert nulls > 0
    # by hand: user 1 rated Drama movies 1 (4.0), 4 (5.0), 5 (4.5) and 6 (3.3, Drama listed twice)
    drama = (4.0 + 5.0 + 4.5 + 2 * 3.3) / 5
    assert served[(1, 4)]["userGenreAvgRating"] == (drama * 5 + 5.0) / 6  # Drama + War (movie 4: 5.0)
    assert served[(9, 1)] == {"userGenreCosine": None, "userGenreAvgRating": None}
    assert served[(1, 3)] == {"userGenreCosine": None, "userGenreAvgRating": None}   # no genres
    assert served[(4, 1)]["userGenreAvgRating"] is None


def test_served_pair_columns_equal_the_sample_sql_on_movielens(ml_small_dataset, tmp_path):
    ratings_table = pq.read_table(ml_small_dataset.ratings)
    items_table = pq.read_table(ml_small_dataset.items)
    rng = np.random.default_rng(0)
    users = sorted(rng.choice(np.unique(ratings_table.column("user_id").to_numpy()), 25, replace=False).tolist())
    movies = sorted(rng.choice(items_table.column("item_id").to_numpy(), 30, replace=False).tolist())
    no_genre = [m for m, g in zip(items_table.column("item_id").to_pylist(),
                                  items_table.column("genres").to_pylist(), strict=True) if not g]
    movies += no_genre[:2] + [10**9]
    users.append(10**9)
    ratings = list(zip(*(ratings_table.column(c).to_pylist() for c in ("user_id", "item_id", "rating", "timestamp")),
                       strict=True))
    items = list(zip(*(items_table.column(c).to_pylist() for c in ("item_id", "year", "genres")), strict=True))
    served, nulls = _check(tmp_path, ratings, items, users, movies)
    assert nulls > 0 and len(served) == len(users) * len(movies)
    assert isinstance(ml_small_dataset, Dataset)
