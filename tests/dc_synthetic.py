"""Small synthetic sample tables in the samples schema (docs/design.md section 2), for model-stage tests.

The label depends on the features (user taste vs movie quality, genre overlap), so a model can learn it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from deepcrossing.config import Feature, FeatureSpec

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]


def sample_table(n: int = 400, seed: int = 0, n_users: int = 30, n_movies: int = 50) -> pa.Table:
    """``n`` rows with ids, numerics (some NaN), genre lists, recent positives and genre counts."""
    rng = np.random.default_rng(seed)
    users = rng.integers(1, n_users + 1, n)
    movies = rng.integers(1, n_movies + 1, n)
    movie_genre = movies % len(GENRES)
    user_taste = users % len(GENRES)
    user_avg = 2.5 + (users % 5) * 0.4
    movie_avg = 2.5 + (movies % 7) * 0.3
    logit = (user_avg - 3.3) * 2 + (movie_avg - 3.4) * 2 + (movie_genre == user_taste) * 1.5
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    user_avg_col = np.where(rng.random(n) < 0.1, np.nan, user_avg)
    genres = [[GENRES[g], GENRES[(g + 1) % len(GENRES)]] for g in movie_genre]
    recent = [list(rng.integers(1, n_movies + 1, rng.integers(0, 7))) for _ in range(n)]
    counts = [[(GENRES[t], int(3 + u % 4)), (GENRES[(t + 2) % len(GENRES)], 1)] for t, u in zip(user_taste, users)]
    return pa.table({
        "userId": pa.array(users, pa.int64()),
        "movieId": pa.array(movies, pa.int64()),
        "label": pa.array(label, pa.int8()),
        "movieGenres": pa.array(genres, pa.list_(pa.string())),
        "movieGenre1": pa.array([g[0] for g in genres], pa.string()),
        "userRecentPositives": pa.array(recent, pa.list_(pa.int64())),
        "userGenreCounts": pa.array(counts, pa.map_(pa.string(), pa.int64())),
        "userAvgRating": pa.array(user_avg_col, pa.float64(), from_pandas=True),
        "movieAvgRating": pa.array(movie_avg, pa.float64()),
        "movieRatingCount": pa.array(rng.integers(0, 500, n), pa.int64()),
        "userRatingCount": pa.array(rng.integers(0, 100, n), pa.int64()),
        "movieTag": pa.array([f"tag{m % 11}" for m in movies], pa.string()),
    })


def small_spec() -> FeatureSpec:
    """Every feature kind: categorical ids, shared tables, weighted bag, hashed, numerics, buckets."""
    return FeatureSpec((
        Feature("userId", "categorical", "user", dim=4, min_count=2),
        Feature("movieId", "categorical", "item", table="movie", dim=6),
        Feature("userRecentPositives", "multi_hot", "user", table="movie", max_len=5),
        Feature("movieGenres", "multi_hot", "item", table="genre", dim=3),
        Feature("movieGenre1", "categorical", "item", table="genre"),
        Feature("userGenreCounts", "multi_hot", "user", table="genre", weights_from="values", pooling="sum"),
        Feature("userAvgRating", "numeric", "user", transform="standardize"),
        Feature("movieAvgRating", "numeric", "item", transform="standardize"),
        Feature("movieRatingCount", "numeric", "item", transform="log1p_standardize"),
        Feature("userRatingCount", "numeric", "user", transform="buckets", n_buckets=4),
        Feature("movieTag", "hashed", "item", hash_buckets=7, dim=2),
    ))


def numeric_spec() -> FeatureSpec:
    """Numeric embeddings on both sides (ple, ple_tree, periodic; with and without ``dim``) beside ids, a
    weighted bag and a standardized column."""
    return FeatureSpec((
        Feature("movieId", "categorical", "item", dim=4),
        Feature("userGenreCounts", "multi_hot", "user", weights_from="values", dim=3),
        Feature("userAvgRating", "numeric", "user", transform="ple", n_buckets=4, dim=3),
        Feature("movieAvgRating", "numeric", "item", transform="periodic", n_frequencies=3, sigma=0.5, dim=4),
        Feature("movieRatingCount", "numeric", "item", transform="ple_tree", n_buckets=5),
        Feature("userRatingCount", "numeric", "user", transform="periodic", n_frequencies=2, sigma=0.3),
        Feature("userId", "numeric", "user", transform="standardize"),
    ))


def exported_scores(path: Path, fmt: str, inputs: list[torch.Tensor], input_names: list[str]) -> np.ndarray:
    """Scores of an exported model file on its flat inputs: TorchScript, or ONNX Runtime (whose session must
    take exactly ``input_names``, in order)."""
    if fmt == "torchscript":
        return torch.jit.load(str(path))(*inputs).detach().numpy()
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == input_names
    return session.run(None, {n: x.numpy() for n, x in zip(names, inputs, strict=True)})[0]


def write_small_release(folder: Path, seed: int) -> Path:
    """A tiny ml-latest-small-format release in ``folder`` (60 users x 12 of 40 movies, 4 genres): enough for
    ``prepare`` and ``train-recall`` end to end in a second. Returns ``folder``."""
    import random

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = [f"{u},{m},{rng.choice([2.0, 4.0, 4.5, 5.0])},{964982703 + 100 * j + u}"
             for u in range(1, 61) for j, m in enumerate(rng.sample(range(1, 41), 12))]
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(lines) + "\n")
    kinds = ["Drama", "Comedy", "Horror", "Action"]
    (folder / "movies.csv").write_text("movieId,title,genres\n" + "".join(
        f"{i},M{i} (199{i % 10}),{kinds[i % 4]}|{kinds[(i // 4) % 4]}\n" for i in range(1, 41)))
    return folder


def prepared_small_release(root: Path, seed: int) -> Path:
    """:func:`write_small_release` in ``root`` run through ``deepcrossing prepare``: the samples folder."""
    from typer.testing import CliRunner

    from deepcrossing.cli import app

    release = write_small_release(root / "ml-latest-small", seed=seed)
    res = CliRunner().invoke(app, ["prepare", "--data", str(release), "--out", str(root / "samples")])
    assert res.exit_code == 0, res.output
    return root / "samples"


def overlapping_lists(rng: np.random.Generator, step: int) -> list[np.ndarray]:
    """1-5 ranked id lists drawn from one small catalogue (ids ``step * i + 1``), so that they overlap; some
    empty or short, about one in five with a movie twice: the inputs a merge rule must get right."""
    catalogue = int(rng.integers(5, 300))
    lists = []
    for _ in range(int(rng.integers(1, 6))):
        size, twice = int(rng.integers(0, 80)), bool(rng.random() < 0.2)
        lists.append(rng.choice(catalogue, size=size if twice else min(size, catalogue), replace=twice) * step + 1)
    return lists


def optimizer_step(opts: list[torch.optim.Optimizer], objective: torch.Tensor) -> None:
    """One step of every optimizer of ``opts`` on ``objective`` (gradients cleared first), as the Trainer does."""
    for opt in opts:
        opt.zero_grad(set_to_none=True)
    objective.backward()
    for opt in opts:
        opt.step()


def write_splits(root: Path, train_rows: int = 800, valid_rows: int = 300, test_rows: int = 300) -> Path:
    """train/valid/test.parquet of :func:`sample_table` (seeds 0, 1, 2) in ``root``; returns ``root``."""
    import pyarrow.parquet as pq

    for split, (n, seed) in {"train": (train_rows, 0), "valid": (valid_rows, 1), "test": (test_rows, 2)}.items():
        pq.write_table(sample_table(n, seed=seed), root / f"{split}.parquet")
    return root


def train_cli_args(files: Path, out: Path, seed: int, *extra: str) -> list[str]:
    """``deepcrossing train`` arguments over :func:`write_splits`' files and ``files/spec.json``."""
    return ["train", "--train", str(files / "train.parquet"), "--valid", str(files / "valid.parquet"),
            "--test", str(files / "test.parquet"), "--spec", str(files / "spec.json"), "--out", str(out),
            "--seed", str(seed), "--device", "cpu", *extra]
