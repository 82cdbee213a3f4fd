"""Synthetic data: deterministic, the asked size, rising per-user time, arrivals respected, learnable."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest

from deepcrossing.data import load_dataset
from deepcrossing.data.synth import generate
from deepcrossing.errors import InputError


@pytest.fixture(scope="module")
def synth_50k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(50_000, tmp_path_factory.mktemp("s") / "synthetic", seed=3)


def digest(folder: Path) -> str:
    return hashlib.sha256((folder / "ratings.csv").read_bytes() + (folder / "movies.csv").read_bytes()).hexdigest()


def test_deterministic_by_seed(tmp_path: Path) -> None:
    a = generate(12_000, tmp_path / "a", seed=7, chunk=5_000)
    b = generate(12_000, tmp_path / "b", seed=7, chunk=5_000)
    c = generate(12_000, tmp_path / "c", seed=8, chunk=5_000)
    assert digest(a) == digest(b) != digest(c)
    assert json.loads((a / "synth.json").read_text())["seed"] == 7


def test_sizes_and_format(synth_50k: Path, tmp_path: Path) -> None:
    lines = (synth_50k / "ratings.csv").read_text().splitlines()
    assert lines[0] == "userId,movieId,rating,timestamp" and len(lines) == 50_001
    assert lines[1].split(",")[2] in {f"{k / 2:.1f}" for k in range(1, 11)}
    movies = (synth_50k / "movies.csv").read_text().splitlines()
    assert movies[0] == "movieId,title,genres" and len(movies) == 5_001        # n/10 movies
    ds = load_dataset(synth_50k, workdir=tmp_path / "w")                      # valid MovieLens input
    n, users, mean, sd, lo, hi = duckdb.sql(
        f"SELECT count(*), count(DISTINCT user_id), avg(rating), stddev(rating), min(rating), max(rating) "
        f"FROM read_parquet('{ds.ratings}')").fetchall()[0]
    assert n == 50_000 and 250 <= users <= 333 and ds.name == "synthetic"
    assert 3.3 < mean < 3.8 and 0.8 < sd < 1.2 and (lo, hi) == (0.5, 5.0)
    years = duckdb.sql(f"SELECT count(year), count(*), count(*) FILTER (WHERE len(genres) > 0) "
                       f"FROM read_parquet('{ds.items}')").fetchall()[0]
    assert years[0] == years[1] == 5_000 and years[2] > 4_950


def test_time_rises_per_user_and_movies_after_arrival(synth_50k: Path) -> None:
    con = duckdb.connect()
    con.execute(f"CREATE TABLE r AS SELECT *, row_number() OVER () AS rn FROM read_csv('{synth_50k}/ratings.csv')")
    not_rising = con.execute("SELECT count(*) FROM (SELECT timestamp - lag(timestamp) OVER "
                             "(PARTITION BY userId ORDER BY rn) AS d FROM r) WHERE d <= 0").fetchall()[0][0]
    assert not_rising == 0
    assert con.execute("SELECT count(*) - count(DISTINCT (userId, movieId, timestamp)) FROM r").fetchall()[0][0] == 0
    # movies arrive over time: the first rating of later ids comes later (ids follow arrival)
    first = con.execute("SELECT movieId, min(timestamp) AS t FROM r GROUP BY movieId ORDER BY movieId").fetchnumpy()
    ids, t_first = first["movieId"], first["t"]
    assert np.corrcoef(ids, t_first)[0, 1] > 0.5
    new = ids > 2_000 + 500      # beyond the initial 40% catalog
    assert np.median(t_first[new]) > np.median(t_first[~new]) + 3 * 365 * 86_400
    # a movie is never rated before its release year begins
    bad = con.execute(f"""SELECT count(*) FROM r JOIN (SELECT movieId,
            CAST(regexp_extract(title, '\\((\\d{{4}})\\)$', 1) AS INTEGER) AS y FROM read_csv('{synth_50k}/movies.csv'))
            USING (movieId) WHERE year(to_timestamp(timestamp)) < y""").fetchall()[0][0]
    assert bad == 0
    # users arrive over time too, and activity is skewed (long tail)
    counts = con.execute("SELECT count(*) c FROM r GROUP BY userId ORDER BY c DESC").fetchnumpy()["c"]
    assert counts[: len(counts) // 10].sum() > 0.3 * counts.sum()
    pop = con.execute("SELECT count(*) c FROM r GROUP BY movieId ORDER BY c DESC").fetchnumpy()["c"]
    assert pop[: len(pop) // 100].sum() > 0.1 * pop.sum()    # top 1% of movies: >10% of ratings


def test_structure_is_learnable(synth_50k: Path) -> None:
    con = duckdb.connect()
    con.execute(f"""CREATE TABLE r AS SELECT r.*, hash(r.userId, r.movieId, r.timestamp) % 5 = 0 AS test,
                    m.genres FROM read_csv('{synth_50k}/ratings.csv') r
                    JOIN read_csv('{synth_50k}/movies.csv') m USING (movieId)""")
    # per-user mean + the user's mean residual on each of the movie's genres, fitted on train rows only
    pred = con.execute("""
        WITH tr AS (SELECT * FROM r WHERE NOT test),
             um AS (SELECT userId, avg(rating) AS mu FROM tr GROUP BY userId),
             g AS (SELECT tr.userId, unnest(string_split(genres, '|')) AS genre, rating - mu AS res
                   FROM tr JOIN um USING (userId)),
             ug AS (SELECT userId, genre, sum(res) / (count(*) + 5) AS pref FROM g GROUP BY ALL),
             te AS (SELECT t.*, unnest(string_split(genres, '|')) AS genre FROM r t WHERE test)
        SELECT te.rating AS y, any_value(um.mu) + coalesce(avg(ug.pref), 0) AS p
        FROM te JOIN um USING (userId) LEFT JOIN ug USING (userId, genre)
        GROUP BY te.userId, te.movieId, te.timestamp, te.rating""").fetchnumpy()
    y, p = pred["y"], pred["p"]
    corr = np.corrcoef(y, p)[0, 1]
    shuffled = np.corrcoef(y, np.random.default_rng(0).permutation(p))[0, 1]
    assert len(y) > 8_000
    print(f"held-out correlation {corr:.3f}, shuffled {shuffled:.3f}")
    assert corr > 0.3 and corr - abs(shuffled) > 0.25, (corr, shuffled)


def test_too_small_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="at least 1000"):
        generate(10, tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_cli_synth_and_info(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "deepcrossing.cli", "data", "synth", "--ratings", "10000",
                          "--out", str(tmp_path / "s"), "--seed", "1"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert len((tmp_path / "s" / "ratings.csv").read_text().splitlines()) == 10_001
    info = subprocess.run([sys.executable, "-m", "deepcrossing.cli", "data", "info", str(tmp_path / "s")],
                          capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    assert "ratings      10,000" in info.stdout and "synthetic" in info.stdout
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "movies.csv").write_text("movieId,title,genres\n1,A (2000),Drama\n")
    (bad / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,10\n1,1,x,11\n")
    info = subprocess.run([sys.executable, "-m", "deepcrossing.cli", "data", "info", str(bad)],
                          capture_output=True, text=True)
    assert info.returncode == 2
    assert f"{bad / 'ratings.csv'}:3: field rating: not a number: 'x'" in " ".join(info.stderr.split())
    skip = subprocess.run([sys.executable, "-m", "deepcrossing.cli", "data", "info", str(bad),
                           "--skip-bad-rows"], capture_output=True, text=True)
    assert skip.returncode == 0 and "skipped      1 bad rows in ratings.csv" in skip.stdout


def test_a_size_beyond_memory_is_one_input_error(tmp_path):
    """`data synth --ratings 1000000000000` (and `quickstart --ratings ...`) crashed with numpy's
    `_ArrayMemoryError: Unable to allocate 49.7 GiB ...` traceback; now one error, and nothing is left behind."""
    from deepcrossing.errors import InputError

    with pytest.raises(InputError, match=r"field n_ratings: 100,000,000,000,000,000 ratings .* need more memory"):
        generate(10**17, tmp_path / "synth")
    assert list(tmp_path.iterdir()) == []
