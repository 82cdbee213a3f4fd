"""Samples: hand-checked numbers, no leakage (property test), splits, manifest, atomic output, latest features."""

from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepcrossing.errors import InputError
from deepcrossing.features import (
    SAMPLE_COLUMNS,
    FeatureConfig,
    build_samples,
    compute_samples,
    latest_features,
    movie_side_columns,
    user_side_columns,
)
from deepcrossing.features.columns import FEATURE_COLUMNS, ONLINE_USER_SIDE

from .conftest import write_dataset

ITEMS = [(1, 1995, ["Comedy", "Drama"]), (2, 2000, ["Action"]), (3, None, []), (4, 1980, ["Drama", "War"]),
         (5, 2010, ["Action", "Comedy", "Drama", "Sci-Fi"])]


def _rows(table) -> dict[tuple, dict]:
    return {(r["userId"], r["movieId"], r["timestamp"]): r for r in table.to_pylist()}


def test_tiny_log_hand_computed(tmp_path):
    ratings = [(1, 1, 4.0, 10), (1, 2, 2.0, 20), (1, 4, 5.0, 20), (1, 5, 4.5, 30), (2, 5, 3.0, 30),
               (2, 1, 1.0, 40)]
    rows = _rows(compute_samples(write_dataset(tmp_path, ratings, ITEMS), FeatureConfig()))
    r = rows[(1, 5, 30)]  # sees user 1's ratings at 10 and 20, none at 30
    assert r["userRatingCount"] == 3 and r["userAvgRating"] == pytest.approx(11 / 3)
    assert r["userRatingStddev"] == pytest.approx(1.5275252316519468)
    assert r["userAvgReleaseYear"] == pytest.approx((1995 + 2000 + 1980) / 3)
    assert r["userRecentPositives"] == [4, 1] and r["userRatedMovie1"] == 4 and r["userRatedMovie3"] is None
    assert dict(r["userGenreCounts"]) == {"Comedy": 1, "Drama": 2, "War": 1}
    assert [r[f"userGenre{i}"] for i in range(1, 6)] == ["Drama", "Comedy", "War", None, None]
    assert r["userPositiveRate"] == pytest.approx(2 / 3) and r["userSecondsSincePrevRating"] == 10
    assert r["movieRatingCount"] == 0 and r["movieAvgRating"] is None and r["movieSecondsSinceFirstRating"] is None
    assert r["movieGenres"] == ["Action", "Comedy", "Drama", "Sci-Fi"] and r["movieGenre3"] == "Drama"
    same_second = rows[(2, 5, 30)]  # user 1's rating of movie 5 in the same second is not seen
    assert same_second["movieRatingCount"] == 0 and same_second["userRatingCount"] == 0
    later = rows[(2, 1, 40)]
    assert later["movieRatingCount"] == 1 and later["movieAvgRating"] == 4.0 and later["movieRatingStddev"] is None
    assert later["userRecentPositives"] == [] and later["userGenre1"] is None and dict(later["userGenreCounts"]) == {}
    assert later["label"] == 0 and rows[(1, 5, 30)]["label"] == 1
    assert rows[(1, 4, 20)]["releaseYear"] == 1980 and rows[(1, 1, 10)]["movieGenre3"] is None
    # user x movie: positive genre counts {Comedy 1, Drama 2, War 1} vs {Action, Comedy, Drama, Sci-Fi}
    assert r["userGenreCosine"] == pytest.approx(3 / (6 ** 0.5 * 2))
    # (movie, genre) pairs among movie 5's genres: 1 Comedy 4.0, 1 Drama 4.0, 2 Action 2.0, 4 Drama 5.0
    assert r["userGenreAvgRating"] == pytest.approx(15 / 4)
    assert later["userGenreCosine"] is None and later["userGenreAvgRating"] == 3.0  # its 3.0 of 5 (C, D)
    assert rows[(1, 1, 10)]["userGenreAvgRating"] is None and later["movieLast7dRatingCount"] == 1
    # recent ratings by rating time (second): user 1's times 10 (4.0) and 20 (2.0 and 5.0, both in the last one)
    assert r["userLastRating"] == 3.5
    assert r["userRecent5AvgRating"] == r["userRecent20AvgRating"] == pytest.approx(11 / 3)
    assert later["userLastRating"] == later["userRecent5AvgRating"] == 3.0 and same_second["userLastRating"] is None
    assert rows[(1, 4, 20)]["userLastRating"] == 4.0 and rows[(1, 1, 10)]["userRecent20AvgRating"] is None


