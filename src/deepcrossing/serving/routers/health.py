"""GET /healthz (process alive), /readyz (model and store usable), /metrics (Prometheus), /info."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from deepcrossing.serving.dependencies import get_engine, get_metrics
from deepcrossing.serving.engine import Engine
from deepcrossing.serving.metrics import ServiceMetrics
from deepcrossing.serving.store import StoreUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> JSONResponse:
    """200 while the process runs."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(engine: Engine = Depends(get_engine)) -> JSONResponse:
    """200 when a model and a store version are loaded and the store answers; 503 with the reason else."""
    info = engine.info()
    try:
        engine.store.ping()
    except StoreUnavailable as exc:
        return JSONResponse(info | {"ready": False, "reason": str(exc)}, status_code=503)
    if info["storeVersion"] is None:
        return JSONResponse(info | {"ready": False, "reason": engine.last_error or "no store version loaded"},
                            status_code=503)
    return JSONResponse(info | {"ready": True})


@router.get("/info")
async def info(engine: Engine = Depends(get_engine)) -> JSONResponse:
    """Model and store versions, and a few example users for the web page."""
    out = engine.info()
    state = engine.state
    snap = None if state is None else state.snapshot
    out["exampleUsers"] = [] if snap is None else snap.meta.get("example_users", [])
    return JSONResponse(out)


@router.get("/metrics")
async def metrics(metrics: ServiceMetrics = Depends(get_metrics)) -> Response:
    """Prometheus text format: request counts and latency per route, model and store versions."""
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
