"""Evaluate scores on a sample table: global metrics, per-user metrics, and a popularity baseline.

The report compares the model with the simplest honest baseline, **popularity**: each sample is scored by
``movieRatingCount``, the number of ratings the movie had *before* the sample's timestamp (a point-in-time
feature of the samples, so the baseline sees no future). It needs no training, and it is what a site shows
when it knows nothing about the user. Its scores are counts, not probabilities, so log loss and accuracy are
reported as ``None`` for it; the ranking metrics (AUC, PR-AUC, GAUC, NDCG@k, Recall@k, HitRate@k) apply.

Per-user metrics group by ``userId`` over the whole table (for ``test.parquet``: each user's items of the
test period); the rules for one-class users, short lists and ties are those of :mod:`deepcrossing.metrics`.

Example:
    >>> import numpy as np, pyarrow as pa
    >>> t = pa.table({"userId": [1, 1, 2, 2], "label": [1, 0, 0, 1], "movieRatingCount": [5, 9, 3, 1]})
    >>> r = evaluate_scores(t, np.array([0.8, 0.3, 0.4, 0.6]), k=1)
    >>> r["model"]["auc"], r["popularity"]["auc"]
    (1.0, 0.25)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from deepcrossing import metrics as M
from deepcrossing.errors import InputError

POPULARITY_COLUMN = "movieRatingCount"
POPULARITY_DEFINITION = (
    "score = movieRatingCount, the movie's number of ratings before the sample's timestamp "
    "(no training; not a probability, so logloss/accuracy do not apply)"
)
SPLITS = ("train", "valid", "test")

# Display order and labels of the metrics in reports (key -> label).
METRIC_LABELS = {
    "auc": "AUC",
    "logloss": "log loss",
    "accuracy": "accuracy@0.5",
    "pr_auc": "PR-AUC (AP)",
    "gauc": "GAUC",
    "ndcg": "NDCG@{k}",
    "recall": "Recall@{k}",
    "hit_rate": "HitRate@{k}",
}


def _column(table: pa.Table, name: str, source: str | Path | None) -> np.ndarray:
    if name not in table.column_names:
        raise InputError(
            f"the samples have no column {name!r} (columns: {', '.join(table.column_names)})",
            path=source, field=name,
        )
    col = table.column(name)
    if col.null_count:
        raise InputError(f"{col.null_count} rows have no {name}", path=source, field=name)
    return np.asarray(col.to_numpy())


def score_metrics(
    users: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    k: int = 10,
    probabilities: bool = True,
) -> dict[str, Any]:
    """All metrics of one scorer.

    Args:
        users: (N,) user ids (the groups of GAUC and the ranking metrics).
        labels: (N,) binary labels.
        scores: (N,) scores; probabilities in [0, 1] when ``probabilities`` is true.
        k: cut-off of NDCG/Recall/HitRate.
        probabilities: whether log loss and accuracy apply (``None`` otherwise).

    Returns:
        ``{"auc", "logloss", "accuracy", "pr_auc", "gauc", "gauc_users_used", "gauc_users_skipped",
        "ndcg", "recall", "hit_rate", "ranking_users_used", "ranking_users_skipped"}``; floats are
        ``None`` where undefined (e.g. AUC with one class), so the dict is valid JSON.

    Example:
        >>> score_metrics(np.array([1, 1]), np.array([1, 0]), np.array([0.9, 0.2]), k=1)["ndcg"]
        1.0
    """
    gauc = M.gauc(users, labels, scores)
    ndcg = M.ndcg_at_k(users, labels, scores, k=k)
    report: dict[str, Any] = {
        "auc": M.auc(labels, scores),
        "logloss": M.logloss(labels, scores) if probabilities else None,
        "accuracy": M.accuracy(labels, scores) if probabilities else None,
        "pr_auc": M.pr_auc(labels, scores),
        "gauc": gauc.value,
        "gauc_users_used": gauc.n_groups_used,
        "gauc_users_skipped": gauc.n_groups_skipped,
        "ndcg": ndcg.value,
        "recall": M.recall_at_k(users, labels, scores, k=k).value,
        "hit_rate": M.hit_rate_at_k(users, labels, scores, k=k).value,
        "ranking_users_used": ndcg.n_groups_used,
        "ranking_users_skipped": ndcg.n_groups_skipped,
    }
    return {key: (None if isinstance(v, float) and np.isnan(v) else v) for key, v in report.items()}


def evaluate_scores(
    table: pa.Table,
    scores: np.ndarray,
    *,
    k: int = 10,
    source: str | Path | None = None,
) -> dict[str, Any]:
    """Metrics of the model's ``scores`` on ``table``, next to the popularity baseline.

    Args:
        table: samples with at least ``userId`` and ``label`` (N rows); ``movieRatingCount`` for the
            baseline (without it the baseline is ``None`` and the report says why).
        scores: (N,) predicted probabilities, aligned with the table's rows.
        k: cut-off of the per-user ranking metrics.
        source: the samples file, only for error messages and the report.

    Returns:
        A JSON-ready dict: ``n_samples``, ``n_users``, ``positive_rate``, ``k``, ``model`` and
        ``popularity`` (each as :func:`score_metrics`), ``popularity_definition``, and ``source``.

    Raises:
        InputError: no rows, a needed column is missing or has nulls, or ``scores`` does not match the rows.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.shape[0] != table.num_rows:
        raise InputError(f"got {scores.shape[0]} scores for {table.num_rows} samples", path=source)
    if table.num_rows == 0:
        raise InputError("the file has no sample rows: nothing to evaluate (a split prepared with a fraction of "
                         "0?)", path=source)
    users = _column(table, "userId", source)
    labels = _column(table, "label", source)
    try:
        model = score_metrics(users, labels, scores, k=k, probabilities=True)
    except ValueError as exc:                       # bad labels in the file, or non-finite scores
        raise InputError(str(exc), path=source) from exc
    if POPULARITY_COLUMN in table.column_names:
        popularity_scores = table.column(POPULARITY_COLUMN).fill_null(0).to_numpy().astype(np.float64)
        popularity: dict[str, Any] | None = score_metrics(
            users, labels, popularity_scores, k=k, probabilities=False)
        definition = POPULARITY_DEFINITION
    else:
        popularity = None
        definition = f"not computed: the samples have no {POPULARITY_COLUMN} column"
    n = table.num_rows
    return {
        "source": None if source is None else str(source),
        "n_samples": n,
        "n_users": int(np.unique(users).shape[0]),
        "positive_rate": float(labels.mean()) if n else None,
        "k": k,
        "model": model,
        "popularity": popularity,
        "popularity_definition": definition,
    }


