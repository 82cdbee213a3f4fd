"""The item-CF score online: itemcf_scores over OnlineRecords' histories and co-occurrence lists equals the
sample SQL's userItemCFScore of a (user, movie) sample at t_end, for every pair of a seeded log."""

from __future__ import annotations

import math
import random

import numpy as np
import pyarrow as pa
import pytest

from deepcrossing.features import FeatureConfig, online_records
from deepcrossing.features.inputs import connect, events_genre_bits, genre_vocabulary, register_inputs
from deepcrossing.features.itemcf import CoOccurrence, itemcf_scores
from deepcrossing.features.online import DEFAULT_HISTORY_N
from deepcrossing.features.sql import feature_sql

from .conftest import write_dataset

ITEMS = [(i, 1990 + i, ["Drama"] if i % 2 else ["Comedy", "Drama"]) for i in range(1, 13)]


def _log(seed: int) -> list[tuple]:
    """8 users, 13 movies (13 is not in the items file), same-second ratings, ratings on both sides of 3.5."""
    rng = random.Random(seed)
    seen, rows = set(), []
    while len(rows) < 80:
        key = (rng.randint(1, 8), rng.randint(1, 13))
        if key not in seen:
            seen.add(key)
            rows.append((*key, rng.choice([1.0, 2.5, 3.5, 4.0, 4.5, 5.0]), 100 + 3 * rng.randint(0, 40)))
    return rows


def _sql_at_t_end(dataset, config: FeatureConfig, t_end: int, users: list[int], movies: list[int]) -> dict:
    """userItemCFScore of a probe sample (user, movie) at t_end for every pair, from the sample SQL."""
    with connect(config) as con:
        register_inputs(con, dataset)
        probes = pa.table({"user_id": pa.array([u for u in users for _ in movies], pa.int64()),
                           "item_id": pa.array([m for _ in users for m in movies], pa.int64())})
        con.register("pair_probes", probes)
        con.execute("CREATE VIEW events AS SELECT user_id, item_id, rating, label, timestamp, FALSE AS is_probe "
                    "FROM ratings_src UNION ALL SELECT user_id, item_id, CAST(NULL AS DOUBLE), "
                    f"CAST(NULL AS TINYINT), {t_end}, TRUE FROM pair_probes")
        query = feature_sql(genre_vocabulary(con), label_threshold=config.label_threshold,
                            recent_n=config.recent_n, genre_bits=events_genre_bits(con), **config.sql_settings())
        rows = con.sql(f"SELECT userId, movieId, userItemCFScore FROM ({query}) WHERE is_probe").fetchall()
    return {(u, m): s for u, m, s in rows}


@pytest.mark.parametrize("seed", [1, 2])
def test_online_score_equals_the_sample_sql_at_t_end(tmp_path, seed):
    config = FeatureConfig(itemcf=True, itemcf_window=3, itemcf_history=6)
    ds = write_dataset(tmp_path, _log(seed), ITEMS)
    records = online_records(ds, config, history_n=config.itemcf_history)
    table = CoOccurrence.from_table(records.cooccurrence)
    users = records.histories.column("userId").to_pylist()
    movies = list(range(1, 15))  # 14: never rated
    expected = _sql_at_t_end(ds, config, records.t_end, users, movies)
    compared = scored = 0
    for row in records.histories.to_pylist():
        hist = row["history"]
        got = itemcf_scores(np.array([h["movieId"] for h in hist], np.int64),
                            np.array([np.nan if h["rating"] is None else h["rating"] for h in hist]),
                            np.array(movies), table, config.itemcf_history)
        for movie, value in zip(movies, got.tolist(), strict=True):
            want = expected[(row["userId"], movie)]
            if want is None:
                assert math.isnan(value), (row["userId"], movie, value)
            else:
                assert value == pytest.approx(want, rel=1e-12), (row["userId"], movie)
                scored += 1
            compared += 1
    assert compared == len(users) * len(movies) and scored > compared // 2