def test_itemcf_score_and_shrunk_movie_average_by_hand(tmp_path):
    ratings = [(1, 1, 4.0, 10), (1, 2, 2.0, 20), (1, 4, 5.0, 20), (1, 5, 4.5, 30), (2, 5, 3.0, 30),
               (2, 1, 1.0, 40), (2, 4, 4.0, 50), (3, 1, 5.0, 60), (3, 4, 3.0, 70), (3, 5, 2.0, 80)]
    ds = write_dataset(tmp_path, ratings, ITEMS)
    rows = _rows(compute_samples(ds, FeatureConfig(itemcf=True, movie_bayes=True, movie_prior_weight=10)))
    # positives in order: user 1: 1 (10), 4 (20), 5 (30); user 2: 4 (50); user 3: 1 (60)
    # pairs (both directions, at the later positive): 1-4 at 20, 1-5 and 4-5 at 30
    assert rows[(2, 1, 40)]["userItemCFScore"] == 3.0  # history [5: 3.0]; co(1, 5) = 1, n_5 = 1
    assert rows[(2, 4, 50)]["userItemCFScore"] == 2.0  # history [1: 1.0, 5: 3.0], equal weights
    assert rows[(3, 1, 60)]["userItemCFScore"] is None  # no history
    assert rows[(3, 4, 70)]["userItemCFScore"] == 5.0
    # history [4: 3.0, 1: 5.0]: n_4 = 2 (user 2 at 50), n_1 = 2 (user 3 at 60): weights 1/sqrt(2) each
    assert rows[(3, 5, 80)]["userItemCFScore"] == pytest.approx(4.0)
    assert rows[(1, 5, 30)]["userItemCFScore"] is None  # the pairs at 30 are not seen at 30
    # shrunk average, m = 10: movie 1 at 40 has one rating (4.0); mu = (4 + 2 + 5 + 4.5 + 3) / 5 = 3.7
    assert rows[(2, 1, 40)]["movieBayesAvgRating"] == pytest.approx((4.0 + 10 * 3.7) / 11)
    assert rows[(3, 5, 80)]["movieBayesAvgRating"] == pytest.approx((7.5 + 10 * 31.5 / 9) / 12)
    assert rows[(1, 5, 30)]["movieBayesAvgRating"] is None  # no earlier rating of the movie
    # off (the default): NULL everywhere; m = 0: the plain average
    off = _rows(compute_samples(ds, FeatureConfig(movie_bayes=True, movie_prior_weight=0)))
    assert all(r["userItemCFScore"] is None for r in off.values())
    assert all(r["movieBayesAvgRating"] == r["movieAvgRating"] for r in off.values())


def test_recent_movie_counts_window_edges(tmp_path):
    day, t0 = 86_400, 1_000_000
    ratings = [(1, 1, 4.0, t0), (2, 1, 3.0, t0 + 7 * day), (3, 1, 3.0, t0 + 7 * day + 1),
               (4, 1, 3.0, t0 + 30 * day + 1), (5, 1, 3.0, t0 + 30 * day + 1)]
    rows = _rows(compute_samples(write_dataset(tmp_path, ratings, ITEMS), FeatureConfig()))
    at = {u: rows[(u, 1, t)] for u, _, _, t in ratings}
    assert [at[u]["movieLast7dRatingCount"] for u in range(1, 6)] == [0, 1, 1, 0, 0]
    # at t0 + 30 days + 1 the first rating is 1 s too old; the two same-second ratings do not see each other
    assert [at[u]["movieLast30dRatingCount"] for u in range(1, 6)] == [0, 1, 2, 2, 2]


event = st.tuples(st.integers(1, 3), st.integers(1, 5), st.sampled_from([0.5, 1.0, 2.5, 3.5, 4.0, 5.0]),
                  st.integers(0, 12))