def find_split_file(samples: str | Path, split: str) -> Path:
    """The sample file of ``split`` in a samples folder: ``<split>.parquet`` or else ``<split>.csv``.

    Args:
        samples: a folder written by ``deepcrossing prepare`` (Parquet or ``--format sparrow`` CSV).
        split: ``train``, ``valid`` or ``test``.

    Raises:
        InputError: unknown split, or no such file in the folder.

    Example:
        >>> find_split_file("samples", "test")    # doctest: +SKIP
        PosixPath('samples/test.parquet')
    """
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}", field="split")
    folder = Path(samples)
    for name in (f"{split}.parquet", f"{split}.csv"):
        if (folder / name).is_file():
            return folder / name
    raise InputError(f"no {split}.parquet or {split}.csv here; run `deepcrossing prepare` first",
                     path=folder)


def metric_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The report as display rows ``(label, model, popularity)``, numbers formatted to 4 decimals."""

    def fmt(block: dict[str, Any] | None, key: str) -> str:
        if block is None or block.get(key) is None:
            return "-"
        return f"{block[key]:.4f}"

    k = report["k"]
    rows = [(label.format(k=k), fmt(report["model"], key), fmt(report["popularity"], key))
            for key, label in METRIC_LABELS.items()]
    model, pop = report["model"], report["popularity"] or {}
    rows.append(("users in GAUC (skipped)", f"{model['gauc_users_used']} ({model['gauc_users_skipped']})",
                 f"{pop.get('gauc_users_used', '-')} ({pop.get('gauc_users_skipped', '-')})"))
    rows.append((f"users in @{k} (skipped)",
                 f"{model['ranking_users_used']} ({model['ranking_users_skipped']})",
                 f"{pop.get('ranking_users_used', '-')} ({pop.get('ranking_users_skipped', '-')})"))
    return rows
