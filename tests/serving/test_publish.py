"""Publishing ml-latest-small: the stored records equal an independent plain-Python computation from the CSV
files (histories, rated sets, candidates, titles) and the features of the sample SQL."""

from __future__ import annotations

import csv
from collections import defaultdict

import pytest

from deepcrossing.data import load_dataset
from deepcrossing.features import FeatureConfig, cold_features, latest_features
from deepcrossing.serving.engine import empty_features
from deepcrossing.serving.publish import publish_dataset, schema_from_json
from deepcrossing.serving.store import open_store


@pytest.fixture(scope="module")
def published(ml_small_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("publish_ml_small")
    dataset = load_dataset(ml_small_dir, workdir=work / "data")
    url = f"sqlite:///{work / 'features.db'}"
    meta = publish_dataset(dataset, url, feature_config=FeatureConfig(), max_candidates=800)
    store = open_store(url)
    users = dict(store.iter_users())
    movies = dict(store.iter_movies())
    candidates = store.get_candidates()
    store.close()
    return {"dataset": dataset, "meta": meta, "users": users, "movies": movies, "candidates": candidates}


def _ratings(ml_small_dir):
    with open(ml_small_dir / "ratings.csv", newline="") as f:
        return [(int(r["userId"]), int(r["movieId"]), float(r["rating"]), int(r["timestamp"]))
                for r in csv.DictReader(f)]


def test_histories_rated_and_candidates_equal_plain_python(published, ml_small_dir):
    ratings = _ratings(ml_small_dir)
    by_user: dict[int, list[tuple[int, float, int]]] = defaultdict(list)
    by_movie: dict[int, list[float]] = defaultdict(list)
    for user, movie, rating, ts in ratings:
        by_user[user].append((movie, rating, ts))
        by_movie[movie].append(rating)
    users = published["users"]
    assert sorted(users) == sorted(by_user) and len(users) == 610
    for user, events in by_user.items():
        record = users[user]
        recent = sorted(events, key=lambda e: (-e[2], e[0]))[:20]
        assert record["history"] == [[m, r, t] for m, r, t in recent], user
        assert record["rated"] == sorted({m for m, _, _ in events}), user
    with open(ml_small_dir / "movies.csv", newline="") as f:
        titles = {int(r["movieId"]): r["title"].strip() for r in csv.DictReader(f)}
    movies = published["movies"]
    assert sorted(movies) == sorted(titles)
    assert all(movies[m]["title"] == titles[m] for m in titles)

    def popularity(movie: int) -> tuple:
        scores = by_movie.get(movie, [])
        mean = sum(scores) / len(scores) if scores else None
        return (-len(scores), mean is None, -(mean or 0.0), movie)

    assert published["candidates"] == sorted(titles, key=popularity)[:800]
    meta = published["meta"]
    assert meta["n_users"] == 610 and meta["n_movies"] == len(titles) and meta["n_candidates"] == 800
    heaviest = sorted(by_user, key=lambda u: (-len({m for m, _, _ in by_user[u]}), u))[:8]
    assert meta["example_users"] == heaviest


def test_features_are_the_sample_sqls_latest_features(published):
    users, movies = latest_features(published["dataset"], FeatureConfig())
    meta = published["meta"]
    assert schema_from_json(meta["user_schema"]).equals(users.schema)
    assert schema_from_json(meta["movie_schema"]).equals(movies.schema)
    for table, records, key in ((users, published["users"], "userId"), (movies, published["movies"], "movieId")):
        for row in table.to_pylist():
            row = {k: dict(v) if isinstance(v, list) and v and isinstance(v[0], tuple) else v for k, v in row.items()}
            assert records[row[key]]["features"] == row


def test_cold_start_in_the_service_is_the_features_definition(published):
    user_schema = schema_from_json(published["meta"]["user_schema"])
    movie_schema = schema_from_json(published["meta"]["movie_schema"])
    assert empty_features(user_schema, "userId", 10**9) == cold_features("user", 10**9)
    assert empty_features(movie_schema, "movieId", 7) == cold_features("movie", 7)
    # a real user with no positive rating has the same empty-history parts as the cold record
    cold = cold_features("user", 0)
    some = next(iter(published["users"].values()))["features"]
    assert set(some) == set(cold)

