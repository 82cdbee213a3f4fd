"""Online records: one column definition (side, cold value), cold start equals the SQL's empty history, and the
histories / rated sets / candidates by hand."""

from __future__ import annotations

import pytest

from deepcrossing.errors import InputError
from deepcrossing.features import (
    COLUMNS,
    SAMPLE_COLUMNS,
    FeatureConfig,
    cold_features,
    compute_samples,
    latest_features,
    movie_side_columns,
    online_records,
    user_side_columns,
)
from deepcrossing.features.columns import KEYS, ONLINE_USER_SIDE, SIDES, side_of

from .conftest import write_dataset

ITEMS = [(1, 1995, ["Comedy", "Drama"]), (2, 2000, ["Action"]), (3, None, []), (4, 1980, ["Drama", "War"]),
         (5, 2010, ["Action", "Comedy", "Drama", "Sci-Fi"])]
RATINGS = [(1, 1, 4.0, 10), (1, 2, 2.0, 20), (1, 4, 5.0, 20), (1, 5, 4.5, 30), (2, 5, 3.0, 30),
           (2, 1, 1.0, 40), (3, 2, 5.0, 41), (1, 3, 3.5, 41)]


def _plain(features: dict) -> dict:
    """A sample row's MAP columns (Arrow gives (key, value) pairs) as dicts, as the cold record has them."""
    return {k: dict(v) if COLUMNS[k].type.startswith("MAP") else v for k, v in features.items()}


def test_every_column_has_a_side_and_a_cold_value_of_its_type():
    assert list(COLUMNS) == list(SAMPLE_COLUMNS)
    for name, column in COLUMNS.items():
        assert column.side in SIDES, name
        assert SAMPLE_COLUMNS[name] == (column.type, column.meaning)
        if name in KEYS.values() or column.side == "event":
            assert column.cold is None, name
        elif column.type.startswith("MAP"):
            assert column.cold == {}, name
        elif column.type.endswith("[]"):
            assert column.cold == [], name
        elif name.endswith("Count"):
            assert column.cold == 0 and column.type == "BIGINT", name
        else:
            assert column.cold is None, name
    # the sides partition the columns; each side's key comes first
    user, movie = user_side_columns(), movie_side_columns()
    events = tuple(n for n, c in COLUMNS.items() if c.side == "event")
    assert user[0] == "userId" and movie[0] == "movieId" and events == ("rating", "timestamp", "label")
    pairs = tuple(n for n, c in COLUMNS.items() if c.side == "pair")
    # user x movie: samples only, not online records
    assert pairs == ("userGenreCosine", "userGenreAvgRating", "userItemCFScore")
    assert sorted(user + movie + events + pairs) == sorted(COLUMNS)
    assert all(n.startswith("user") for n in user) and "releaseYear" in movie
    assert side_of("userGenreCounts") == "user"
    with pytest.raises(KeyError, match="nope"):
        side_of("nope")
    with pytest.raises(ValueError, match="side"):
        cold_features("event")  # type: ignore[arg-type]


def test_cold_records_are_fresh_copies():
    a, b = cold_features("user", 1), cold_features("user", 2)
    a["userRecentPositives"].append(9)
    a["userGenreCounts"]["Drama"] = 1
    assert b["userRecentPositives"] == [] and b["userGenreCounts"] == {} and COLUMNS["userGenreCounts"].cold == {}
    assert list(a) == list(ONLINE_USER_SIDE) and (a["userId"], b["userId"]) == (1, 2)
    assert a["userGenreRatingSums"] == {} and a["userGenreRatingCounts"] == {}
    assert cold_features("movie")["movieId"] is None


def test_cold_start_equals_the_sample_sql_on_a_first_rating(tmp_path):
    # movie 9 is not in the items file: its first rating is exactly an unknown movie with no history
    ratings = RATINGS + [(4, 9, 4.0, 50), (5, 9, 2.0, 60)]
    samples = compute_samples(write_dataset(tmp_path, ratings, ITEMS), FeatureConfig())
    rows = samples.to_pylist()
    first_of_user: dict[int, dict] = {}
    first_of_movie: dict[int, dict] = {}
    for row in rows:  # sorted by time: the first row seen is the first rating
        first_of_user.setdefault(row["userId"], row)
        first_of_movie.setdefault(row["movieId"], row)
    assert sorted(first_of_user) == [1, 2, 3, 4, 5]
    for uid, row in first_of_user.items():
        cold = cold_features("user", uid)
        assert _plain({c: row[c] for c in user_side_columns()}) == {c: cold[c] for c in user_side_columns()}
    unknown = first_of_movie[9]
    assert _plain({c: unknown[c] for c in movie_side_columns()}) == cold_features("movie", 9)
    # a later rating is not cold: the test can fail
    later = [r for r in rows if r["userId"] == 1][1]
    assert _plain({c: later[c] for c in user_side_columns()}) != cold_features("user", 1)


