"""POST /admin/reload: swap in a new model folder atomically (bearer token when --admin-token is set)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from deepcrossing.serving.dependencies import get_engine, get_metrics, require_admin
from deepcrossing.serving.engine import Engine
from deepcrossing.serving.metrics import ServiceMetrics

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


class ReloadRequest(BaseModel):
    """Body of POST /admin/reload: the model folder to serve from now on."""

    model_config = ConfigDict(extra="forbid")
    model_dir: str = Field(min_length=1, max_length=4096)


@router.post("/reload")
async def reload(body: ReloadRequest, request: Request, engine: Engine = Depends(get_engine),
                 metrics: ServiceMetrics = Depends(get_metrics)) -> JSONResponse:
    """Load the folder off the event loop, then swap: requests in flight finish on the old model.

    With several worker processes, this worker swaps first (so a bad folder fails here, with nothing
    changed anywhere), then tells the others through the control folder; they swap within one poll interval.
    """
    async with request.app.state.reload_lock:
        state = await run_in_threadpool(engine.reload, Path(body.model_dir))
        metrics.set_model(str(state.model_dir), state.model_version)
        control = request.app.state.control
        if control is not None:
            request.app.state.model_generation = await run_in_threadpool(control.write_model, state.model_dir)
    return JSONResponse({"reloaded": True, "modelDir": str(state.model_dir),
                         "modelVersion": state.model_version,
                         "workers": request.app.state.settings.workers})
