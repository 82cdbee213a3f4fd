"""Retrieval evaluation over a samples folder: users' state at the test start, relevant sets, the channels
available today, and the report (``deepcrossing evaluate --retrieval``, ``benchmarks/retrieval.py``).

Protocol (time split only): ``test_start`` is the manifest's boundary. Everything a channel sees comes from
the train and valid files (``timestamp < test_start``); the test file gives only the relevant sets. For each
user with a test row, the relevant set is the movies they rated positively (``label = 1``) in the test
period, minus the movies they had already rated before it (no channel may return those). Users without any
such movie are skipped and counted. The catalogue is ``items.parquet``; coverage@K is the share of it
recalled in any user's top K.

Example:
    >>> data = load_retrieval_data("samples")           # doctest: +SKIP
    >>> report = evaluate_retrieval(data, build_channels(data, load("model")), (50, 100))  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from deepcrossing.duck import connection, ident, sql_str
from deepcrossing.errors import InputError
from deepcrossing.jsonfile import read_json_object
from deepcrossing.features.columns import SERVED_PAIR, USER_ATTRIBUTES, movie_side_columns, user_side_columns
from deepcrossing.features.config import FeatureConfig
from deepcrossing.features.itemcf import COOCCURRENCE_SCHEMA, CoOccurrence, cooccurrence_sql, itemcf_scores
from deepcrossing.features.online import POPULARITY_ORDER, trending_sql, with_genre_ratings
from deepcrossing.features.pair import PAIR_INPUTS, genre_names, genre_occurrences, pair_features
from deepcrossing.training.artifact import LoadedModel
from deepcrossing.training.emb_vectors import EmbVectors
from deepcrossing.training.retrieval import Channel, IdArray, Prior, UserState, coverage_at_ks, emb_channel, \
    genre_channel, merge_channels, popularity_channel, recall_at_ks, trending_channel, vector_channel
from deepcrossing.training.retrieval_fusion import Fusion, fusion_merge
from deepcrossing.training.retrieval_merge import Ranker, weighted_merge
from deepcrossing.training.vectors import ItemVectors

REPORT_KIND = "deepcrossing.retrieval"
#: The column of ``RetrievalData.movie_rows`` (and of the movie table ``publish`` builds its vector channels from)
#: holding each movie's trending score at the start (the trending list's, 0 without one): the trending prior's T
#: (:mod:`deepcrossing.training.retrieval_prior`).
TRENDING_SCORE = "movieTrendingScore"
#: The default window of the ``trending`` channel (a recall folder's ``merge.trending_days`` replaces it:
#: ``train-recall`` chooses window and half-life, :mod:`deepcrossing.training.retrieval_trending`).
TRENDING_DAYS = 180

__all__ = ["REPORT_KIND", "TRENDING_DAYS", "TRENDING_SCORE", "RetrievalData", "build_channels", "evaluate_retrieval",
           "item_vectors", "load_retrieval_data", "ranker", "recall_channel", "split_start", "trending_lists",
           "trending_order", "with_trend_scores", "with_trending", "with_trending_list"]


@dataclass(frozen=True)
class RetrievalData:
    """A samples folder read for retrieval evaluation.

    Attributes:
        samples: the folder.
        test_start: first second of the test period.
        prior: popularity order and genre masks as of ``test_start``.
        users: per test user (by id), their :class:`UserState` at ``test_start``.
        relevant: per test user (same order), (R_u,) sorted relevant movie ids.
        movie_rows: one sample row per movie rated before ``test_start`` (its latest one), for item vectors,
            with :data:`TRENDING_SCORE` (the ``prior.trending`` list's score at ``test_start``).
        user_rows: per test user (same order as ``users``), the user-side columns of their first row in the
            evaluated split: features from their ratings before it, i.e. before ``test_start`` (the row a
            recall model's ``user_vectors`` gets, as the service's user record).
    """

    samples: Path
    test_start: int
    prior: Prior
    users: list[UserState]
    relevant: list[IdArray]
    movie_rows: pa.Table
    user_rows: pa.Table


def _ids(values: Any) -> IdArray:
    return np.asarray(values if values is not None else [], dtype=np.int64)


def _manifest(folder: Path) -> dict[str, Any]:
    return read_json_object(folder / "manifest.json")


def split_start(samples: str | Path, split: str) -> int:
    """The first second of the ``test`` or ``valid`` period of a time-split samples folder.

    Raises:
        InputError: an unreadable manifest, another split name, or a random split (no start).
    """
    if split not in ("test", "valid"):
        raise InputError(f"split must be test or valid, not {split!r}")
    manifest_path = Path(samples) / "manifest.json"
    start = (_manifest(Path(samples)).get("split") or {}).get(f"{split}_start")
    if not isinstance(start, int):
        raise InputError(f"retrieval evaluation needs a time split (prepare's default): the manifest has no "
                         f"split.{split}_start", path=manifest_path, field="split")
    return start


def load_retrieval_data(samples: str | Path, *, recent_n: int | None = None, split: str = "test",
                        trending_days: int = TRENDING_DAYS, trending_half_life_days: float | None = None
                        ) -> RetrievalData:
    """Read a Parquet samples folder (``train``/``valid``/``test.parquet``, ``items.parquet``, manifest).

    Args:
        samples: folder written by ``deepcrossing prepare`` with the time split.
        recent_n: recent positives per user (default: the manifest's ``recent_n``, else 10).
        split: ``test`` (stand at ``test_start``: train + valid known, test relevant), or ``valid`` for tuning
            (stand at ``valid_start``: train known, valid relevant; ``test_start`` then means ``valid_start``).
        trending_days: the window of ``Prior.trending`` (most rated in the last so many days).
        trending_half_life_days: its score's half-life (``None``: the count; a recall folder's
            ``merge.trending_half_life_days``, :func:`~deepcrossing.features.online.trending_sql`).

    Raises:
        InputError: a missing file, or a random split (no test start to stand at).
    """
    folder = Path(samples)
    manifest = _manifest(folder)
    test_start = split_start(folder, split)
    files = {name: folder / f"{name}.parquet" for name in ("train", "valid", "test", "items")}
    for path in files.values():
        if not path.is_file():
            raise InputError("missing file (retrieval evaluation reads a Parquet samples folder)", path=path)
    n = int(recent_n if recent_n is not None else (manifest.get("config") or {}).get("recent_n", 10))
    known = [files["train"], files["valid"]] if split == "test" else [files["train"]]
    target = files[split]
    prior_sql = (f"SELECT * FROM read_parquet([{', '.join(sql_str(f) for f in known)}], union_by_name = true) "
                 f"WHERE timestamp < {test_start}")
    with connection() as con:
        con.execute(f"CREATE TEMP VIEW prior AS {prior_sql}")
        con.execute(f"CREATE TEMP VIEW items AS SELECT item_id, genres FROM read_parquet({sql_str(files['items'])})")
        popular = con.sql(
            "SELECT i.item_id, i.genres FROM items i LEFT JOIN (SELECT movieId, COUNT(*) AS n, AVG(rating) AS avg "
            "FROM prior GROUP BY movieId) s ON s.movieId = i.item_id "
            f"ORDER BY {POPULARITY_ORDER}").to_arrow_table()
        trending_rows = con.sql(trending_sql("prior", "items", since=test_start - 86400 * int(trending_days),
                                             until=test_start, item="movieId", half_life_days=trending_half_life_days,
                                             with_score=True)).fetchnumpy()
        trending = trending_rows["item_id"]
        users = con.sql(f"""
            WITH t AS (SELECT DISTINCT userId FROM read_parquet({sql_str(target)})),
            rel AS (SELECT userId, list(DISTINCT movieId ORDER BY movieId) AS relevant
                    FROM read_parquet({sql_str(target)}) x
                    WHERE label = 1 AND timestamp >= {test_start}
                      AND NOT EXISTS (SELECT 1 FROM prior p WHERE p.userId = x.userId AND p.movieId = x.movieId)
                    GROUP BY userId),
            rated AS (SELECT userId, list(DISTINCT movieId ORDER BY movieId) AS rated FROM prior GROUP BY userId),
            pos AS (SELECT userId, list(movieId ORDER BY timestamp DESC, movieId)[1:{n}] AS recent
                    FROM prior WHERE label = 1 GROUP BY userId),
            ug AS (SELECT p.userId, unnest(i.genres) AS genre FROM prior p
                   JOIN items i ON i.item_id = p.movieId WHERE p.label = 1),
            g AS (SELECT userId, list(genre ORDER BY c DESC, genre) AS genres FROM (
                    SELECT userId, genre, COUNT(*) AS c FROM ug GROUP BY userId, genre) GROUP BY userId)
            SELECT t.userId, rel.relevant, rated.rated, pos.recent, g.genres FROM t
            LEFT JOIN rel USING (userId) LEFT JOIN rated USING (userId) LEFT JOIN pos USING (userId)
            LEFT JOIN g USING (userId) ORDER BY t.userId""").to_arrow_table()
        movie_rows = con.sql("SELECT * FROM prior QUALIFY row_number() OVER "
                             "(PARTITION BY movieId ORDER BY timestamp DESC, userId DESC) = 1 "
                             "ORDER BY movieId").to_arrow_table()
        present = set(con.sql(f"SELECT * FROM read_parquet({sql_str(target)}) LIMIT 0").columns)
        user_cols = ", ".join(ident(c) for c in (*user_side_columns(), *USER_ATTRIBUTES) if c in present)
        user_rows = con.sql(f"SELECT {user_cols} FROM read_parquet({sql_str(target)}) QUALIFY row_number() OVER "
                            "(PARTITION BY userId ORDER BY timestamp, movieId) = 1 ORDER BY userId").to_arrow_table()
        # the per-genre rating sums the pair columns need (as the online record has them; issue 11)
        user_rows = with_genre_ratings(con, user_rows, "prior", "items", "userId", "movieId")
    order = _ids(popular.column("item_id").to_numpy())
    masks: dict[str, NDArray[np.bool_]] = {}
    for row, genres in enumerate(popular.column("genres").to_pylist()):
        for genre in genres or []:
            masks.setdefault(genre, np.zeros(order.size, dtype=bool))[row] = True
    cols = users.to_pydict()
    states = [UserState(int(u), _ids(r), _ids(p), tuple(g or ()))
              for u, r, p, g in zip(cols["userId"], cols["rated"], cols["recent"], cols["genres"], strict=True)]
    prior = Prior(order, masks, _ids(trending))
    movie_rows = with_trend_scores(movie_rows, dict(zip(trending.tolist(), trending_rows["score"].tolist(),
                                                        strict=True)))
    return RetrievalData(folder, test_start, prior, states, [_ids(r) for r in cols["relevant"]], movie_rows, user_rows)


def with_trend_scores(movie_rows: pa.Table, scores: Mapping[int, float]) -> pa.Table:
    """``movie_rows`` with :data:`TRENDING_SCORE` (replaced if there): each movie's trending score from
    ``scores`` (movieId -> score; 0 for a movie without one). Offline here, and at ``publish`` for the vector
    channels."""
    column = pa.array([float(scores.get(int(m), 0.0)) for m in movie_rows.column("movieId").to_pylist()],
                      pa.float64())
    if TRENDING_SCORE in movie_rows.column_names:
        return movie_rows.set_column(movie_rows.column_names.index(TRENDING_SCORE), TRENDING_SCORE, column)
    return movie_rows.append_column(TRENDING_SCORE, column)


def with_trending_list(data: RetrievalData, order: IdArray, scores: NDArray[np.float64]) -> RetrievalData:
    """``data`` with another trending list: ``order`` as ``prior.trending`` and its ``scores`` (same order) in
    ``movie_rows``' :data:`TRENDING_SCORE`."""
    return replace(data, prior=replace(data.prior, trending=order),
                   movie_rows=with_trend_scores(data.movie_rows, dict(zip(order.tolist(), scores.tolist(),
                                                                         strict=True))))


def with_trending(data: RetrievalData, days: int, half_life_days: float | None) -> RetrievalData:
    """``data`` with the trending list of the ``days`` before its start with ``half_life_days``
    (:func:`trending_lists`)."""
    return with_trending_list(data, *trending_lists(data.samples, data.test_start,
                                                    [(days, half_life_days)])[(days, half_life_days)])


def trending_lists(samples: str | Path, start: int, pairs: Sequence[tuple[int, float | None]]
                   ) -> dict[tuple[int, float | None], tuple[IdArray, NDArray[np.float64]]]:
    """For each ``(days, half-life)`` of ``pairs``, (M,) the catalogue in
    :func:`~deepcrossing.features.online.trending_sql`'s order as of ``start`` and (M,) each movie's score
    (0 without a rating in the window), from the ratings of the samples folder's train and valid files before
    ``start`` (read once, one connection for all)."""
    folder = Path(samples)
    files = ", ".join(sql_str(folder / f"{name}.parquet") for name in ("train", "valid"))
    out: dict[tuple[int, float | None], tuple[IdArray, NDArray[np.float64]]] = {}
    with connection() as con:
        con.execute("CREATE TEMP TABLE prior AS SELECT movieId, rating, label, timestamp FROM "
                    f"read_parquet([{files}], union_by_name = true) WHERE timestamp < {int(start)}")
        con.execute(f"CREATE TEMP VIEW items AS SELECT item_id FROM read_parquet({sql_str(folder / 'items.parquet')})")
        for days, half in pairs:
            rows = con.sql(trending_sql("prior", "items", since=int(start) - 86400 * int(days), until=int(start),
                                        item="movieId", half_life_days=half, with_score=True)).fetchnumpy()
            out[(days, half)] = (_ids(rows["item_id"]), np.asarray(rows["score"], dtype=np.float64))
    return out


def trending_order(data: RetrievalData, *, days: int = TRENDING_DAYS, half_life_days: float | None = None) -> IdArray:
    """(M,) the catalogue in :func:`~deepcrossing.features.online.trending_sql`'s order as of ``data``'s start
    (the ratings of its samples folder before it), for another window or half-life than ``data.prior``'s."""
    return trending_lists(data.samples, data.test_start, [(days, half_life_days)])[(days, half_life_days)][0]


def item_vectors(loaded: LoadedModel, movie_rows: pa.Table) -> tuple[IdArray, NDArray[np.float32]]:
    """The model's unit item vectors (:class:`~deepcrossing.training.emb_vectors.EmbVectors`, as the
    service's ``emb`` channel) of the movies in ``movie_rows`` (sample rows holding the item-side columns).

    Returns:
        ((V,) movie ids, (V, H) float32 unit vectors).
    """
    emb = EmbVectors(loaded).fit(movie_rows)
    return emb.ids_, emb.unit_


def ranker(data: RetrievalData, loaded: LoadedModel) -> Ranker:
    """The ranking model as ``(i, movie ids) -> scores`` for ``data.users[i]``: the user's row of
    ``data.user_rows`` (features as of the start) beside each movie's latest row, through ``loaded.predict``
    (as the service ranks its candidates); a movie without a row (never rated before the start) scores ``-inf``.
    The pair columns are computed as the service does: the genre ones from the user row, ``userItemCFScore``
    (when the model reads it) from the co-occurrence lists and the user's last ratings before the start.

    Example:
        >>> rank = ranker(load_retrieval_data("samples", split="valid"), load("model"))   # doctest: +SKIP
        >>> rank(0, np.array([1, 2, 3])).shape                                           # doctest: +SKIP
        (3,)
    """
    row_of = {int(m): i for i, m in enumerate(data.movie_rows.column("movieId").to_numpy())}
    movies = data.movie_rows.select([c for c in movie_side_columns() if c in data.movie_rows.column_names])
    user_cols = [c for c in (*user_side_columns(), *USER_ATTRIBUTES) if c in data.user_rows.column_names
                 and c != "userId"]   # the static user attributes too, when the samples have them
    users = data.user_rows.select(user_cols)
    pair = any(f.name in SERVED_PAIR for f in loaded.spec.features)
    names = list(genre_names(movies.column("movieGenres"))) if pair and "movieGenres" in movies.column_names else []
    itemcf = _itemcf_at_start(data) if any(f.name == "userItemCFScore" for f in loaded.spec.features) else None

    def rank(i: int, ids: IdArray) -> NDArray[np.float64]:
        out = np.full(len(ids), -np.inf)
        known = np.array([int(m) in row_of for m in ids], dtype=bool)
        if known.any():
            table = movies.take(pa.array([row_of[int(m)] for m in ids[known]], pa.int64()))
            repeat = pa.array(np.full(int(known.sum()), i, dtype=np.int64))
            for col in user_cols:
                table = table.append_column(col, users.column(col).take(repeat))
            if pair and "movieGenres" in table.column_names:   # the user x movie columns, as the service has them
                record = data.user_rows.slice(i, 1).select([c for c in PAIR_INPUTS if c in data.user_rows.column_names])
                occ = genre_occurrences(table.column("movieGenres"), pa.array(names, pa.string()))
                for col, values in pair_features(record.to_pylist()[0], occ, names).items():
                    table = table.append_column(col, values)
            if itemcf is not None:   # as the service: the user's last ratings against the co-occurrence lists
                cooccurrence, n, histories = itemcf
                movies_j, ratings_j = histories.get(data.users[i].user_id, (_ids([]), np.zeros(0)))
                scores = itemcf_scores(movies_j, ratings_j, _ids(ids[known]), cooccurrence, n)
                table = table.append_column("userItemCFScore", pa.array(scores, pa.float64(), from_pandas=True))
            out[known] = np.asarray(loaded.predict(table), dtype=np.float64)
        return out

    return rank


def _itemcf_at_start(data: RetrievalData) -> tuple[CoOccurrence, int, dict[int, tuple[IdArray, NDArray[np.float64]]]]:
    """``userItemCFScore``'s inputs as of ``data``'s start (the service's at ``t_end``): the co-occurrence lists
    of the positives before it, the samples' ``itemcf_history`` and each user's last so many ratings before it
    (most recent first, then smaller movieId; NULL ratings as NaN)."""
    config = FeatureConfig.from_dict(_manifest(data.samples).get("config") or {})
    files = ", ".join(sql_str(data.samples / f"{name}.parquet") for name in ("train", "valid"))
    n = config.itemcf_history
    with connection() as con:
        con.execute(f"CREATE TEMP VIEW prior AS SELECT * FROM read_parquet([{files}], union_by_name = true) "
                    f"WHERE timestamp < {data.test_start}")
        table = con.sql(cooccurrence_sql("(SELECT userId AS user_id, movieId AS item_id, timestamp FROM prior "
                                         "WHERE label = 1)", config.itemcf_window)).to_arrow_table()
        rows = con.sql(f"SELECT userId, list({{'m': movieId, 'r': rating}} ORDER BY timestamp DESC, movieId)[1:{n}] "
                       "AS h FROM prior GROUP BY userId").fetchall()
    histories = {int(u): (_ids([x["m"] for x in h]), np.array([np.nan if x["r"] is None else x["r"] for x in h],
                                                            dtype=np.float64)) for u, h in rows}
    return CoOccurrence.from_table(table.cast(COOCCURRENCE_SCHEMA)), n, histories


def recall_channel(data: RetrievalData, vectors: ItemVectors) -> Channel:
    """A vector recall model as a channel, through its two served calls: ``item_vectors`` of every movie
    row and ``user_vectors`` of every test user's row (:func:`~deepcrossing.training.retrieval.vector_channel`)."""
    ids = _ids(data.movie_rows.column("movieId").to_numpy())
    users = vectors.user_vectors(data.user_rows)                                     # (U, D)
    by_user = {u.user_id: users[i] for i, u in enumerate(data.users)}
    return vector_channel(data.prior, ids, vectors.item_vectors(data.movie_rows), by_user, vectors.metric)


def build_channels(data: RetrievalData, loaded: LoadedModel | None = None,
                   recall: Mapping[str, ItemVectors] | None = None,
                   merge: Mapping[str, float] | None = None, head_weights: Mapping[str, float] | None = None,
                   head: int = 100, fusion: Fusion | None = None) -> dict[str, Channel]:
    """The channels: ``popularity``, ``trending``, ``genres``, with a model ``emb``, one per recall model of ``recall``
    (``two_tower``, ``item2vec``, ...), and ``merged``.

    ``merged`` is :func:`~deepcrossing.training.retrieval.weighted_merge` with ``merge`` (channel -> weight,
    chosen on the validation split by ``train-recall``) when given, its first ``head`` movies by
    ``head_weights`` when given (the manifest's ``merge.head_weights`` and ``merge.k``), else the round-robin
    of emb, the recall models, genres and popularity; with ``fusion`` (the manifest's ``merge.rule`` is
    ``fusion``: :func:`~deepcrossing.training.retrieval_fusion.fusion_of`), the fused channel instead.
    """
    channels = {"popularity": popularity_channel(data.prior), "trending": trending_channel(data.prior),
                "genres": genre_channel(data.prior)}
    if loaded is not None:
        channels["emb"] = emb_channel(data.prior, *item_vectors(loaded, data.movie_rows))
    for name, vectors in (recall or {}).items():
        channels[name] = recall_channel(data, vectors)
    if fusion is not None:
        channels["merged"] = fusion_merge(channels, fusion)
    elif merge:
        names = list(dict.fromkeys([*merge, *(head_weights or {})]))
        missing = sorted(set(names) - set(channels))
        if missing:
            raise InputError(f"the merge names channel(s) {missing} that are not built here")
        channels["merged"] = weighted_merge(
            [channels[c] for c in names], [float(merge.get(c, 0.0)) for c in names], head=head,
            head_weights=None if head_weights is None else [float(head_weights.get(c, 0.0)) for c in names])
    else:
        order = ["emb", *(recall or {}), "genres", "trending", "popularity"]
        channels["merged"] = merge_channels([channels[c] for c in order if c in channels])
    return channels


def evaluate_retrieval(data: RetrievalData, channels: Mapping[str, Channel], ks: Sequence[int]) -> dict[str, Any]:
    """Recall@K and coverage@K of every channel (each asked once per user for max(ks) movies).

    Returns:
        A JSON-ready report: ``channels`` -> ``{recall: {K: r}, recall_warm: {K: r}, coverage: {K: c}, seconds}``
        (``recall_warm``: over the ``n_warm_users`` with a positive before the test start), user counts, the
        catalogue size, ``test_start`` and the protocol in words.
    """
    ks = tuple(sorted(set(ks)))
    top = max(ks)
    out: dict[str, Any] = {}
    result = None
    warm = [i for i, user in enumerate(data.users) if user.recent_positives.size]
    for name, channel in channels.items():
        started = time.perf_counter()
        ranked = [channel(user, top) for user in data.users]
        result = recall_at_ks(ranked, data.relevant, ks)
        on_warm = recall_at_ks([ranked[i] for i in warm], [data.relevant[i] for i in warm], ks)
        out[name] = {"recall": {str(k): v for k, v in result.recall.items()},
                     "recall_warm": {str(k): v for k, v in on_warm.recall.items()},
                     "coverage": {str(k): v for k, v in
                                  coverage_at_ks(ranked, ks, data.prior.popular.size).items()},
                     "seconds": round(time.perf_counter() - started, 3)}
    n_users = result.n_users if result is not None else sum(1 for r in data.relevant if r.size)
    n_warm = sum(1 for i in warm if data.relevant[i].size)
    return {"kind": REPORT_KIND, "samples": str(data.samples), "test_start": data.test_start, "ks": list(ks),
            "n_test_users": len(data.users), "n_users": n_users, "n_skipped": len(data.users) - n_users,
            "n_warm_users": n_warm,
            "catalogue_size": int(data.prior.popular.size), "channels": out,
            "protocol": "relevant = movies a test user rated positively in the test period and had not rated "
                        "before it; channels see only ratings before test_start and leave out rated movies; "
                        "recall averaged over users with >= 1 relevant movie (recall_warm: over those of them "
                        "with >= 1 positive before test_start); coverage = distinct recalled movies / catalogue"}