def _dedupe(events):
    seen, out = set(), []
    for e in events:
        if (e[0], e[1], e[3]) not in seen:
            seen.add((e[0], e[1], e[3]))
            out.append(e)
    return out


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
    return a == b


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(event, min_size=1, max_size=25), cut=st.integers(0, 12), data=st.data())
def test_future_changes_never_change_features(tmp_path_factory, events, cut, data):
    """Change, move, delete or add ratings at or after `cut`: every sample before or at `cut` keeps its features."""
    events = _dedupe(events)
    changed = []
    for e in events:
        if e[3] < cut:
            changed.append(e)
            continue
        action = data.draw(st.sampled_from(["keep", "value", "movie", "delete"]))
        if action == "keep":
            changed.append(e)
        elif action == "value":
            changed.append((e[0], e[1], data.draw(st.sampled_from([0.5, 3.0, 4.5])), e[3]))
        elif action == "movie":
            changed.append((e[0], data.draw(st.integers(1, 5)), e[2], e[3]))
    changed += [(u, i, r, cut + dt) for u, i, r, dt in
                data.draw(st.lists(st.tuples(st.integers(1, 3), st.integers(1, 5),
                                             st.sampled_from([1.0, 4.0, 5.0]), st.integers(0, 5)), max_size=6))]
    changed = _dedupe(changed)
    folder = tmp_path_factory.mktemp("prop")
    # every feature on, with small windows so that the item-CF window and history limits are reached
    config = FeatureConfig(itemcf=True, itemcf_window=2, itemcf_history=3, movie_bayes=True,
                           movie_prior_weight=2.0)
    before = _rows(compute_samples(write_dataset(folder / "a", events, ITEMS), config))
    after = _rows(compute_samples(write_dataset(folder / "b", changed, ITEMS), config)) if changed else {}
    untouched = set(events) & set(changed)
    for user, item, _rating, ts in untouched:
        if ts <= cut:
            a, b = before[(user, item, ts)], after[(user, item, ts)]
            for name in FEATURE_COLUMNS:
                # floats to 1e-12: a sum over a hash aggregate (userItemCFScore's similarities) may add in
                # another order and differ in the last bit; leakage moves a value by far more
                assert _same(a[name], b[name]), (name, (user, item, ts), a[name], b[name])


def test_time_split_boundaries_and_manifest(ml_small_samples):
    out, manifest = ml_small_samples
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert sorted(p.name for p in out.iterdir()) == ["items.parquet", "manifest.json", "test.parquet",
                                                      "train.parquet", "valid.parquet"]
    splits = manifest["splits"]
    assert [splits[s]["rows"] for s in ("train", "valid", "test")] == [80_668, 10_084, 10_084]
    assert splits["train"]["last_timestamp"] < manifest["split"]["valid_start"] <= splits["valid"]["first_timestamp"]
    assert splits["valid"]["last_timestamp"] < manifest["split"]["test_start"] == splits["test"]["first_timestamp"]
    assert manifest["split"]["test_start_iso"] == "2017-06-21T07:17:30+00:00"
    assert 0.55 < splits["test"]["positive_rate"] < 0.57
    # most users of the last 10% of time never rated anything before it
    assert manifest["unseen_users"]["test_users_not_in_train_share"] == pytest.approx(54 / 74, abs=1e-6)
    assert [f["name"] for f in manifest["features"]] == list(SAMPLE_COLUMNS)
    kinds = {f["name"]: f["type"] for f in manifest["features"]}
    assert kinds["userGenreCounts"] == "MAP(VARCHAR, BIGINT)" and kinds["userRecentPositives"] == "BIGINT[]"
    assert manifest["config"]["label_threshold"] == 3.5 and manifest["format_version"] == 2
    assert manifest["dataset"]["ratings"] == 100_836 and manifest["dataset"]["sources"]
    train_max = pq.read_table(out / "train.parquet", columns=["timestamp"]).column(0).to_pylist()
    test_min = pq.read_table(out / "test.parquet", columns=["timestamp"]).column(0).to_pylist()
    assert max(train_max) < min(test_min)


