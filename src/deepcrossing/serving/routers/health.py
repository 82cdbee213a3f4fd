"""GET /healthz (process alive), /readyz (model and store usable), /metrics (Prometheus), /info."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from deepcrossing.serving.dependencies import get_engine, get_metrics, get_store_calls
from deepcrossing.serving.engine import Engine
from deepcrossing.serving.metrics import ServiceMetrics
from deepcrossing.serving.offload import StoreCalls
from deepcrossing.serving.schemas import Health, Info, Ready
from deepcrossing.serving.store import StoreUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> JSONResponse:
    """200 while the process runs (no store call: it answers even while the store hangs)."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz", response_model=Ready, responses={503: {"model": Ready, "description": "not ready"}})
async def readyz(engine: Engine = Depends(get_engine), calls: StoreCalls = Depends(get_store_calls)) -> JSONResponse:
    """200 when a model and a store version are loaded and that version is still in the store; 503 with the
    reason else (store unreachable or timing out, nothing published, the store recreated or its file gone)."""
    try:
        reason = await calls.run(engine.readiness)
    except StoreUnavailable as exc:
        reason = str(exc)
    info = engine.info()
    if reason is not None:
        return JSONResponse(info | {"ready": False, "reason": reason}, status_code=503)
    return JSONResponse(info | {"ready": True})


@router.get("/info", response_model=Info)
async def info(engine: Engine = Depends(get_engine)) -> JSONResponse:
    """Model and store versions, and for the web page a few example users, the genres (most candidates
    first) and the recall channels a request may name."""
    out = engine.info()
    state = engine.state
    snap = None if state is None else state.snapshot
    out["exampleUsers"] = [] if snap is None else snap.meta.get("example_users", [])
    out["genres"] = [] if snap is None else sorted(snap.genre_masks, key=lambda g: (-int(snap.genre_masks[g].sum()), g))
    out["channels"] = list(engine.channel_names())
    return JSONResponse(out)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
async def metrics(metrics: ServiceMetrics = Depends(get_metrics)) -> Response:
    """Prometheus text format: request counts and latency per route, model and store versions."""
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