def test_cooccurrence_lists_by_hand(tmp_path):
    # user 1 positives in order 1, 4, 5 (4 and 2 share second 20; 2 is negative); user 2: 4 then 1
    ratings = [(1, 1, 4.0, 10), (1, 2, 2.0, 20), (1, 4, 5.0, 20), (1, 5, 4.5, 30), (2, 4, 4.0, 50),
               (2, 1, 5.0, 60)]
    ds = write_dataset(tmp_path, ratings, ITEMS)
    records = online_records(ds, FeatureConfig(itemcf=True, itemcf_window=1))
    rows = {r["movieId"]: (r["positives"], list(zip(r["neighbours"], r["co"], strict=True)))
            for r in records.cooccurrence.to_pylist()}
    # window 1: each positive pairs with the one before it: (4, 1), (5, 4) of user 1 and (1, 4) of user 2
    assert rows == {1: (2, [(4, 2)]), 4: (2, [(1, 2), (5, 1)]), 5: (1, [(4, 1)])}
    assert online_records(ds, FeatureConfig()).cooccurrence.num_rows == 0  # off: nothing computed
    scores = itemcf_scores(np.array([4, 2]), np.array([3.0, 1.0]), np.array([1, 5, 2, 99]),
                           CoOccurrence.from_table(records.cooccurrence), 20)
    assert scores[:2].tolist() == [3.0, 3.0] and np.isnan(scores[2:]).all()


def test_default_history_matches_the_service_history():
    # the service's stored history (DEFAULT_HISTORY_N) must hold the itemcf_history ratings the score reads
    assert FeatureConfig().itemcf_history == DEFAULT_HISTORY_N


def _loop_scores(movies, ratings, candidates, table: CoOccurrence, history: int) -> np.ndarray:
    """A plain-Python reference of the score: per candidate, per history rating (the definition, slowly)."""
    row_of = {int(m): k for k, m in enumerate(table.movies)}
    out = []
    for c in candidates.tolist():
        num = den = 0.0
        for j, r in zip(movies[:history].tolist(), ratings[:history].tolist(), strict=True):
            if math.isnan(r) or j not in row_of:
                continue
            k = row_of[j]
            lo, hi = int(table.offsets[k]), int(table.offsets[k + 1])
            co = dict(zip(table.neighbours[lo:hi].tolist(), table.co[lo:hi].tolist(), strict=True)).get(c, 0)
            weight = co / math.sqrt(float(table.positives[k]))
            num, den = num + weight * r, den + weight
        out.append(num / den if den > 0 else math.nan)
    return np.array(out)


@pytest.mark.parametrize("seed", [3, 4])
def test_vectorised_scores_are_bit_equal_to_a_loop(tmp_path, seed):
    """user_neighbours + neighbour_scores (the service's two halves) against a per-candidate loop, bit for bit,
    with repeated and unknown history movies, NaN ratings, a short history cut and an empty table."""
    records = online_records(write_dataset(tmp_path, _log(seed), ITEMS), FeatureConfig(itemcf=True, itemcf_window=4))
    table = CoOccurrence.from_table(records.cooccurrence)
    rng = np.random.default_rng(seed)
    candidates = np.array([*range(16), 13, 2, 2])
    for _ in range(30):
        movies = rng.integers(0, 16, size=int(rng.integers(0, 12)))
        ratings = np.where(rng.random(len(movies)) < 0.2, np.nan, rng.choice([1.0, 3.5, 4.5, 5.0], len(movies)))
        for history in (3, 20):
            want = _loop_scores(movies, ratings, candidates, table, history)
            got = itemcf_scores(movies, ratings, candidates, table, history)
            np.testing.assert_array_equal(got, want)
    empty = CoOccurrence.from_table(records.cooccurrence.slice(0, 0))
    assert np.isnan(itemcf_scores(np.array([1, 2]), np.array([4.0, 5.0]), candidates, empty, 20)).all()
