"""The SparrowRecSys-compatible routes: exactly SparrowRecSys's Jackson shapes (fields, order and types), the
values against the data and plain references, and what unknown ids and bad parameters get (never a 500).

Real parts: a small model and a SQLite store published from synthetic logs with a links.csv (built like
conftest.py's), and ml-latest-small published once for the values people know (Toy Story's IMDb id)."""

from __future__ import annotations

import re
import shutil

import duckdb
import numpy as np
import pytest
from fastapi.testclient import TestClient

from deepcrossing.serving.app import create_app
from deepcrossing.serving.compat import display_title, movie_json, user_json
from deepcrossing.serving.compat_schemas import CompatMovie, CompatUser
from deepcrossing.serving.engine import Engine
from deepcrossing.serving.settings import ServingSettings


def _query(sql: str) -> duckdb.DuckDBPyConnection:
    """A query on a connection of its own: a fetchone() on duckdb's shared default connection left an unfinished
    result there, and every later duckdb.sql() in the same process (tests/data) failed with ResourceInUseException."""
    return duckdb.connect().execute(sql)


MOVIE_KEYS = ["movieId", "title", "releaseYear", "imdbId", "tmdbId", "genres", "ratingNumber", "averageRating",
              "topRatings"]
USER_KEYS = ["userId", "averageRating", "highestRating", "lowestRating", "ratingCount", "ratings"]
RATING_KEYS = ["movieId", "userId", "score", "timestamp"]


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_ratings(ratings: list, **fixed: int) -> None:
    for wrapped in ratings:
        assert list(wrapped) == ["rating"]
        rating = wrapped["rating"]
        assert list(rating) == RATING_KEYS
        assert is_int(rating["movieId"]) and is_int(rating["userId"]) and is_int(rating["timestamp"])
        assert isinstance(rating["score"], float)
        assert all(rating[k] == v for k, v in fixed.items())


def check_movie(movie: dict) -> None:
    """Exactly SparrowRecSys's Movie: the fields in Jackson's order, each of its JSON type."""
    assert list(movie) == MOVIE_KEYS
    assert is_int(movie["movieId"]) and is_int(movie["releaseYear"]) and is_int(movie["ratingNumber"])
    assert isinstance(movie["title"], str) and not re.search(r"\(\d{4}\)\s*$", movie["title"])
    assert all(movie[k] is None or isinstance(movie[k], str) for k in ("imdbId", "tmdbId"))
    assert isinstance(movie["genres"], list) and all(isinstance(g, str) for g in movie["genres"])
    assert isinstance(movie["averageRating"], float)
    assert len(movie["topRatings"]) <= min(10, movie["ratingNumber"])
    check_ratings(movie["topRatings"], movieId=movie["movieId"])
    scores = [(r["rating"]["score"], r["rating"]["timestamp"]) for r in movie["topRatings"]]
    assert scores == sorted(scores, reverse=True)   # highest first, then most recent
    CompatMovie.model_validate(movie)


def check_user(user: dict) -> None:
    assert list(user) == USER_KEYS
    assert is_int(user["userId"]) and is_int(user["ratingCount"])
    assert all(isinstance(user[k], float) for k in ("averageRating", "highestRating", "lowestRating"))
    check_ratings(user["ratings"], userId=user["userId"])
    CompatUser.model_validate(user)


@pytest.fixture(scope="module")
def linked(synth_data, tmp_path_factory):
    """The synthetic logs with a links.csv (every fifth movie without a tmdbId), published to SQLite."""
    from deepcrossing.data import load_dataset
    from deepcrossing.serving.publish import publish_dataset

    root = tmp_path_factory.mktemp("compat")
    shutil.copytree(synth_data["raw"], root / "raw")
    ids = [r[0] for r in _query(f"SELECT movieId FROM read_csv('{root / 'raw' / 'movies.csv'}')").fetchall()]
    (root / "raw" / "links.csv").write_text("movieId,imdbId,tmdbId\n" + "".join(
        f"{m},{m:07d},{m * 3 if m % 5 else ''}\n" for m in ids))
    dataset = load_dataset(root / "raw", workdir=root / "work")
    url = f"sqlite:///{root / 'features.db'}"
    publish_dataset(dataset, url)
    return {"dataset": dataset, "url": url}


@pytest.fixture(scope="module")
def client(models, linked):
    app = create_app(ServingSettings(models["root"] / "m0", linked["url"]))
    with TestClient(app, raise_server_exceptions=True) as c:
        yield c


