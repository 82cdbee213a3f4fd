"""Synthetic MovieLens-format rating logs of any size, with structure a model can learn.

The generative story (all numpy, vectorized, written in chunks of whole users so memory stays bounded):

* **Catalog.** ``n_movies ~ n/10`` (capped) movies, each with a latent taste vector (K dims), a quality bias,
  1-3 of the 18 MovieLens genres, and a release year. 40% of the catalog exists when the log starts; the rest
  arrive uniformly over the log period (movie ids follow arrival order) and are released the year they arrive.
  Popularity is Zipf-like (long tail), independent of arrival.
* **Users.** ``n_users ~ n/150`` users arrive uniformly over the log period (ids follow arrival order), each with a
  latent vector, a bias, a per-genre preference and a preference for old vs new films. Activity is lognormal
  (a few heavy raters, many light ones); each user's ratings fall in an active span after arrival, with
  strictly rising timestamps.
* **Choice.** At time t a user picks among movies that have arrived by t, by popularity; repeats of the same
  movie by one user are re-drawn a few times (rare leftovers stay, at distinct timestamps).
* **Rating.** ``3.3 + b_u + b_m + <p_u, q_m> + mean genre preference + year preference + noise``, rounded to
  the half-star 0.5..5.0 scale (mean ~3.5, sd ~1).

Files: ``ratings.csv`` (userId,movieId,rating,timestamp; sorted by user then time), ``movies.csv``
(movieId,title "Name (YYYY)",genres ``|``-separated) and ``synth.json`` (the parameters). Same seed and size,
same bytes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepcrossing.errors import InputError
from deepcrossing.outputs import OutputKind, Reservation, owned_dir

KIND = "deepcrossing.synth"
FILES = ("ratings.csv", "movies.csv", "synth.json")
#: A synthetic data folder: its synth.json says ``"kind": "deepcrossing.synth"`` (or, written before that key,
#: ``"format": "movielens-csv"`` with the generator's parameters).
SYNTH_OUTPUT = OutputKind(
    "synthetic data folder", "synth.json",
    lambda m: m.get("kind") == KIND or (m.get("format") == "movielens-csv" and "n_ratings" in m),
    lambda m: FILES)

GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
_GENRE_WEIGHT = np.array([8, 5, 2, 3, 10, 4, 2, 14, 3, 0.5, 4, 1.5, 2, 5, 3, 6, 1.5, 1], dtype=np.float64)
_ADJ = ("Silent", "Crimson", "Last", "Hidden", "Broken", "Golden", "Lost", "Wild", "Dark", "Bright", "Frozen",
        "Secret", "Endless", "Little", "Final", "Electric", "Quiet", "Burning", "Midnight", "Iron")
_NOUN = ("River", "Empire", "Garden", "Stranger", "Summer", "Machine", "Kingdom", "Road", "Island", "Promise",
         "Horizon", "Letter", "Storm", "Detective", "Dream", "Harbor", "Circus", "Winter", "Signal", "Mirror")

T_START = 946_684_800   # 2000-01-01
T_END = 1_577_836_800   # 2020-01-01


@dataclass(frozen=True)
class SynthConfig:
    """Sizes and knobs of the generator (defaults scale with ``n_ratings``).

    Args:
        n_ratings: ratings to write (exactly).
        n_movies / n_users: catalog and population; ``None`` = ``clip(n/10, 200, 30000)`` / ``max(60, n/150)``.
        dim: latent dimension K of user and movie tastes.
        zipf: popularity exponent (higher = longer head).
        noise: sd of the rating noise before rounding.
        chunk: ratings per written chunk (memory bound).
    """

    n_ratings: int
    n_movies: int | None = None
    n_users: int | None = None
    dim: int = 8
    zipf: float = 0.9
    noise: float = 0.45
    chunk: int = 1_000_000


def generate(n_ratings: int, out_dir: str | Path | Reservation, *, seed: int = 0, n_movies: int | None = None,
             n_users: int | None = None, chunk: int = 1_000_000, overwrite: bool = False) -> Path:
    """Write a synthetic MovieLens-format folder; return it.

    Args:
        n_ratings: number of ratings (>= 1000), e.g. 10_000 to 20_000_000+.
        out_dir: folder to (re)create atomically with ratings.csv, movies.csv, synth.json (new, empty or a
            previous synthetic folder; or a :class:`~deepcrossing.outputs.Reservation` of it).
        seed: the whole output is a function of (seed, sizes).
        n_movies, n_users: override the default catalog / population sizes.
        chunk: ratings generated and written per step (peak memory ~ a few hundred bytes x chunk).
        overwrite: write into a folder of other files (they are kept; a name clash is refused).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     folder = generate(10_000, Path(tmp) / "synthetic", seed=1)
        ...     (folder / "ratings.csv").read_text().splitlines()[0]
        'userId,movieId,rating,timestamp'
    """
    if n_ratings < 1000:
        raise InputError(f"n_ratings must be at least 1000, not {n_ratings}", field="n_ratings")
    cfg = SynthConfig(n_ratings=int(n_ratings),
                      n_movies=n_movies or int(np.clip(n_ratings // 10, 200, 30_000)),
                      n_users=n_users or int(max(60, n_ratings // 150)), chunk=int(chunk))
    target = out_dir if isinstance(out_dir, Reservation) else Path(out_dir)
    with owned_dir(target, SYNTH_OUTPUT, overwrite=overwrite) as tmp:
        try:
            _write(cfg, seed, tmp)
        except MemoryError:  # numpy's _ArrayMemoryError: the per-user arrays of a typo like 10**12 ratings
            raise InputError(f"{n_ratings:,} ratings ({cfg.n_users:,} users) need more memory than this machine "
                             "has; ask for fewer", field="n_ratings") from None
    return target.target if isinstance(target, Reservation) else target


def _write(cfg: SynthConfig, seed: int, out: Path) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    assert cfg.n_movies is not None and cfg.n_users is not None  # generate() fills them in
    M, U, K = cfg.n_movies, cfg.n_users, cfg.dim
    G = len(GENRES)

    # ---- movies (ids 1..M in arrival order)
    n_old = int(0.4 * M)
    arrival = np.concatenate([np.full(n_old, T_START, np.int64),
                              np.sort(rng.integers(T_START, T_END - 86_400 * 30, M - n_old))])
    arrival_year = 1970 + (arrival // 31_556_952)
    old_years = np.clip(np.round(1999 - rng.gamma(1.6, 12.0, n_old)), 1915, 1999).astype(np.int64)
    year = np.concatenate([old_years, arrival_year[n_old:]]).astype(np.int64)
    q = (rng.standard_normal((M, K)) / np.sqrt(K)).astype(np.float32)
    movie_bias = rng.normal(0.0, 0.35, M)
    n_genres = rng.choice([1, 2, 3], size=M, p=[0.35, 0.4, 0.25])
    genre_p = _GENRE_WEIGHT / _GENRE_WEIGHT.sum()
    # (M, G) multi-hot: pick genres by Gumbel top-k over weighted log-probabilities
    keys = np.log(genre_p)[None, :] + rng.gumbel(size=(M, G))
    order = np.argsort(-keys, axis=1)
    multi = np.zeros((M, G), dtype=np.float32)
    rows = np.arange(M)
    for j in range(3):
        sel = n_genres > j
        multi[rows[sel], order[sel, j]] = 1.0
    no_genre = rng.random(M) < 0.003
    multi[no_genre] = 0.0
    genre_norm = multi / np.maximum(multi.sum(1, keepdims=True), 1.0)
    pop_rank = rng.permutation(M) + 1
    weight = 1.0 / pop_rank.astype(np.float64) ** cfg.zipf
    movie_bias += 0.15 * (np.log(weight) - np.log(weight).mean()) / np.log(weight).std()  # popular ~ better
    cum_weight = np.cumsum(weight)      # over arrival order = id order

    # ---- users (ids 1..U in arrival order)
    u_arrival = np.sort(rng.integers(T_START, T_END - 86_400 * 7, U))
    span = np.minimum(np.exp(rng.normal(np.log(200 * 86_400), 1.2, U)), T_END - u_arrival).astype(np.int64)
    span = np.maximum(span, 3600)
    p = (rng.standard_normal((U, K)) / np.sqrt(K)).astype(np.float32)
    user_bias = rng.normal(0.0, 0.3, U)
    genre_pref = rng.normal(0.0, 0.6, (U, G)).astype(np.float32)
    year_pref = rng.normal(0.0, 0.4, U)
    activity = np.exp(rng.normal(0.0, 1.1, U))
    counts = 1 + rng.multinomial(cfg.n_ratings - U, activity / activity.sum()) if cfg.n_ratings > U * 2 else \
        rng.multinomial(cfg.n_ratings, activity / activity.sum())
    counts = counts.astype(np.int64)


    _write_movies(out, M, year, multi, rng)
    # ratings written as "4.0" / "3.5" like MovieLens: a dictionary over the 10 half-star strings
    stars = pa.array([f"{k / 2:.1f}" for k in range(11)])
    schema = pa.schema([("userId", pa.int64()), ("movieId", pa.int64()),
                        ("rating", pa.dictionary(pa.int8(), pa.string())), ("timestamp", pa.int64())])
    (out / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    ends = np.cumsum(counts)
    _CSV_OPTIONS = _csv_options()
    with open(out / "ratings.csv", "ab") as sink, pacsv.CSVWriter(sink, schema, write_options=_CSV_OPTIONS) as writer:
        start_user = 0
        while start_user < U:
            stop_user = int(np.searchsorted(ends, (ends[start_user - 1] if start_user else 0) + cfg.chunk,
                                            side="right"))
            stop_user = max(stop_user, start_user + 1)
            users = np.arange(start_user, min(stop_user, U))
            start_user = int(users[-1]) + 1
            c = counts[users]
            if c.sum() == 0:
                continue
            uid = np.repeat(users, c)                                    # (n,)
            local = np.arange(uid.size) - np.repeat(np.cumsum(c) - c, c)  # index within the user
            # strictly rising per user: sorted uniforms over the span, ties pushed one second on
            frac = rng.random(uid.size)
            seg = np.repeat(np.arange(users.size), c)
            frac = np.sort(frac + seg) - seg
            ts = u_arrival[uid] + (frac * span[uid]).astype(np.int64)
            big = np.int64(1) << 34
            ts = np.maximum.accumulate(ts - local + seg * big) - seg * big + local
            # choose among arrived movies by popularity
            n_avail = np.searchsorted(arrival, ts, side="right")        # >= n_old > 0
            movie = _pick(rng, cum_weight, n_avail)
            key = seg.astype(np.int64) * M + movie
            for _ in range(3):                                          # re-draw repeated (user, movie)
                _, first = np.unique(key, return_index=True)
                dup = np.ones(key.size, bool)
                dup[first] = False
                if not dup.any():
                    break
                movie[dup] = _pick(rng, cum_weight, n_avail[dup])
                key = seg.astype(np.int64) * M + movie
            score = (3.3 + user_bias[uid] + movie_bias[movie]
                     + np.einsum("nk,nk->n", p[uid], q[movie], dtype=np.float32) * 1.6
                     + np.einsum("ng,ng->n", genre_pref[uid], genre_norm[movie], dtype=np.float32)
                     + year_pref[uid] * (year[movie] - 1995) / 20.0
                     + rng.normal(0.0, cfg.noise, uid.size))
            rating = np.clip(np.round(score * 2.0) / 2.0, 0.5, 5.0)
            half = pa.array((rating * 2).astype(np.int8))
            writer.write_table(pa.table({"userId": uid + 1, "movieId": movie + 1,
                                         "rating": pa.DictionaryArray.from_arrays(half, stars),
                                         "timestamp": ts}, schema=schema))
    meta = asdict(cfg) | {"seed": seed, "t_start": T_START, "t_end": T_END, "format": "movielens-csv",
                               "kind": KIND, "files": list(FILES)}
    (out / "synth.json").write_text(json.dumps(meta, indent=2) + "\n")


def _csv_options() -> Any:
    import pyarrow.csv as pacsv

    # MovieLens files quote only titles holding commas; ours never do, so nothing is quoted
    return pacsv.WriteOptions(quoting_style="none", include_header=False)


def _pick(rng: np.random.Generator, cum_weight: np.ndarray, n_avail: np.ndarray) -> np.ndarray:
    """Popularity-weighted draw among the first ``n_avail`` movies (those arrived), per row; 0-based ids."""
    u = rng.random(n_avail.size) * cum_weight[n_avail - 1]
    picked: np.ndarray = np.minimum(np.searchsorted(cum_weight, u, side="right"), n_avail - 1)
    return picked


def _write_movies(out: Path, M: int, year: np.ndarray, multi: np.ndarray, rng: np.random.Generator) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    adj = rng.integers(0, len(_ADJ), M)
    noun = rng.integers(0, len(_NOUN), M)
    titles = [f"The {_ADJ[a]} {_NOUN[n]} {i + 1} ({y})" for i, (a, n, y) in enumerate(zip(adj, noun, year))]
    genres = ["|".join(GENRES[g] for g in np.flatnonzero(row)) or "(no genres listed)" for row in multi]
    table = pa.table({"movieId": np.arange(1, M + 1), "title": titles, "genres": genres})
    _CSV_OPTIONS = _csv_options()
    with open(out / "movies.csv", "wb") as sink:
        sink.write(b"movieId,title,genres\n")
        pacsv.write_csv(table, sink, write_options=_CSV_OPTIONS)