def test_random_split_is_seeded(tmp_path):
    ratings = [(u, i, float(1 + (u * i) % 5), 100 * u + i) for u in range(1, 41) for i in range(1, 6)]
    ds = write_dataset(tmp_path / "d", ratings, ITEMS)
    cfg = FeatureConfig(split="random", fractions=(0.6, 0.2, 0.2), seed=3)
    a = build_samples(ds, cfg, tmp_path / "a")
    b = build_samples(ds, cfg, tmp_path / "b")
    build_samples(ds, FeatureConfig(split="random", fractions=(0.6, 0.2, 0.2), seed=4), tmp_path / "c")
    keys = {name: sorted(zip(*pq.read_table(tmp_path / name / "test.parquet", columns=["userId", "movieId"])
                             .to_pydict().values())) for name in "abc"}
    assert keys["a"] == keys["b"] and keys["a"] != keys["c"]
    assert sum(a["splits"][s]["rows"] for s in a["splits"]) == 200
    assert 90 <= a["splits"]["train"]["rows"] <= 150 and a["split"]["seed"] == 3
    assert b["splits"] == a["splits"]


def test_failed_write_leaves_previous_output_intact(tmp_path, monkeypatch):
    ratings = [(1, 1, 4.0, 10), (1, 2, 2.0, 20), (2, 1, 5.0, 30), (2, 4, 3.0, 40), (3, 5, 4.0, 50)]
    ds = write_dataset(tmp_path / "d", ratings, ITEMS)
    out = tmp_path / "samples"
    first = build_samples(ds, FeatureConfig(), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import deepcrossing.features.samples as samples

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(samples, "_split_stats", boom)  # fails after the Parquet files were written
    with pytest.raises(RuntimeError, match="disk full"):
        build_samples(ds, FeatureConfig(recent_n=5), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".samples")] == []
    assert first["splits"]["train"]["rows"] + first["splits"]["valid"]["rows"] + first["splits"]["test"]["rows"] == 5


def test_latest_features_equal_a_probe_sample_at_t_end(tmp_path):
    ratings = [(1, 1, 4.0, 10), (1, 2, 2.0, 20), (1, 4, 5.0, 20), (1, 5, 4.5, 30), (2, 5, 3.0, 30),
               (2, 1, 1.0, 40), (3, 2, 5.0, 41)]
    ds = write_dataset(tmp_path / "d", ratings, ITEMS)
    users, movies = latest_features(ds, FeatureConfig())
    assert users.column_names == list(ONLINE_USER_SIDE) and movies.column_names == list(movie_side_columns())
    assert users.column("userId").to_pylist() == [1, 2, 3]
    assert movies.column("movieId").to_pylist() == [1, 2, 3, 4, 5]  # movie 3 was never rated
    # a real sample for every (user, movie) pair at t_end = 42 must carry exactly these values
    probes = [(u, m, 3.0, 42) for u in (1, 2, 3) for m in (1, 2, 3, 4, 5)]
    sampled = _rows(compute_samples(write_dataset(tmp_path / "p", ratings + probes, ITEMS)))
    for user in users.to_pylist():
        for m in (1, 2, 3, 4, 5):
            row = sampled[(user["userId"], m, 42)]
            assert {c: row[c] for c in user_side_columns()} == {c: user[c] for c in user_side_columns()}
    for movie in movies.to_pylist():
        row = sampled[(1, movie["movieId"], 42)]
        assert {c: row[c] for c in movie_side_columns()} == movie
    u1 = users.to_pylist()[0]
    assert u1["userRatingCount"] == 4 and u1["userRecentPositives"] == [5, 4, 1]
    assert u1["userSecondsSincePrevRating"] == 12
    m3 = movies.to_pylist()[2]
    assert m3["movieRatingCount"] == 0 and m3["movieGenres"] == [] and m3["releaseYear"] is None


def test_label_column_is_used_when_given(tmp_path):
    import pyarrow as pa

    ds = write_dataset(tmp_path, [(1, 1, 1.0, 10), (1, 2, 1.0, 20), (1, 4, 5.0, 30)], ITEMS)
    table = pq.read_table(ds.ratings)
    table = table.set_column(3, "label", pa.array([1, None, 0], pa.int8()))
    table = table.set_column(2, "rating", pa.array([None, 1.0, 5.0], pa.float64()))
    pq.write_table(table, ds.ratings)
    rows = _rows(compute_samples(ds))
    assert [rows[k]["label"] for k in sorted(rows)] == [1, 0, 0]
    last = rows[(1, 4, 30)]
    assert last["userRecentPositives"] == [1] and last["userRatingCount"] == 2 and last["userAvgRating"] == 1.0


