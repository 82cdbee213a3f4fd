"""GET /recommend/{user_id} and POST /score: the ranking endpoints.

Each request makes one store call (the user's record, :meth:`Engine.fetch_user`) through the bounded thread
hand-off (:class:`~deepcrossing.serving.offload.StoreCalls`), then scores on the event loop (or in the thread
pool with ``score_in_threads``).
"""

from __future__ import annotations

import functools
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from deepcrossing.errors import InputError
from deepcrossing.serving.dependencies import get_engine, get_metrics, get_settings, get_store_calls
from deepcrossing.serving.engine import Engine
from deepcrossing.serving.metrics import ServiceMetrics
from deepcrossing.serving.offload import StoreCalls
from deepcrossing.serving.recall import parse_channels
from deepcrossing.serving.schemas import ERRORS, Recommendation, Scores
from deepcrossing.serving.settings import ServingSettings

router = APIRouter(tags=["ranking"], responses=ERRORS)

ID = Annotated[int, Field(ge=-(2**63), le=2**63 - 1, strict=True)]   # a JSON integer: not true, "1" or 1.0


@router.get("/recommend/{user_id}", response_model=Recommendation)
async def recommend(
    user_id: Annotated[int, Path(ge=-(2**63), le=2**63 - 1)],
    k: Annotated[int, Query(ge=1, le=2**31, description="list length")] = 10,
    candidates: Annotated[int, Query(ge=1, le=2**31, description="how many movies to recall and rank (the "
                                                                 "default channel plan's total)")] = 800,
    scorer: Annotated[str, Query(pattern="^(fast|plain)$")] = "fast",
    channels: Annotated[str | None, Query(max_length=400, description=(
        "recall channels and sizes, e.g. emb:300,genres:200,popularity:300 (default: every vector channel of "
        "the store version with half of `candidates`, genres a quarter, popularity the rest; popularity "
        "alone when the version has no vector channel; with `serve --recall` and a version published with it: "
        "the recall folder's merge chosen on validation, trending included)"))] = None,
    engine: Engine = Depends(get_engine),
    settings: ServingSettings = Depends(get_settings),
    metrics: ServiceMetrics = Depends(get_metrics),
    calls: StoreCalls = Depends(get_store_calls),
) -> JSONResponse:
    """Top ``k`` of the movies the recall channels give (none the user rated), ranked by the model; each item
    says which channel produced it."""
    if k > settings.max_k:
        raise HTTPException(422, f"k must be <= {settings.max_k}, not {k}")
    if candidates > settings.max_candidates:
        raise HTTPException(422, f"candidates must be <= {settings.max_candidates}, not {candidates}")
    plan = None
    if channels is not None:
        try:
            plan = parse_channels(channels, engine.channel_names(), settings.max_candidates)
        except InputError as exc:
            return JSONResponse({"error": "invalid_request", "detail": [{"loc": ["query", "channels"],
                                                                          "msg": exc.message}]}, status_code=422)
    fetched = await calls.run(engine.fetch_user, user_id)
    call = functools.partial(engine.recommend, user_id, k=k, candidates=candidates, plain=scorer == "plain",
                             fetched=fetched, channels=plan)
    result = await run_in_threadpool(call) if settings.score_in_threads else call()
    metrics.candidates.observe(result["candidates"])
    return JSONResponse(result)


class ScoreRequest(BaseModel):
    """Body of POST /score."""

    model_config = ConfigDict(extra="forbid")
    user_id: ID
    movie_ids: list[ID] = Field(min_length=1)


@router.post("/score", response_model=Scores)
async def score(
    body: ScoreRequest,
    engine: Engine = Depends(get_engine),
    settings: ServingSettings = Depends(get_settings),
    calls: StoreCalls = Depends(get_store_calls),
) -> JSONResponse:
    """Scores of the user against the given movies, in the given order (unknown movies: the OOV row)."""
    if len(body.movie_ids) > settings.max_score_ids:
        raise HTTPException(422, f"movie_ids may hold at most {settings.max_score_ids} ids, "
                                 f"not {len(body.movie_ids)}")
    fetched = await calls.run(engine.fetch_user, body.user_id)
    call = functools.partial(engine.score, body.user_id, body.movie_ids, fetched=fetched)
    return JSONResponse(await run_in_threadpool(call) if settings.score_in_threads else call())
