"""GET /users/{id} and GET /movies/{id}: what the store knows, for people and the web page."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import JSONResponse

from deepcrossing.serving.dependencies import get_engine, get_store_calls
from deepcrossing.serving.engine import Engine
from deepcrossing.serving.offload import StoreCalls
from deepcrossing.serving.schemas import ERRORS, MovieDetail, User

router = APIRouter(tags=["catalog"], responses=ERRORS)


@router.get("/users/{user_id}", response_model=User)
async def user(user_id: Annotated[int, Path(ge=-(2**63), le=2**63 - 1)],
               engine: Engine = Depends(get_engine),
               calls: StoreCalls = Depends(get_store_calls)) -> JSONResponse:
    """The user's recent history (with titles) and features; cold-start features when unknown."""
    fetched = await calls.run(engine.fetch_user, user_id)
    return JSONResponse(engine.user_info(user_id, fetched=fetched))


@router.get("/movies/{movie_id}", response_model=MovieDetail)
async def movie(
    movie_id: Annotated[int, Path(ge=-(2**63), le=2**63 - 1)],
    neighbours: Annotated[int, Query(ge=0, le=100)] = 10,
    engine: Engine = Depends(get_engine),
) -> JSONResponse:
    """The movie and its nearest movies by item-side partial vector (404 when unknown; no store call)."""
    info = engine.movie_info(movie_id, neighbours)
    if info is None:
        raise HTTPException(404, f"movie {movie_id} is not in the store")
    return JSONResponse(info)