def test_config_validation_names_the_key():
    with pytest.raises(InputError, match="fractions"):
        FeatureConfig(fractions=(0.5, 0.2, 0.2))
    with pytest.raises(InputError, match="split"):
        FeatureConfig(split="user")
    with pytest.raises(InputError, match="recent_n"):
        FeatureConfig(recent_n=2)
    with pytest.raises(InputError, match="unknown FeatureConfig key 'treshold'"):
        FeatureConfig.from_dict({"treshold": 3})
    cfg = FeatureConfig(fractions=(0.7, 0.0, 0.3), seed=5)
    assert FeatureConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_bad_inputs_are_input_errors(tmp_path):
    ds = write_dataset(tmp_path / "d", [], ITEMS)
    with pytest.raises(InputError, match="no ratings"):
        build_samples(ds, FeatureConfig(), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    ds2 = write_dataset(tmp_path / "e", [(1, 1, 4.0, 1)], ITEMS)
    pq.write_table(pq.read_table(ds2.ratings).drop(["timestamp"]), ds2.ratings)
    with pytest.raises(InputError, match="timestamp") as err:
        build_samples(ds2, FeatureConfig(), tmp_path / "out")
    assert err.value.field == "timestamp" and err.value.path.endswith("ratings.parquet")
    with pytest.raises(InputError, match="format"):
        build_samples(ds2, FeatureConfig(), tmp_path / "out", fmt="tfrecord")


def test_split_writer_keeps_the_batch_order_and_reraises_failures(tmp_path):
    """The writer thread writes batches in the engine's order; a failure on either side reaches the caller."""
    import pyarrow as pa

    from deepcrossing.features.samples import _write_splits

    batches = [pa.record_batch({"x": [i, i + 1], "split": ["train", "test"]}) for i in range(0, 10, 2)]
    files = {n: tmp_path / f"{n}.parquet" for n in ("train", "valid", "test")}
    _write_splits(iter(batches), files, lambda b: b)
    assert pq.read_table(files["train"]).column("x").to_pylist() == [0, 2, 4, 6, 8]
    assert pq.read_table(files["test"]).column("x").to_pylist() == [1, 3, 5, 7, 9]
    assert pq.read_table(files["valid"]).num_rows == 0 and pq.read_schema(files["valid"]).names == ["x"]

    def failing_finish(batch):
        if batch.column("x")[0].as_py() == 4:
            raise RuntimeError("assemble failed")
        return batch

    files = {n: tmp_path / f"f-{n}.parquet" for n in ("train", "valid", "test")}
    with pytest.raises(RuntimeError, match="assemble failed"):
        _write_splits(iter(batches), files, failing_finish)
    assert pq.read_table(files["train"]).column("x").to_pylist() == [0, 2]  # closed: a readable file

    bad = [*batches[:2], pa.record_batch({"x": ["a", "b"], "split": ["train", "test"]})]
    files = {n: tmp_path / f"b-{n}.parquet" for n in ("train", "valid", "test")}
    with pytest.raises((pa.ArrowInvalid, ValueError)):  # the writer thread's error, re-raised here
        _write_splits(iter(bad), files, lambda b: b)


def test_a_row_without_a_user_has_no_history_not_nulls(tmp_path):
    """The online movie probes have no user: their user-side state is that of a user with no history (zero
    counts, no positive), so ``assemble`` builds empty lists from it (a NULL count made it read garbage
    offsets: 'Negative offsets in list array', now and then)."""
    import duckdb

    from deepcrossing.features.online import register_inputs
    from deepcrossing.features.sql import feature_sql

    ds = write_dataset(tmp_path, [(1, 1, 4.0, 10), (1, 2, 5.0, 20)], ITEMS)
    con = duckdb.connect()
    register_inputs(con, ds)
    con.execute("CREATE VIEW events AS SELECT user_id, item_id, rating, label, timestamp, FALSE AS is_probe "
                "FROM ratings_src UNION ALL SELECT CAST(NULL AS BIGINT), item_id, CAST(NULL AS DOUBLE), "
                "CAST(NULL AS TINYINT), 30, TRUE FROM items_src")
    genres = sorted({g for _, _, gs in ITEMS for g in gs})
    rows = con.sql(f"SELECT userRatingCount, userPositiveRate, _npos, userLastRating FROM "
                   f"({feature_sql(genres, label_threshold=3.5, recent_n=10)}) WHERE is_probe").fetchall()
    assert rows and set(rows) == {(0, None, 0, None)}