def test_online_records_by_hand(tmp_path):
    ds = write_dataset(tmp_path, RATINGS, ITEMS)
    records = online_records(ds, FeatureConfig(), history_n=3, max_candidates=4)
    users, movies = latest_features(ds, FeatureConfig())
    assert records.users.equals(users) and records.movies.equals(movies)
    assert records.t_end == 42
    hist = {r["userId"]: r for r in records.histories.to_pylist()}
    assert records.histories.column("userId").to_pylist() == [1, 2, 3]
    # most recent first; within one second the smaller movie id first; at most history_n
    assert [(h["movieId"], h["rating"], h["timestamp"]) for h in hist[1]["history"]] == [
        (3, 3.5, 41), (5, 4.5, 30), (2, 2.0, 20)]
    assert hist[1]["rated"] == [1, 2, 3, 4, 5] and hist[2]["rated"] == [1, 5] and hist[3]["rated"] == [2]
    assert [h["movieId"] for h in hist[2]["history"]] == [1, 5]
    # popularity: ratings desc (1: 2, 2: 2, 5: 2, 3: 1, 4: 1), then mean rating desc, then id
    # means: 1 -> 2.5, 2 -> 3.5, 5 -> 3.75, 3 -> 3.5, 4 -> 5.0
    assert records.candidates == [5, 2, 1, 4]
    assert online_records(ds, history_n=0, max_candidates=10).candidates == [5, 2, 1, 4, 3]
    info = records.movie_info.to_pylist()
    assert [m["movieId"] for m in info] == [1, 2, 3, 4, 5] == records.movies.column("movieId").to_pylist()
    assert info[0] == {"movieId": 1, "title": "Movie 1", "year": 1995, "genres": ["Comedy", "Drama"],
                       "imdbId": None, "tmdbId": None, "ratingNumber": 2, "averageRating": 2.5,
                       "topRatings": [{"userId": 1, "rating": 4.0, "timestamp": 10},
                                      {"userId": 2, "rating": 1.0, "timestamp": 40}]}
    assert records.cold_user == cold_features("user") and records.cold_movie == cold_features("movie")


def test_online_records_without_history(tmp_path):
    records = online_records(write_dataset(tmp_path, RATINGS, ITEMS), history_n=0, max_candidates=1)
    assert all(h == [] for h in records.histories.column("history").to_pylist())
    assert records.histories.column("rated").to_pylist()[0] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("kwargs, field", [({"history_n": -1}, "history_n"), ({"max_candidates": 0}, "max_candidates"),
                                           ({"max_candidates": True}, "max_candidates"),
                                           ({"history_n": 2.5}, "history_n"),
                                           ({"user_ratings_n": -1}, "user_ratings_n")])
def test_online_records_refuse_bad_sizes(tmp_path, kwargs, field):
    with pytest.raises(InputError, match=field) as err:
        online_records(write_dataset(tmp_path, RATINGS, ITEMS), **kwargs)
    assert err.value.field == field


@pytest.mark.parametrize("spec", ["movielens.toml", "sparrow.toml"])
def test_shipped_specs_agree_with_the_column_sides(spec):
    """A spec feature's side (the service splits the first layer by it) is its sample column's side."""
    import tomllib
    from pathlib import Path

    import deepcrossing

    path = Path(deepcrossing.__file__).parent / "specs" / spec
    features = tomllib.loads(path.read_text())["features"]
    assert features
    for feature in features:
        column = COLUMNS.get(feature["name"])
        if column is None:
            continue  # not a sample column (a derived or context feature)
        expected = {"user": "user", "movie": "item", "event": "context", "pair": "context"}[column.side]
        assert feature.get("side", "context") == expected, (spec, feature["name"])


def test_trending_half_life_weighs_recent_high_ratings(tmp_path):
    """``trending_sql``'s decayed score, by hand: each rating weighs rating * 2^(-age / half-life) at t_end."""
    ds = write_dataset(tmp_path, RATINGS, ITEMS)
    plain = online_records(ds, history_n=0, max_candidates=5, trending_days=1)
    assert plain.trending == [5, 2, 1, 4, 3]                  # the count (= popularity: every rating in the window)
    decayed = online_records(ds, history_n=0, max_candidates=5, trending_days=1, trending_half_life_days=20 / 86400)
    score: dict[int, float] = {}
    for _, movie, rating, t in RATINGS:                       # t_end = 42; half-life 20 s
        score[movie] = score.get(movie, 0.0) + rating * 2 ** (-(42 - t) / 20)
    assert decayed.trending == sorted(score, key=lambda m: -score[m]) == [2, 5, 3, 4, 1]
    for bad in (0, -1.0):
        with pytest.raises(InputError, match="half-life") as err:
            online_records(ds, trending_days=1, trending_half_life_days=bad)
        assert err.value.field == "trending_half_life_days"
