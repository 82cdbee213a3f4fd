"""The two-tower score with a trending prior: the augmented vectors give the score, the maximum-likelihood fit
finds the signal that explains the relevant movies, the trending scores and positive shares match a
recomputation from the samples files, and the channel ranks by the score with rated movies left out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from dc_synthetic import prepared_small_release

from deepcrossing.errors import InputError
from deepcrossing.training.retrieval_data import TRENDING_SCORE, load_retrieval_data, recall_channel, with_trending
from deepcrossing.training.retrieval_prior import SHARE_SMOOTHING, TREND_SMOOTHING, TrendingPrior, \
    TrendingTwoTower, fit_on, fit_trending_prior, positive_shares


def test_augmented_vectors_give_the_score() -> None:
    rng = np.random.default_rng(0)
    unit = rng.normal(size=(5, 3)).astype(np.float32)
    users = rng.normal(size=(2, 3)).astype(np.float32)
    trend, share = np.array([0.0, 1.0, 2.5, 10.0, 0.2]), np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    prior = TrendingPrior(scale=3.0, trending=0.7, share=-0.4)
    got = TrendingPrior.users(users) @ prior.items(unit, trend, share).T                  # (2, 5)
    want = (3.0 * users @ unit.T + 0.7 * np.log(trend + TREND_SMOOTHING)
            + -0.4 * np.log(share + SHARE_SMOOTHING)[None, :])
    assert np.allclose(got, want, atol=1e-4)


def test_fit_finds_the_signal_that_explains_the_relevant_movies() -> None:
    rng = np.random.default_rng(1)
    users, movies = 40, 30
    cos = rng.uniform(-1, 1, size=(users, movies)).astype(np.float32)
    flat = np.zeros(movies)
    none = [np.zeros(0, dtype=np.int64)] * users
    # each user's relevant movie is their highest cosine: the scale grows, the item terms stay small
    by_cos = fit_trending_prior(cos, [np.array([int(np.argmax(row))]) for row in cos], none, flat, flat + 1 / movies)
    assert by_cos.scale > 5.0 and abs(by_cos.trending) < 1e-6 and np.isfinite(by_cos.nll)
    # every user picks among the most trending movies, whatever the cosine: the trending weight carries it
    trend = np.arange(movies, dtype=np.float64)
    relevant = [np.array([movies - 1 - (i % 3)]) for i in range(users)]
    by_trend = fit_trending_prior(cos, relevant, none, trend, np.full(movies, 1 / movies))
    assert by_trend.trending > 2.0 and abs(by_trend.scale) < by_cos.scale
    # a movie the user rated is out of the softmax: masking the trending head moves the fit
    rated = [np.array([movies - 1, movies - 2, movies - 3])] * users
    shifted = [np.array([movies - 4]) for _ in range(users)]
    assert fit_trending_prior(cos, shifted, rated, trend, np.full(movies, 1 / movies)).trending > 2.0


class Unit:
    """Fixed unit vectors: movie m -> angle m, every user -> angle 0 (the cosine falls with the id)."""

    name, metric = "fixed", "cosine"

    def item_vectors(self, movies: pa.Table) -> np.ndarray:
        angle = movies.column("movieId").to_numpy().astype(np.float64) / 50.0
        return np.stack([np.cos(angle), np.sin(angle)], axis=1).astype(np.float32)

    def user_vectors(self, users: pa.Table) -> np.ndarray:
        return np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (users.num_rows, 1))


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared_small_release(tmp_path_factory.mktemp("prior"), seed=2)


def test_scores_and_shares_match_a_recomputation(samples: Path) -> None:
    days, half = 365, 30.0
    data = load_retrieval_data(samples, split="test", trending_days=days, trending_half_life_days=half)
    known = pa.concat_tables([pq.read_table(samples / f"{n}.parquet", columns=["movieId", "rating", "label",
                                                                                 "timestamp"])
                              for n in ("train", "valid")])
    t = known.to_pydict()
    want: dict[int, float] = {}
    for m, r, lab, ts in zip(t["movieId"], t["rating"], t["label"], t["timestamp"], strict=True):
        if data.test_start - 86400 * days <= ts < data.test_start:
            weight = (r if r is not None else lab) * 2.0 ** (-(data.test_start - ts) / (86400.0 * half))
            want[m] = want.get(m, 0.0) + weight
    rows = data.movie_rows.to_pydict()
    got = dict(zip(rows["movieId"], rows[TRENDING_SCORE], strict=True))
    assert any(v > 0 for v in got.values())
    assert all(got[m] == pytest.approx(want.get(m, 0.0), rel=1e-9, abs=1e-12) for m in got)
    # another list for the same data: order and scores replaced together
    other = with_trending(load_retrieval_data(samples, split="test"), days, half)
    assert other.prior.trending.tolist() == data.prior.trending.tolist()
    # (DuckDB's parallel sum may round the last bit differently from one run to the next)
    assert other.movie_rows.column(TRENDING_SCORE).to_pylist() == pytest.approx(rows[TRENDING_SCORE], rel=1e-12)
    shares = positive_shares(samples / "train.parquet")
    train = pq.read_table(samples / "train.parquet", columns=["movieId", "label"])
    positives = train.filter(pc.equal(train.column("label"), 1)).column("movieId").to_pylist()
    assert sum(shares.values()) == pytest.approx(1.0)
    some = positives[0]
    assert shares[some] == pytest.approx(positives.count(some) / len(positives))


def test_channel_ranks_by_the_score_without_rated_movies(samples: Path) -> None:
    data = load_retrieval_data(samples, split="test")
    ids = data.movie_rows.column("movieId").to_numpy()
    share = {int(m): 0.001 * (i % 5) for i, m in enumerate(ids)}
    prior = TrendingPrior(scale=2.0, trending=0.5, share=-0.2)
    vectors = TrendingTwoTower(Unit(), prior, share)
    channel = recall_channel(data, vectors)                   # the offline channel, as evaluate builds it
    unit = Unit().item_vectors(data.movie_rows)
    trend = np.asarray(data.movie_rows.column(TRENDING_SCORE).to_numpy(), dtype=np.float64)
    score = 2.0 * unit[:, 0] + prior.bias(trend, np.array([share[int(m)] for m in ids]))
    order = ids[np.lexsort((ids, -score))]
    for user in data.users[:5]:
        got = channel(user, 20)
        assert not np.isin(got, user.rated).any()
        assert got.tolist() == [int(m) for m in order if int(m) not in set(user.rated.tolist())][:20]
    # fitted on the validation split: finite weights, a working channel
    valid = load_retrieval_data(samples, split="valid")
    fitted = fit_on(valid, Unit(), share)
    assert np.isfinite([fitted.prior.scale, fitted.prior.trending, fitted.prior.share, fitted.prior.nll]).all()
    assert len(recall_channel(valid, fitted)(valid.users[0], 10)) == 10
    # a movie table without the trending scores (published without the trending list) is refused by name
    with pytest.raises(InputError) as err:
        vectors.item_vectors(data.movie_rows.drop_columns([TRENDING_SCORE]))
    assert err.value.field == TRENDING_SCORE
