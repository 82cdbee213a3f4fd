"""Retrieval evaluation: Recall@K / coverage@K against hand counts and a plain-Python reference, each channel
on a tiny hand-made log (exact rankings), rated-movie exclusion, no test leakage, and `evaluate --retrieval`."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deepcrossing.errors import InputError
from deepcrossing.training.retrieval import Prior, UserState, coverage_at_ks, emb_channel, genre_channel, \
    merge_channels, parse_ks, popularity_channel, recall_at_ks
from deepcrossing.training.retrieval_data import build_channels, evaluate_retrieval, load_retrieval_data, \
    trending_order
from deepcrossing.training.retrieval_trending import backtest_periods, choose_trending

NONE = np.zeros(0, dtype=np.int64)


# ------------------------------------------------------------------------------------------------ metrics


def test_recall_and_coverage_exact() -> None:
    ranked = [np.array([1, 2, 3, 4]), np.array([5, 1]), np.array([7, 8])]
    relevant = [np.array([2, 4, 9]), np.array([1]), NONE]
    r = recall_at_ks(ranked, relevant, (1, 2, 4))
    assert r.n_users == 2 and r.n_skipped == 1
    assert r.recall[1] == 0.0
    assert r.recall[2] == pytest.approx((1 / 3 + 1) / 2)
    assert r.recall[4] == pytest.approx((2 / 3 + 1) / 2)       # list of 2 shorter than K: counts what it has
    assert coverage_at_ks(ranked, (1, 2, 4), catalogue_size=10) == {1: 0.3, 2: 0.5, 4: 0.7}


def test_recall_edge_cases() -> None:
    assert np.isnan(recall_at_ks([NONE], [NONE], (5,)).recall[5])
    assert recall_at_ks([np.array([3, 3, 4])], [np.array([3, 4])], (2,)).recall[2] == 0.5   # a repeat counts once
    with pytest.raises(InputError):
        recall_at_ks([NONE], [], (5,))
    with pytest.raises(InputError):
        recall_at_ks([NONE], [NONE], (0,))


def _reference_recall(ranked: list[list[int]], relevant: list[list[int]], k: int) -> float:
    per_user = []
    for items, rel in zip(ranked, relevant, strict=True):
        if not rel:
            continue
        per_user.append(len(set(items[:k]) & set(rel)) / len(set(rel)))
    return sum(per_user) / len(per_user)


def test_recall_matches_plain_python() -> None:
    rng = random.Random(3)
    for _ in range(30):
        ranked = [[rng.randrange(60) for _ in range(rng.randint(0, 40))] for _ in range(12)]  # repeats too
        relevant = [rng.sample(range(60), rng.randint(0, 8)) for _ in range(12)]
        relevant[0] = [1]
        got = recall_at_ks([np.array(r, dtype=np.int64) for r in ranked],
                           [np.array(r, dtype=np.int64) for r in relevant], (1, 5, 20, 50))
        for k in (1, 5, 20, 50):
            assert got.recall[k] == pytest.approx(_reference_recall(ranked, relevant, k))


def test_parse_ks() -> None:
    assert parse_ks("800,50, 100") == (50, 100, 800)
    for bad in ("", "a", "0", "-5,10", "1.5"):
        with pytest.raises(InputError, match="positive integers"):
            parse_ks(bad)


# ------------------------------------------------------------------------------------ tiny samples folder

T0 = 1_000
TEST_START = 2_000
GENRES = {1: ["Drama"], 2: ["Comedy"], 3: ["Drama", "Comedy"], 4: ["Drama"], 5: ["Horror"], 6: ["Comedy"],
          7: ["Horror"]}
# (user, movie, rating, timestamp): before TEST_START -> train/valid; after -> test
PRIOR = [(1, 1, 5.0, T0), (1, 3, 4.0, T0 + 1), (1, 2, 2.0, T0 + 2),
         (2, 1, 4.0, T0 + 3), (2, 2, 4.0, T0 + 4), (3, 1, 3.0, T0 + 5), (3, 2, 5.0, T0 + 6), (3, 4, 4.0, T0 + 7),
         (4, 5, 5.0, T0 + 8)]
TEST = [(1, 4, 5.0, TEST_START), (1, 5, 2.0, TEST_START + 1), (2, 6, 4.0, TEST_START + 2),
        (2, 3, 5.0, TEST_START + 3), (5, 1, 4.0, TEST_START + 4), (4, 7, 1.0, TEST_START + 5)]


def _rows(rows: list[tuple[int, int, float, int]]) -> pa.Table:
    return pa.table({"userId": pa.array([r[0] for r in rows], pa.int64()),
                     "movieId": pa.array([r[1] for r in rows], pa.int64()),
                     "rating": pa.array([r[2] for r in rows], pa.float64()),
                     "timestamp": pa.array([r[3] for r in rows], pa.int64()),
                     "label": pa.array([int(r[2] >= 3.5) for r in rows], pa.int8())})


def _write_samples(folder: Path, test: list[tuple[int, int, float, int]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(_rows(PRIOR[:6]), folder / "train.parquet")
    pq.write_table(_rows(PRIOR[6:]), folder / "valid.parquet")
    pq.write_table(_rows(test), folder / "test.parquet")
    pq.write_table(pa.table({"item_id": pa.array(list(GENRES), pa.int64()),
                             "genres": pa.array(list(GENRES.values()), pa.list_(pa.string()))}),
                   folder / "items.parquet")
    (folder / "manifest.json").write_text(json.dumps({"split": {"valid_start": T0 + 6, "test_start": TEST_START},
                                                      "config": {"recent_n": 2}}))
    return folder


def test_tiny_log_state_and_channels(tmp_path: Path) -> None:
    data = load_retrieval_data(_write_samples(tmp_path / "s", TEST))
    # counts: 1 -> 3 ratings (avg 4), 2 -> 3 (avg 11/3), then 3, 4, 5 one each (avg 4, 4, 5), 6 and 7 unrated
    assert data.prior.popular.tolist() == [1, 2, 5, 3, 4, 6, 7]
    by_user = {u.user_id: u for u in data.users}
    assert list(by_user) == [1, 2, 4, 5]
    u1 = by_user[1]
    assert u1.rated.tolist() == [1, 2, 3] and u1.recent_positives.tolist() == [3, 1]
    assert u1.top_genres == ("Drama", "Comedy")               # Drama 2 (movies 1, 3), Comedy 1 (3)
    assert by_user[5].rated.tolist() == [] and by_user[5].top_genres == ()
    # relevant: test positives not rated before (user 2's movie 3 is new to them; user 4 has none)
    assert [r.tolist() for r in data.relevant] == [[4], [3, 6], [], [1]]

    pop = popularity_channel(data.prior)
    assert pop(u1, 10).tolist() == [5, 4, 6, 7]              # rated 1, 2, 3 left out
    assert pop(by_user[5], 2).tolist() == [1, 2]
    genres = genre_channel(data.prior)
    assert genres(u1, 10).tolist() == [4, 6]                 # Drama or Comedy, popularity order, unrated
    assert genres(by_user[5], 10).tolist() == [1, 2, 5, 3, 4, 6, 7]   # no positive history: popularity
    merged = merge_channels([genres, pop])
    assert merged(u1, 10).tolist() == [4, 5, 6, 7]

    report = evaluate_retrieval(data, {"popularity": pop, "genres": genres}, (1, 2))
    assert report["n_users"] == 3 and report["n_skipped"] == 1 and report["catalogue_size"] == 7
    assert report["n_warm_users"] == 2                         # users 1 and 2 (user 5 is new; 4 has no relevant)
    assert report["channels"]["popularity"]["recall_warm"] == {"1": 0.0, "2": pytest.approx(0.75)}
    # popularity: u1 [5, 4] (hit 4 at 2: 1/1), u2 [5, 3] (hit 3 at 2: 1/2), u5 [1, 2] (hit 1 at 1: 1/1)
    assert report["channels"]["popularity"]["recall"] == {"1": pytest.approx(1 / 3), "2": pytest.approx(2.5 / 3)}
    # top 2 over the four users: {5, 4}, {5, 3}, {1, 2} (user 4 rated 5), {1, 2} -> 5 distinct of 7
    assert report["channels"]["popularity"]["coverage"]["2"] == pytest.approx(5 / 7)


def test_valid_split_stands_at_valid_start(tmp_path: Path) -> None:
    data = load_retrieval_data(_write_samples(tmp_path / "s", TEST), split="valid")
    assert data.test_start == T0 + 6
    assert [u.user_id for u in data.users] == [3, 4]
    assert [r.tolist() for r in data.relevant] == [[2, 4], [5]]     # user 3 had rated 1 (3.0) in train only
    assert data.users[0].rated.tolist() == [1] and data.users[0].recent_positives.tolist() == []
    assert data.prior.popular.tolist()[:3] == [1, 2, 3]            # train counts only: 1 x3, 2 x2, 3 x1


def test_trending_half_life_by_hand_and_chosen_on_the_split(tmp_path: Path) -> None:
    folder = _write_samples(tmp_path / "s", TEST)
    half = 2 / 86400                                                # 2 seconds
    data = load_retrieval_data(folder, trending_half_life_days=half)
    score: dict[int, float] = {}
    for _, movie, rating, t in PRIOR:                               # every rating before TEST_START
        score[movie] = score.get(movie, 0.0) + rating * 2 ** (-(TEST_START - t) / 2)
    by_hand = sorted(score, key=lambda m: -score[m]) + [6, 7]       # unrated last, by id
    assert data.prior.trending.tolist() == by_hand == [5, 2, 4, 1, 3, 6, 7]
    assert load_retrieval_data(folder).prior.trending.tolist()[:2] == [1, 2]       # the count: 3 ratings each
    assert trending_order(data, half_life_days=half).tolist() == by_hand
    for k in (1, 2, 3):             # the best Recall@k of the trending channel alone; ties to the earlier
        choice = choose_trending(data, k, (None, half))
        chosen, scores, with_it = choice.half_life_days, choice.scores, choice.data
        assert set(scores) == {"180d/None", f"180d/{half}"} and choice.days == 180
        best = max(v for v in scores.values() if v is not None)
        assert chosen == [None, half][[scores["180d/None"], scores[f"180d/{half}"]].index(best)]
        assert with_it.prior.trending.tolist() == trending_order(data, half_life_days=chosen).tolist()
        got = build_channels(with_it)["trending"]
        assert recall_at_ks([got(u, k) for u in data.users], data.relevant, (k,)).recall[k] == best
    assert choose_trending(data, 1, (half, None)).half_life_days is None   # only the count ranks 1 first (user 5)


def test_trending_backtest_periods_and_pooled_choice(tmp_path: Path) -> None:
    """The periods before the validation start (each as of its own start, from train only) by hand, and their
    pooled Recall@1 changing the choice: the count and a 2-second half-life tie on the validation users alone."""
    folder = _write_samples(tmp_path / "s", TEST)
    valid = load_retrieval_data(folder, split="valid")              # start T0 + 6: users 3 and 4
    periods = backtest_periods(valid, 4, length=3)
    assert [(p.start, p.end) for p in periods] == [(T0 + 6, T0 + 9), (T0 + 3, T0 + 6), (T0, T0 + 3)]  # T0 - 3: none
    assert [[u.user_id for u in p.users] for p in periods] == [[3, 4], [2], [1]]
    assert [[r.tolist() for r in p.relevant] for p in periods] == [[[2, 4], [5]], [[1, 2]], [[1, 3]]]
    assert [u.rated.tolist() for u in periods[1].users] == [[]] and periods[0].users[0].rated.tolist() == [1]
    half = 2 / 86400
    # Recall@1 by hand. Count: at T0+6 order 1,2,3 (user 3 gets 2: 1/2, user 4 gets 1: 0); at T0+3 one rating
    # each, by average 1,3,2 (user 2 gets 1: 1/2); at T0 nothing, by id (user 1 gets 1: 1/2) -> 1.5 / 4.
    # Half-life 2 s: the same at T0+6 and T0; at T0+3 movie 3 (4 * 2^-1 = 2) beats 1 (5 * 2^-1.5) -> 1 / 4.
    alone = choose_trending(valid, 1, (half, None))
    assert alone.scores == {f"180d/{half}": 0.25, "180d/None": 0.25} and alone.half_life_days == half
    pooled = choose_trending(valid, 1, (half, None), periods=4, length=3)
    assert pooled.scores == {f"180d/{half}": 0.25, "180d/None": 0.375} and pooled.half_life_days is None
    assert pooled.periods == [[T0 + 6, T0 + 9, 2], [T0 + 3, T0 + 6, 1], [T0, T0 + 3, 1]]
    assert pooled.data.prior.trending.tolist() == trending_order(valid).tolist()
    windows = choose_trending(valid, 1, (None,), windows=(180, 365), periods=4, length=3)
    assert windows.days == 180 and set(windows.scores) == {"180d/None", "365d/None"}   # a tie: the earlier window
    with pytest.raises(InputError, match="periods"):
        backtest_periods(valid, 2)


def test_emb_channel_exact_and_fallback() -> None:
    prior = Prior(np.array([4, 1, 2, 3]))
    ids = np.array([1, 2, 3, 4])
    unit = np.array([[1, 0], [0, 1], [0.8, 0.6], [0.6, 0.8]], dtype=np.float32)
    emb = emb_channel(prior, ids, unit)
    user = UserState(1, np.array([1]), np.array([1, 99]), ())      # 99 has no vector: ignored
    assert emb(user, 10).tolist() == [3, 4, 2]                      # cosine to (1, 0), movie 1 rated
    both = UserState(1, np.array([1, 2]), np.array([1, 2]), ())
    assert emb(both, 10).tolist() == [3, 4]                         # tie on the mean direction: smaller id
    cold = UserState(2, np.array([4]), NONE, ())
    assert emb(cold, 2).tolist() == [1, 2]                          # popularity, minus rated


def test_channels_do_not_see_the_test_period(tmp_path: Path) -> None:
    before = load_retrieval_data(_write_samples(tmp_path / "a", TEST))
    changed = [(u, m, 6.0 - r, t) for u, m, r, t in TEST] + [(1, 7, 5.0, TEST_START + 9), (2, 7, 5.0, TEST_START)]
    after = load_retrieval_data(_write_samples(tmp_path / "b", changed))
    assert before.prior.popular.tolist() == after.prior.popular.tolist()
    assert before.movie_rows.equals(after.movie_rows)
    users = {u.user_id: u for u in after.users}
    for user in before.users:
        for name, channel in build_channels(before).items():
            assert channel(user, 10).tolist() == build_channels(after)[name](users[user.user_id], 10).tolist(), name


def test_random_split_is_refused(tmp_path: Path) -> None:
    folder = _write_samples(tmp_path / "s", TEST)
    (folder / "manifest.json").write_text(json.dumps({"split": {"kind": "random"}}))
    with pytest.raises(InputError, match="time split"):
        load_retrieval_data(folder)


# ------------------------------------------------------------------------- real model, CLI end to end


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from typer.testing import CliRunner

    from deepcrossing.cli import app

    root = tmp_path_factory.mktemp("retrieval")
    release = root / "ml-latest-small"
    release.mkdir()
    rng = random.Random(0)
    lines = [f"{u},{m},{rng.choice([1.0, 2.5, 4.0, 5.0])},{964982703 + 100 * j + u}"   # users interleaved in time
             for u in range(1, 41) for j, m in enumerate(rng.sample(range(1, 31), 12))]
    (release / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(lines) + "\n")
    kinds = ["Drama", "Comedy", "Horror", "Action"]
    (release / "movies.csv").write_text("movieId,title,genres\n" + "".join(
        f"{i},M{i} (199{i % 10}),{kinds[i % 4]}|{kinds[(i // 4) % 4]}\n" for i in range(1, 31)))
    samples, model = root / "samples", root / "model"
    res = CliRunner().invoke(app, ["prepare", "--data", str(release), "--out", str(samples)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["train", "--samples", str(samples), "--out", str(model), "--epochs", "1",
                                   "--device", "cpu", "--seed", "0"])
    assert res.exit_code == 0, res.output
    return samples, model


def test_evaluate_retrieval_cli(tiny_model: tuple[Path, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deepcrossing.cli import app

    samples, model = tiny_model
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["evaluate", "--retrieval", "--model", str(model), "--samples", str(samples),
                                   "--k", "5,10", "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["kind"] == "deepcrossing.retrieval" and report["ks"] == [5, 10]
    assert set(report["channels"]) == {"popularity", "trending", "genres", "emb", "merged"}
    for row in report["channels"].values():
        assert 0.0 <= row["recall"]["5"] <= row["recall"]["10"] <= 1.0
        assert 0.0 < row["coverage"]["5"] <= row["coverage"]["10"] <= 1.0
    assert "merged" in res.output and "R@10" in res.output
    # a second run replaces its own report; a file that is not ours is refused
    assert CliRunner().invoke(app, ["evaluate", "--retrieval", "--model", str(model), "--samples", str(samples),
                                    "--out", str(out)]).exit_code == 0
    other = tmp_path / "notes.json"
    other.write_text("{}")
    res = CliRunner().invoke(app, ["evaluate", "--retrieval", "--model", str(model), "--samples", str(samples),
                                   "--out", str(other)])
    assert res.exit_code != 0 and other.read_text() == "{}"


def test_emb_channel_ignores_test_period_with_a_real_model(tiny_model: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    from deepcrossing.training.artifact import load

    samples, model = tiny_model
    copy = tmp_path / "samples"
    shutil.copytree(samples, copy)
    test = pq.read_table(copy / "test.parquet")
    flipped = test.set_column(test.schema.get_field_index("label"), "label",
                              pa.array((1 - test.column("label").to_numpy()).astype(np.int8)))
    pq.write_table(flipped, copy / "test.parquet")
    loaded = load(model)
    a, b = load_retrieval_data(samples), load_retrieval_data(copy)
    emb_a, emb_b = build_channels(a, loaded)["emb"], build_channels(b, loaded)["emb"]
    assert [u.user_id for u in a.users] == [u.user_id for u in b.users]
    for ua, ub in zip(a.users, b.users, strict=True):
        got = emb_a(ua, 20)
        assert got.tolist() == emb_b(ub, 20).tolist()
        assert not np.isin(got, ua.rated).any()


def _strict_json(text: str) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_evaluate_retrieval_writes_standard_json_and_refuses_an_empty_test_period(
        tiny_model: tuple[Path, Path], tmp_path: Path) -> None:
    """With no warm test user, `evaluate --retrieval` wrote `"recall_warm": {"50": NaN, ...}` (not JSON: strict
    parsers refuse it); with no test user at all (`prepare --fractions 1,0,0`) every recall was NaN. Now
    recall_warm is null without warm users, and an empty test period is one error."""
    import shutil

    from typer.testing import CliRunner

    from deepcrossing.cli import app

    samples, model = tiny_model
    cold = tmp_path / "cold"
    shutil.copytree(samples, cold)
    for split in ("train", "valid"):  # nobody has a positive before the test period: no warm user
        table = pq.read_table(samples / f"{split}.parquet")
        label = table.schema.get_field_index("label")
        zeros = pa.array(np.zeros(table.num_rows), table.schema.field("label").type)
        pq.write_table(table.set_column(label, "label", zeros), cold / f"{split}.parquet")
    test = pq.read_table(samples / "test.parquet")
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["evaluate", "--retrieval", "--model", str(model), "--samples", str(cold),
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = _strict_json(out.read_text())
    assert report["n_users"] > 0 and report["n_warm_users"] == 0
    assert report["channels"]["popularity"]["recall_warm"]["100"] is None

    empty = tmp_path / "empty"
    shutil.copytree(samples, empty)
    pq.write_table(test.slice(0, 0), empty / "test.parquet")
    res = CliRunner().invoke(app, ["evaluate", "--retrieval", "--model", str(model), "--samples", str(empty),
                                   "--out", str(tmp_path / "e.json")])
    assert "the test period has no user with a relevant movie" in str(res.exception), res.exception
    assert not (tmp_path / "e.json").exists()
