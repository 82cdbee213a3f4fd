"""The SparrowRecSys-compatible routes: ``/getrecommendation``, ``/getrecforyou``, ``/getsimilarmovie``,
``/getmovie``, ``/getuser`` (answers and their rules: :mod:`deepcrossing.serving.compat`).

Parameters are query parameters, as SparrowRecSys's pages send them; a malformed one is a JSON 422, an unknown
thing ``[]`` (lists) or a JSON 404 (``getmovie`` / ``getuser``). A parameter given twice counts with its first
value, as the Java servlets' ``request.getParameter`` reads it (FastAPI alone would take the last). Store reads
(the user's record, the first build of a version's catalog) go through the bounded store-call hand-off, like
every route's.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from deepcrossing.serving.compat import MAX_SIZE, Catalog, Compat
from deepcrossing.serving.compat_schemas import CompatMovie, CompatUser
from deepcrossing.serving.dependencies import get_compat, get_engine, get_store_calls
from deepcrossing.serving.engine import Engine, UserRead
from deepcrossing.serving.offload import StoreCalls
from deepcrossing.serving.schemas import ERRORS
from deepcrossing.serving.snapshot import Snapshot


class FirstValueRoute(APIRoute):
    """A route whose repeated query parameters keep their first value (``?id=1&id=2`` is ``id=1``), as a Java
    servlet's ``getParameter`` does; a query string without repeats is passed through untouched."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def first_values(request: Request) -> Response:
            pairs = parse_qsl(request.scope["query_string"].decode("latin-1"), keep_blank_values=True)
            firsts: dict[str, str] = {}
            for name, value in pairs:
                firsts.setdefault(name, value)   # the first value of each name wins, in first-seen order
            if len(firsts) < len(pairs):
                scope = {**request.scope, "query_string": urlencode(list(firsts.items())).encode("latin-1")}
                request = Request(scope, request.receive)
            return await handler(request)

        return first_values


router = APIRouter(tags=["SparrowRecSys-compatible"], responses=ERRORS, route_class=FirstValueRoute)

LOW, HIGH = -(2**63), 2**63 - 1   # ids fit a signed 64-bit integer
UserId = Annotated[int, Query(alias="id", ge=LOW, le=HIGH, description="the user's id (64-bit integer)")]
MovieId = Annotated[int, Query(alias="id", ge=LOW, le=HIGH, description="the movie's id (64-bit integer)")]
Size = Annotated[int, Query(ge=1, le=MAX_SIZE, description=f"list length, 1..{MAX_SIZE}")]
Model = Annotated[str | None, Query(max_length=100, description="emb: embedding recall; else the ranking")]


async def _catalog(compat: Compat, calls: StoreCalls, snapshot: Snapshot | None = None) -> Catalog:
    """The served (or ``snapshot``'s) catalog: from memory, or built once through the store-call hand-off."""
    catalog = compat.cached(snapshot)
    return catalog if catalog is not None else await calls.run(compat.catalog, snapshot)


async def _user(engine: Engine, calls: StoreCalls, user_id: int) -> UserRead:
    read: UserRead = await calls.run(engine.fetch_user, user_id)
    return read


@router.get("/getrecommendation", response_model=list[CompatMovie])
async def get_recommendation(
    genre: Annotated[str, Query(max_length=200, description="a genre, as spelled in the data")],
    size: Size,
    sortby: Annotated[str, Query(pattern="^(rating|releaseYear)$")] = "rating",
    compat: Compat = Depends(get_compat),
    calls: StoreCalls = Depends(get_store_calls),
) -> JSONResponse:
    """The genre's movies, best rated (or newest) first; ``[]`` for an unknown genre."""
    catalog = await _catalog(compat, calls)
    return JSONResponse(compat.recommendation(catalog, genre, size, sortby))


@router.get("/getrecforyou", response_model=list[CompatMovie])
async def get_rec_for_you(
    user_id: UserId,
    size: Size,
    model: Model = None,
    engine: Engine = Depends(get_engine),
    compat: Compat = Depends(get_compat),
    calls: StoreCalls = Depends(get_store_calls),
) -> JSONResponse:
    """``model=emb``: embedding recall; any other model: the service's ranking (cold start for unknown users)."""
    read = await _user(engine, calls, user_id)
    catalog = await _catalog(compat, calls, read.snapshot)
    return JSONResponse(compat.rec_for_you(catalog, read, user_id, size, model))


@router.get("/getsimilarmovie", response_model=list[CompatMovie])
async def get_similar_movie(
    movie_id: Annotated[int, Query(alias="movieId", ge=LOW, le=HIGH, description="the movie's id (64-bit integer)")],
    size: Size,
    model: Model = None,
    compat: Compat = Depends(get_compat),
    calls: StoreCalls = Depends(get_store_calls),
) -> JSONResponse:
    """The movie's nearest movies by item vector; ``[]`` for an unknown movie (``model`` is ignored)."""
    catalog = await _catalog(compat, calls)
    return JSONResponse(compat.similar(catalog, movie_id, size))


@router.get("/getmovie", response_model=CompatMovie)
async def get_movie(
    movie_id: MovieId,
    compat: Compat = Depends(get_compat),
    calls: StoreCalls = Depends(get_store_calls),
) -> JSONResponse:
    """The movie (404 when unknown)."""
    movie = compat.movie(await _catalog(compat, calls), movie_id)
    if movie is None:
        raise HTTPException(404, f"movie {movie_id} is not in the store")
    return JSONResponse(movie)


@router.get("/getuser", response_model=CompatUser)
async def get_user(
    user_id: UserId,
    engine: Engine = Depends(get_engine),
    compat: Compat = Depends(get_compat),
    calls: StoreCalls = Depends(get_store_calls),
) -> JSONResponse:
    """The user and their ratings (404 when unknown)."""
    user = await calls.run(compat.user, await _user(engine, calls, user_id), user_id)
    if user is None:
        raise HTTPException(404, f"user {user_id} is not in the store")
    return JSONResponse(user)
