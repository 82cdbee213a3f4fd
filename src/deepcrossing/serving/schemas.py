"""Response models of the HTTP API (pydantic): what the OpenAPI page (``/docs``) documents.

The routes return these shapes as plain JSON (the fast path skips re-validation); the tests validate real
responses against these models, so the documentation cannot drift from what the service sends.

Example:
    >>> Error(error="not_found", detail="movie 7 is not in the store").model_dump()
    {'error': 'not_found', 'detail': 'movie 7 is not in the store'}
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Error(_Strict):
    """Every error answer: a short kind (``invalid_request``, ``store_unavailable``, ...) and the detail."""

    error: str
    detail: Any


class Movie(_Strict):
    """A movie as shown to people."""

    movieId: int
    title: str | None
    genres: list[str]
    year: int | None


class ScoredMovie(Movie):
    """A recommended movie, its click probability and the recall channel that produced it (``emb``,
    ``genres``, ``popularity``, ...: the first one in the request's channel order)."""

    score: float
    channel: str


class Recommendation(_Strict):
    """GET /recommend/{user_id}: the top-k list, best first; ``candidates``: how many movies were recalled
    and ranked, ``channels``: how many of them each recall channel produced."""

    userId: int
    known: bool
    storeVersion: int
    modelVersion: str
    candidates: int
    channels: dict[str, int]
    items: list[ScoredMovie]


class Scores(_Strict):
    """POST /score: one probability per movie id asked, in order; ``knownMovies`` false for the OOV row."""

    userId: int
    known: bool
    storeVersion: int
    modelVersion: str
    scores: list[float]
    knownMovies: list[bool]


class HistoryEntry(Movie):
    """One rating of a user's recent history."""

    rating: float | None
    timestamp: int | None


class User(_Strict):
    """GET /users/{user_id}: features and recent history (cold-start features for an unknown user)."""

    userId: int
    known: bool
    storeVersion: int
    features: dict[str, Any]
    history: list[HistoryEntry]
    ratedCount: int


class Neighbour(Movie):
    """A movie the model treats alike (cosine of the item-side partial vectors)."""

    similarity: float


class MovieDetail(Movie):
    """GET /movies/{movie_id}: the movie's features and its nearest movies."""

    storeVersion: int
    features: dict[str, Any]
    neighbours: list[Neighbour]


class Health(_Strict):
    """GET /healthz."""

    status: str


class _Served(_Strict):
    """What is being served: the model folder and version, the store version and its unique id."""

    modelDir: str | None
    modelVersion: str | None
    storeVersion: int | None
    storeId: str | None
    store: str
    storePublishedAt: float | None


class Info(_Served):
    """GET /info: what is being served (``storeId``: the unique id of the store version)."""

    exampleUsers: list[int] = []
    genres: list[str] = []
    channels: list[str] = []


class Ready(_Served):
    """GET /readyz: 200 with ``ready: true``, or 503 with ``ready: false`` and the ``reason``."""

    ready: bool
    reason: str | None = None


class Reloaded(_Strict):
    """POST /admin/reload: the model now served."""

    reloaded: bool
    modelDir: str
    modelVersion: str
    workers: int


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "bad input"},
    404: {"model": Error, "description": "not found"},
    422: {"model": Error, "description": "invalid request (path, query or body)"},
    503: {"model": Error, "description": "the store is unreachable, timing out, or has no version to serve"},
}
