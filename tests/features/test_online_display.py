"""The display data of the online records (SparrowRecSys's Movie and User): per movie the count, mean and ten
highest ratings, per user the bounded recent ratings and the count, mean, highest and lowest over all, checked
against a plain-Python reference on seeded random logs with many ties."""

from __future__ import annotations

import random

import pytest

from deepcrossing.features import online_records
from deepcrossing.features.online import TOP_RATINGS_N

from .conftest import write_dataset


def random_logs(seed: int) -> tuple[list[tuple], list[tuple]]:
    rng = random.Random(seed)
    items = [(i, 1990 + i % 20, ["Drama"] if i % 2 else ["Comedy"]) for i in range(1, 31)]
    seen, ratings = set(), []
    for _ in range(600):
        user, item = rng.randint(1, 25), rng.randint(1, 28)   # movies 29, 30: never rated
        if (user, item) not in seen:
            seen.add((user, item))
            ratings.append((user, item, rng.choice([1.0, 3.5, 4.5, 5.0]), rng.randint(1, 40)))  # many ties
    return ratings, items


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_display_data_matches_a_plain_reference(tmp_path, seed):
    ratings, items = random_logs(seed)
    records = online_records(write_dataset(tmp_path, ratings, items), user_ratings_n=7, max_candidates=5)
    movies = {m["movieId"]: m for m in records.movie_info.to_pylist()}
    assert sorted(movies) == [i for i, _, _ in items]
    for movie_id, movie in movies.items():
        mine = [r for r in ratings if r[1] == movie_id]
        assert movie["ratingNumber"] == len(mine)
        assert movie["averageRating"] == (pytest.approx(sum(r[2] for r in mine) / len(mine)) if mine else None)
        top = sorted(mine, key=lambda r: (-r[2], -r[3], r[0]))[:TOP_RATINGS_N]   # score, then most recent
        assert movie["topRatings"] == [{"userId": u, "rating": s, "timestamp": t} for u, _, s, t in top]
    info = records.user_info.to_pylist()
    assert [u["userId"] for u in info] == records.users.column("userId").to_pylist()
    for user in info:
        mine = [r for r in ratings if r[0] == user["userId"]]
        recent = sorted(mine, key=lambda r: (-r[3], r[1]))[:7]   # as the history: most recent, then movie id
        assert user["ratings"] == [{"movieId": i, "rating": s, "timestamp": t} for _, i, s, t in recent]
        scores = [r[2] for r in mine]
        assert (user["ratingCount"], user["highestRating"], user["lowestRating"]) == (
            len(mine), max(scores), min(scores))
        assert user["averageRating"] == pytest.approx(sum(scores) / len(scores))


def test_user_ratings_can_be_left_out(tmp_path):
    ratings, items = random_logs(3)
    records = online_records(write_dataset(tmp_path, ratings, items), user_ratings_n=0)
    assert all(r == [] for r in records.user_info.column("ratings").to_pylist())
    assert sum(records.user_info.column("ratingCount").to_pylist()) == len(ratings)