@pytest.fixture(scope="module")
def engine(models, linked):
    eng = Engine.open(models["root"] / "m0", linked["url"])
    yield eng
    eng.store.close()


@pytest.fixture(scope="module")
def truth(linked):
    """Per movie and per user, what the compat answers must say, straight from the normalized files."""
    ds = linked["dataset"]
    con = duckdb.connect()
    movies = {r[0]: r[1:] for r in con.execute(
        f"SELECT i.item_id, i.title, i.year, i.imdb_id, i.tmdb_id, count(r.rating), avg(r.rating) "
        f"FROM read_parquet('{ds.items}') i LEFT JOIN read_parquet('{ds.ratings}') r USING (item_id) "
        "GROUP BY ALL").fetchall()}
    users = {r[0]: r[1:] for r in con.execute(
        f"SELECT user_id, count(*), avg(rating), max(rating), min(rating) FROM read_parquet('{ds.ratings}') "
        "GROUP BY user_id").fetchall()}
    return {"movies": movies, "users": users}


def get(client: TestClient, url: str, status: int = 200):
    r = client.get(url)
    assert r.status_code == status, (url, r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


# ------------------------------------------------------------------ shapes and values


def test_getmovie_shape_and_values(client, truth):
    for movie_id in list(truth["movies"])[:40]:
        movie = get(client, f"/getmovie?id={movie_id}")
        check_movie(movie)
        title, year, imdb, tmdb, count, mean = truth["movies"][movie_id]
        assert movie["movieId"] == movie_id and movie["title"] == display_title(title) and title.startswith(
            movie["title"])
        assert movie["releaseYear"] == (year if year is not None else -1)
        assert (movie["imdbId"], movie["tmdbId"]) == (f"{movie_id:07d}", str(movie_id * 3) if movie_id % 5 else None)
        assert (imdb, tmdb) == (movie["imdbId"], movie["tmdbId"])
        assert movie["ratingNumber"] == count
        assert movie["averageRating"] == pytest.approx(mean if count else 0.0)


def test_top_ratings_are_the_highest_then_most_recent(client, linked):
    ds = linked["dataset"]
    movie_id, = _query(f"SELECT item_id FROM read_parquet('{ds.ratings}') GROUP BY item_id "
                               "ORDER BY count(*) DESC, item_id LIMIT 1").fetchone()
    expected = _query(f"SELECT user_id, rating, timestamp FROM read_parquet('{ds.ratings}') WHERE item_id = "
                          f"{movie_id} ORDER BY rating DESC, timestamp DESC, user_id LIMIT 10").fetchall()
    movie = get(client, f"/getmovie?id={movie_id}")
    assert [(r["rating"]["userId"], r["rating"]["score"], r["rating"]["timestamp"]) for r in movie["topRatings"]] \
        == expected and len(expected) == 10


def test_getuser_shape_and_values(client, truth, linked):
    ds = linked["dataset"]
    for user_id in list(truth["users"])[:25]:
        user = get(client, f"/getuser?id={user_id}")
        check_user(user)
        count, mean, high, low = truth["users"][user_id]
        assert (user["userId"], user["ratingCount"], user["highestRating"], user["lowestRating"]) == (
            user_id, count, high, low)
        assert user["averageRating"] == pytest.approx(mean)
        recent = _query(f"SELECT item_id, rating, timestamp FROM read_parquet('{ds.ratings}') WHERE user_id = "
                            f"{user_id} ORDER BY timestamp DESC, item_id LIMIT 1000").fetchall()
        assert [(r["rating"]["movieId"], r["rating"]["score"], r["rating"]["timestamp"])
                for r in user["ratings"]] == recent


@pytest.mark.parametrize("sortby", ["rating", "releaseYear"])
def test_getrecommendation_sorts_the_genre(client, truth, sortby):
    catalog = list(client.app.state.compat.catalog().movies.values())   # what /getmovie answers, per movie
    assert sorted(m["movieId"] for m in catalog) == sorted(truth["movies"])
    genre = "Drama"
    members = [m for m in catalog if genre in m["genres"]]
    assert len(members) > 7
    key = "averageRating" if sortby == "rating" else "releaseYear"
    expected = sorted(members, key=lambda m: (-m[key], m["movieId"]))[:7]
    answer = get(client, f"/getrecommendation?genre={genre}&size=7&sortby={sortby}")
    for movie in answer:
        check_movie(movie)
    assert answer == expected and len(answer) == 7
    default = get(client, f"/getrecommendation?genre={genre}&size=7")
    assert default == get(client, f"/getrecommendation?genre={genre}&size=7&sortby=rating")
    assert len(get(client, f"/getrecommendation?genre={genre}&size=1000")) == len(members)


def test_getrecforyou_emb_is_the_mean_of_recent_positives(client, engine):
    snap = engine.state.snapshot
    users = [u for u in engine.store.get_users(list(range(1, 40))) if u is not None]
    checked = 0
    for record in users:
        user_id = record["features"]["userId"]
        positives = [m for m in record["features"]["userRecentPositives"] if m in snap.row_of]
        answer = get(client, f"/getrecforyou?id={user_id}&size=12&model=emb")
        for movie in answer:
            check_movie(movie)
        ids = [m["movieId"] for m in answer]
        assert not set(ids) & set(record["rated"])
        pool = [int(snap.movie_ids[r]) for r in snap.candidate_rows if int(snap.movie_ids[r]) not in record["rated"]]
        if not positives:
            assert ids == pool[:12]
            continue
        vectors = snap.unit.numpy()
        user = vectors[[snap.row_of[m] for m in positives]].mean(axis=0)
        user /= np.linalg.norm(user)
        cosine = {m: float(vectors[snap.row_of[m]] @ user) for m in pool}
        expected = sorted(pool, key=lambda m: (-cosine[m], m))[:12]
        assert [cosine[m] for m in ids] == pytest.approx([cosine[m] for m in expected], abs=1e-5)
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("model", ["nerualcf", "deepcrossing", None])
def test_getrecforyou_other_models_are_the_ranking(client, engine, model):
    query = "" if model is None else f"&model={model}"
    for user_id in (1, 2, 3, 10**12):   # the last one is unknown: a cold-start list, never an error
        answer = get(client, f"/getrecforyou?id={user_id}&size=9{query}")
        for movie in answer:
            check_movie(movie)
        assert [m["movieId"] for m in answer] == [i["movieId"] for i in engine.recommend(user_id, k=9)["items"]]


def test_getrecforyou_unknown_user_emb_is_popularity(client, engine):
    snap = engine.state.snapshot
    answer = get(client, "/getrecforyou?id=-5&size=6&model=emb")
    assert [m["movieId"] for m in answer] == [int(snap.movie_ids[r]) for r in snap.candidate_rows[:6]]


def test_getsimilarmovie_is_the_engine_neighbours(client, engine, truth):
    for movie_id in list(truth["movies"])[:10]:
        answer = get(client, f"/getsimilarmovie?movieId={movie_id}&size=8&model=emb")
        for movie in answer:
            check_movie(movie)
        neighbours = engine.movie_info(movie_id, 8)["neighbours"]
        assert [m["movieId"] for m in answer] == [n["movieId"] for n in neighbours] and len(answer) == 8
    assert get(client, f"/getsimilarmovie?movieId={movie_id}&size=3") == answer[:3]   # model is optional


# ------------------------------------------------------------------ unknown things and bad parameters


@pytest.mark.parametrize("url", ["/getrecommendation?genre=Nope&size=5", "/getrecommendation?genre=drama&size=5",
                                 "/getsimilarmovie?movieId=999999999&size=5&model=emb",
                                 "/getsimilarmovie?movieId=-1&size=5"])
def test_unknown_things_in_lists_are_empty_lists(client, url):
    assert get(client, url) == []


@pytest.mark.parametrize("url", ["/getmovie?id=999999999", "/getmovie?id=-3", "/getuser?id=999999999",
                                 f"/getuser?id={-(2**63)}"])
def test_unknown_ids_are_a_json_404(client, url):
    body = get(client, url, 404)
    assert body["error"] == "not_found" and "is not in the store" in body["detail"]


@pytest.mark.parametrize("url", [
    "/getmovie", "/getmovie?id=", "/getmovie?id=abc", "/getmovie?id=1.5", f"/getmovie?id={2**63}",
    "/getuser", "/getuser?id=x", "/getrecforyou?size=5", "/getrecforyou?id=1", "/getrecforyou?id=1&size=0",
    "/getrecforyou?id=1&size=-3", "/getrecforyou?id=1&size=1001", f"/getrecforyou?id=1&size={10**30}",
    "/getrecforyou?id=1&size=ten", "/getsimilarmovie?id=1&size=5", "/getsimilarmovie?movieId=1",
    "/getrecommendation?size=5", "/getrecommendation?genre=Drama", "/getrecommendation?genre=Drama&size=0",
    "/getrecommendation?genre=Drama&size=5&sortby=title", "/getrecommendation?genre=Drama&size=5&sortby=",
    "/getrecommendation?genre=" + "x" * 300 + "&size=5", "/getrecforyou?id=1&size=5&model=" + "m" * 200,
])
def test_malformed_parameters_are_a_json_422(client, url):
    body = get(client, url, 422)
    assert body["error"] == "invalid_request" and body["detail"]


def test_a_version_published_before_the_display_keys_still_answers():
    movie = movie_json(4, {"title": "Heat (1995)", "year": 1995, "genres": ["Action"],
                           "features": {"movieRatingCount": 3, "movieAvgRating": 3.5}})
    check_movie(movie)
    assert (movie["ratingNumber"], movie["averageRating"], movie["imdbId"], movie["topRatings"]) == (3, 3.5, None, [])
    user = user_json(9, {"features": {"userRatingCount": 40, "userAvgRating": 3.25},
                         "history": [[4, 4.5, 100], [5, 2.0, 90]], "rated": [4, 5]})
    check_user(user)
    assert (user["ratingCount"], user["averageRating"], user["highestRating"], user["lowestRating"]) == (
        40, 3.25, 4.5, 2.0)
    bare = movie_json(5, {"title": None, "year": None, "features": {}})
    assert (bare["title"], bare["releaseYear"], bare["averageRating"], bare["ratingNumber"]) == ("", -1, 0.0, 0)


# ------------------------------------------------------------------ ml-latest-small


@pytest.fixture(scope="module")
def ml_small(ml_small_dir, models, tmp_path_factory):
    from deepcrossing.data import load_dataset
    from deepcrossing.serving.publish import publish_dataset

    root = tmp_path_factory.mktemp("compat-ml-small")
    dataset = load_dataset(ml_small_dir, workdir=root / "work")
    url = f"sqlite:///{root / 'features.db'}"
    publish_dataset(dataset, url)
    with TestClient(create_app(ServingSettings(models["root"] / "m0", url))) as c:
        yield c


def test_ml_latest_small(ml_small, ml_small_dir):
    ratings = f"read_csv('{ml_small_dir / 'ratings.csv'}')"
    count, mean = _query(f"SELECT count(*), avg(rating) FROM {ratings} WHERE movieId = 1").fetchone()
    n_user, low = _query(f"SELECT count(*), min(rating) FROM {ratings} WHERE userId = 1").fetchone()
    toy = get(ml_small, "/getmovie?id=1")
    check_movie(toy)
    assert (toy["title"], toy["releaseYear"], toy["imdbId"], toy["tmdbId"]) == ("Toy Story", 1995, "0114709", "862")
    assert (toy["ratingNumber"], count) == (215, 215) and toy["averageRating"] == pytest.approx(mean)
    assert toy["genres"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert len(toy["topRatings"]) == 10 and all(r["rating"]["score"] == 5.0 for r in toy["topRatings"])
    user = get(ml_small, "/getuser?id=1")
    check_user(user)
    assert user["ratingCount"] == len(user["ratings"]) == n_user and user["lowestRating"] == low
    action = get(ml_small, "/getrecommendation?genre=Action&size=20&sortby=releaseYear")
    assert [m["releaseYear"] for m in action] == sorted((m["releaseYear"] for m in action), reverse=True)
    assert all("Action" in m["genres"] for m in action) and len(action) == 20
    for url in ("/getrecforyou?id=1&size=20&model=emb", "/getrecforyou?id=1&size=20&model=nerualcf",
                "/getsimilarmovie?movieId=1&size=20&model=emb"):
        movies = get(ml_small, url)
        assert len(movies) == 20 and 1 not in [m["movieId"] for m in movies]
        for movie in movies:
            check_movie(movie)


def test_a_parameter_given_twice_counts_with_its_first_value(client, truth):
    """As the servlets' request.getParameter: ?id=A&id=B is A (FastAPI alone takes B)."""
    first, second = list(truth["movies"])[:2]
    assert get(client, f"/getmovie?id={first}&id={second}")["movieId"] == first
    assert len(get(client, "/getrecforyou?id=1&size=2&model=emb&size=7")) == 2
    assert get(client, f"/getmovie?id={first}&id=abc")["movieId"] == first   # the second is never read
    get(client, f"/getmovie?id=abc&id={first}", 422)
