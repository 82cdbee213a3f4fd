"""SparrowRecSys-compatible answers, no HTTP: the JSON of SparrowRecSys's Java servlets (Jackson), from the
engine and the store, so that its web front-end runs unchanged against this service.

=======================================================  ==========================================================
route (:mod:`deepcrossing.serving.routers.compat`)       answer
=======================================================  ==========================================================
``/getrecommendation?genre=G&size=N&sortby=S``           the genre's movies by ``averageRating`` (``S=rating``,
                                                         the default) or ``releaseYear`` (``S=releaseYear``),
                                                         highest first, ties by smaller ``movieId``: [Movie]
``/getrecforyou?id=U&size=N&model=M``                    ``M=emb``: embedding recall (below); any other value
                                                         (``nerualcf``, ``deepcrossing``, ...) or none: the
                                                         service's ranking (:meth:`Engine.recommend`): [Movie]
``/getsimilarmovie?movieId=M&size=N&model=emb``          the movie's nearest movies by item vector: item2vec
                                                         when the version has it, else ``emb`` (below;
                                                         ``model`` is accepted and ignored): [Movie]
``/getmovie?id=M``                                       Movie
``/getuser?id=U``                                        User
=======================================================  ==========================================================

Shapes (exactly SparrowRecSys's): **Movie** ``{movieId: int, title: str (without the trailing " (YYYY)"),
releaseYear: int (-1 when unknown, as SparrowRecSys), imdbId: str|null, tmdbId: str|null (from links.csv;
null when the data has none), genres: [str], ratingNumber: int, averageRating: number (0 when unrated, as
Java's default), topRatings: [{"rating": Rating}] (at most 10: highest score first, then most recent)}``;
**User** ``{userId, averageRating, highestRating, lowestRating, ratingCount, ratings: [{"rating": Rating}]}``
(``ratings``: the user's most recent ratings, at most 1,000, most recent first; the four numbers are over all
of them); **Rating** ``{movieId: int, userId: int, score: number, timestamp: int}``.

Embedding recall (``model=emb``), as SparrowRecSys does it: the user vector is the mean of the unit item
vectors of the user's recent positive movies (``userRecentPositives``; :class:`~deepcrossing.training.
emb_vectors.EmbVectors`, the item vectors being the movie-side partials of the first MLP layer), searched in
the version's stored ``emb`` channel (its index, exact or HNSW: :func:`deepcrossing.serving.recall.
index_channel`, the search the merged recall uses; a version published without vectors gets the channel
from the served model's partials, exact): the top ``size`` movies, ties by smaller id, leaving out every movie
the user rated. A user with no positives (an unknown user too) gets the candidates in popularity order,
minus what they rated. Every other ``model`` goes through :meth:`Engine.recommend`, so it follows whatever
the service's ranking does.

Similar movies (``/getsimilarmovie``) search the same way from the movie's own vector, in the version's
``item2vec`` channel when it has one and the movie has an item2vec vector (SparrowRecSys's similar movies
are its item2vec embeddings: movies rated in the same sessions), else in the ``emb`` channel (movies the
ranking model treats alike); the movie itself is left out.

Bad and unknown input (never a 500):

* malformed parameters: a JSON 422 ``{"error": "invalid_request", "detail": [...]}``: a missing ``id`` /
  ``movieId`` / ``genre`` / ``size``, an id that is not a 64-bit integer, ``size`` outside 1..
  :data:`MAX_SIZE`, ``sortby`` other than ``rating`` / ``releaseYear``;
* unknown things: list answers are ``[]`` (an unknown genre, ``getsimilarmovie`` of an unknown movie), as
  SparrowRecSys answers nothing; ``getmovie`` / ``getuser`` of an unknown id is a JSON 404
  ``{"error": "not_found", ...}``; ``getrecforyou`` of an unknown user is a cold-start list (as
  ``/recommend``), never an error;
* no store version to serve: the JSON 503 of every route.

The Movie objects of a store version are built once, on the first compat request after the version is served
(:meth:`Compat.catalog`: one read of every movie record), and then answered from memory.

Example:
    >>> display_title("Toy Story (1995)"), display_title("Babylon 5"), display_title(None)
    ('Toy Story', 'Babylon 5', '')
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepcrossing.serving.channels import VectorChannel, emb_channel
from deepcrossing.serving.engine import Engine, UserRead
from deepcrossing.serving.recall import index_channel, user_state
from deepcrossing.serving.snapshot import Snapshot
from deepcrossing.serving.store import Record, StoreError
from deepcrossing.training.retrieval import Prior

__all__ = ["MAX_SIZE", "SORT_BY", "Catalog", "Compat", "display_title", "emb_recall", "movie_json", "similar_ids",
           "user_json"]

MAX_SIZE = 1000                       # the largest ``size`` a compat request may ask for
SORT_BY = ("rating", "releaseYear")
RANK_CANDIDATES = 800                 # candidates ranked for ``getrecforyou`` by the model (as SparrowRecSys)
_YEAR_SUFFIX = re.compile(r"\s*\(\d{4}\)\s*$")


def display_title(title: str | None) -> str:
    """The title without its trailing ``(YYYY)``, as SparrowRecSys shows it (``""`` when there is none)."""
    return _YEAR_SUFFIX.sub("", title).strip() if title else ""


def _rating(movie_id: Any, user_id: Any, score: Any, timestamp: Any) -> dict[str, Any]:
    """One ``{"rating": Rating}`` (a label-only log has no score: 0.0)."""
    return {"rating": {"movieId": int(movie_id), "userId": int(user_id),
                       "score": 0.0 if score is None else float(score), "timestamp": int(timestamp)}}


def movie_json(movie_id: int, record: Record) -> dict[str, Any]:
    """A store movie record as SparrowRecSys's Movie. A version published before the display keys existed
    gets the count and mean from the movie's features and no links or top ratings.

    Example:
        >>> movie_json(1, {"title": "Toy Story (1995)", "year": 1995, "genres": ["Comedy"], "imdbId": "0114709",
        ...                "tmdbId": "862", "ratingNumber": 2, "averageRating": 4.25,
        ...                "topRatings": [[7, 4.5, 964982703]], "features": {}})["topRatings"]
        [{'rating': {'movieId': 1, 'userId': 7, 'score': 4.5, 'timestamp': 964982703}}]
    """
    features = record.get("features") or {}
    count = record.get("ratingNumber", features.get("movieRatingCount"))
    average = record.get("averageRating", features.get("movieAvgRating"))
    year = record.get("year")
    return {"movieId": int(movie_id), "title": display_title(record.get("title")),
            "releaseYear": -1 if year is None else int(year),
            "imdbId": record.get("imdbId"), "tmdbId": record.get("tmdbId"),
            "genres": list(record.get("genres") or []), "ratingNumber": int(count or 0),
            "averageRating": float(average or 0.0),
            "topRatings": [_rating(movie_id, u, s, t) for u, s, t in record.get("topRatings") or []]}


def user_json(user_id: int, record: Record) -> dict[str, Any]:
    """A store user record as SparrowRecSys's User (an older version's record: its recent history and the
    count and mean from its features; highest and lowest over that history).

    Example:
        >>> user_json(7, {"ratings": [[1, 4.5, 964982703]], "ratingCount": 1, "averageRating": 4.5,
        ...               "highestRating": 4.5, "lowestRating": 4.5})["ratings"][0]["rating"]["movieId"]
        1
    """
    ratings = record.get("ratings", record.get("history")) or []
    features = record.get("features") or {}
    scores = [s for _, s, _ in ratings if s is not None]

    def number(key: str, fallback: Any) -> float:
        value = record.get(key, fallback)
        return 0.0 if value is None else float(value)

    return {"userId": int(user_id),
            "averageRating": number("averageRating", features.get("userAvgRating")),
            "highestRating": number("highestRating", max(scores, default=None)),
            "lowestRating": number("lowestRating", min(scores, default=None)),
            "ratingCount": int(record.get("ratingCount", features.get("userRatingCount")) or len(ratings)),
            "ratings": [_rating(m, user_id, s, t) for m, s, t in ratings]}


@dataclass(frozen=True)
class Catalog:
    """One store version's movies as SparrowRecSys Movie objects, and each genre's movie orders.

    Attributes:
        snapshot: the served snapshot these come from (its ``ref`` names the store version).
        movies: movie id -> Movie object (JSON-ready; shared by every answer, never modified).
        by_genre: genre -> sortby (:data:`SORT_BY`) -> movie ids, in answer order.
        emb: the ``emb`` channel searched by ``model=emb`` (the version's, else the served model's).
        prior: the popularity order (the candidates) for a user without a vector.
    """

    snapshot: Snapshot
    movies: dict[int, dict[str, Any]]
    by_genre: dict[str, dict[str, np.ndarray]] = field(repr=False)
    emb: VectorChannel = field(repr=False)
    prior: Prior = field(repr=False)


def build_catalog(engine: Engine, snapshot: Snapshot) -> Catalog:
    """Read every movie record of the snapshot's store version (one pass) and build its :class:`Catalog`.

    Raises:
        StoreError / StoreUnavailable: the store cannot serve that version (the service answers 503).
    """
    movies = {int(k): movie_json(int(k), r) for k, r in engine.store.iter_movies(version=snapshot.ref)}
    ids = np.fromiter(movies, dtype=np.int64, count=len(movies))
    rating = np.array([m["averageRating"] for m in movies.values()], dtype=np.float64)
    year = np.array([m["releaseYear"] for m in movies.values()], dtype=np.int64)
    orders = {"rating": np.lexsort((ids, -rating)), "releaseYear": np.lexsort((ids, -year))}
    members: dict[str, list[int]] = {}
    for row, movie in enumerate(movies.values()):
        for genre in movie["genres"]:
            members.setdefault(genre, []).append(row)
    by_genre: dict[str, dict[str, np.ndarray]] = {}
    for genre, rows in members.items():
        inside = np.zeros(len(ids), dtype=bool)
        inside[rows] = True
        by_genre[genre] = {key: ids[order[inside[order]]] for key, order in orders.items()}
    emb = snapshot.channels.get("emb") or emb_channel(snapshot.movie_ids, snapshot.unit.numpy(), snapshot.row_of)
    return Catalog(snapshot, movies, by_genre, emb, Prior(snapshot.movie_ids[snapshot.candidate_rows]))


def emb_recall(catalog: Catalog, record: Record | None, size: int) -> list[int]:
    """SparrowRecSys's embedding recall through the ``emb`` channel's index (see the module docstring).

    Args:
        catalog: the served version's catalog (its ``emb`` channel and popularity order).
        record: the user's store record, ``None`` for an unknown user.
        size: list length.

    Returns:
        Movie ids, best first.
    """
    user = user_state(0, record)
    query = catalog.emb.user_vector((record or {}).get("features") or {}, None)
    return [int(m) for m in index_channel(catalog.emb, query, catalog.prior)(user, size)]


def similar_ids(catalog: Catalog, movie_id: int, size: int) -> list[int]:
    """The ``size`` movies nearest to ``movie_id`` in the version's ``item2vec`` channel when it has one
    and knows the movie, else in the ``emb`` channel (the movie itself left out); ``[]`` when unknown."""
    for channel in (catalog.snapshot.channels.get("item2vec"), catalog.emb):
        if channel is None:
            continue
        at = np.flatnonzero(channel.index.ids == movie_id)
        if at.size and np.any(channel.index.vectors[at[0]]):
            found = channel.index.search(channel.index.vectors[at[0]], size + 1)
            return [int(m) for m in channel.index.ids[found[found != at[0]][:size]]]
    return []


Recaller = Callable[[Catalog, Record | None, int], list[int]]


class Compat:
    """The SparrowRecSys-compatible answers over an :class:`Engine` (one per app).

    Args:
        engine: the service's engine (model + store).

    Attributes:
        recallers: ``model`` value -> recall function ``(catalog, user record, size) -> movie ids`` for
            ``getrecforyou``; any other value goes through :meth:`Engine.recommend`.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.recallers: dict[str, Recaller] = {"emb": emb_recall}
        self._catalog: Catalog | None = None
        self._lock = threading.Lock()   # one catalog build at a time

    def _served(self) -> Snapshot:
        state = self.engine.state
        if state is None or state.snapshot is None:
            raise StoreError(self.engine.last_error or "the service has no store version loaded yet")
        return state.snapshot

    def cached(self, snapshot: Snapshot | None = None) -> Catalog | None:
        """The catalog of ``snapshot`` (default: the one served) when it is built already (no store call)."""
        snapshot = snapshot or self._served()
        catalog = self._catalog
        return catalog if catalog is not None and catalog.snapshot.ref == snapshot.ref else None

    def catalog(self, snapshot: Snapshot | None = None) -> Catalog:
        """The catalog of ``snapshot`` (default: the one served), built on first use: a store read, so call it
        through the service's store-call hand-off."""
        snapshot = snapshot or self._served()
        with self._lock:
            catalog = self.cached(snapshot)
            if catalog is None:
                catalog = self._catalog = build_catalog(self.engine, snapshot)
        return catalog

    @staticmethod
    def _movies(catalog: Catalog, ids: Any) -> list[dict[str, Any]]:
        return [catalog.movies[int(m)] for m in ids if int(m) in catalog.movies]

    def recommendation(self, catalog: Catalog, genre: str, size: int,
                       sortby: str = "rating") -> list[dict[str, Any]]:
        """``/getrecommendation``: the genre's first ``size`` movies by ``sortby``; ``[]`` for an unknown genre."""
        orders = catalog.by_genre.get(genre)
        return [] if orders is None else self._movies(catalog, orders[sortby][:size])

    def movie(self, catalog: Catalog, movie_id: int) -> dict[str, Any] | None:
        """``/getmovie``: the Movie, ``None`` when unknown."""
        return catalog.movies.get(movie_id)

    def similar(self, catalog: Catalog, movie_id: int, size: int) -> list[dict[str, Any]]:
        """``/getsimilarmovie``: :func:`similar_ids`; ``[]`` for an unknown movie."""
        return self._movies(catalog, similar_ids(catalog, movie_id, size))

    def user(self, read: UserRead, user_id: int) -> dict[str, Any] | None:
        """``/getuser``: the User, ``None`` when unknown. Its ratings are the version's ``displays`` record
        (a store read: call it through the store-call hand-off), apart from the user record that every
        ranking request parses; a version published before that kind has them in the user record."""
        if read.record is None:
            return None
        display = None
        if "n_displays" in read.snapshot.meta:
            display = self.engine.store.get_displays([user_id], version=read.snapshot.ref)[0]
        return user_json(user_id, read.record | (display or {}))

    def rec_for_you(self, catalog: Catalog, read: UserRead, user_id: int, size: int,
                    model: str | None) -> list[dict[str, Any]]:
        """``/getrecforyou``: a recaller's list for ``model`` (``emb``), else the engine's ranking."""
        recall = self.recallers.get(model or "")
        if recall is not None:
            ids = recall(catalog, read.record, size)
        else:
            ranked = self.engine.recommend(user_id, k=size, candidates=RANK_CANDIDATES, fetched=read)
            ids = [item["movieId"] for item in ranked["items"]]
        return self._movies(catalog, ids)
