"""POST /admin/reload: swap in a new model folder atomically (bearer token when --admin-token is set)."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from deepcrossing.errors import DeepCrossingError
from deepcrossing.serving.dependencies import get_engine, get_metrics, require_admin
from deepcrossing.serving.engine import Engine
from deepcrossing.serving.metrics import ServiceMetrics
from deepcrossing.serving.schemas import ERRORS, Error, Reloaded

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                   responses=ERRORS | {401: {"model": Error}, 403: {"model": Error}})
log = logging.getLogger("deepcrossing.serving")


class ReloadRequest(BaseModel):
    """Body of POST /admin/reload: the model folder to serve from now on."""

    model_config = ConfigDict(extra="forbid")
    model_dir: str = Field(min_length=1, max_length=4096)


@router.post("/reload", response_model=Reloaded)
async def reload(body: ReloadRequest, request: Request, engine: Engine = Depends(get_engine),
                 metrics: ServiceMetrics = Depends(get_metrics)) -> JSONResponse:
    """Load the folder off the event loop, then swap: requests in flight finish on the old model.

    A folder that cannot be loaded (missing, not a model folder, corrupt, weights with NaN or inf) is refused
    with a JSON 400 and the old model keeps serving. With several worker processes, this worker swaps first
    (so a bad folder fails here, with nothing changed anywhere), then tells the others through the control
    folder; they swap within one poll interval.
    """
    async with request.app.state.reload_lock:
        try:
            state = await run_in_threadpool(engine.reload, Path(body.model_dir))
        except Exception as exc:  # any reason the folder cannot be served: refuse it, keep the old model
            log.warning("reload of %s refused: %s", body.model_dir, exc)
            detail = str(exc) if isinstance(exc, DeepCrossingError) else f"{type(exc).__name__}: {exc}"
            return JSONResponse({"error": "reload_refused", "detail": detail[:2000]}, status_code=400)
        metrics.set_model(str(state.model_dir), state.model_version)
        control = request.app.state.control
        if control is not None:
            request.app.state.model_generation = await run_in_threadpool(control.write_model, state.model_dir)
    return JSONResponse({"reloaded": True, "modelDir": str(state.model_dir),
                         "modelVersion": state.model_version,
                         "workers": request.app.state.settings.workers})
