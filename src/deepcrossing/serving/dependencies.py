"""Providers for the routers: the engine, the metrics, the store-call hand-off and the admin guard, all read
from ``app.state``.

Tests swap any of them with ``app.dependency_overrides``.
"""

from __future__ import annotations

import hmac

from fastapi import Depends, HTTPException, Request

from deepcrossing.serving.compat import Compat
from deepcrossing.serving.engine import Engine
from deepcrossing.serving.metrics import ServiceMetrics
from deepcrossing.serving.offload import StoreCalls
from deepcrossing.serving.settings import ServingSettings


async def get_settings(request: Request) -> ServingSettings:
    """The app's settings."""
    settings: ServingSettings = request.app.state.settings
    return settings


async def get_engine(request: Request) -> Engine:
    """The app's engine (model + store)."""
    engine: Engine = request.app.state.engine
    return engine


async def get_compat(request: Request) -> Compat:
    """The app's SparrowRecSys-compatible answers (over the engine)."""
    compat: Compat = request.app.state.compat
    return compat


async def get_metrics(request: Request) -> ServiceMetrics:
    """The app's Prometheus metrics."""
    metrics: ServiceMetrics = request.app.state.metrics
    return metrics


async def get_store_calls(request: Request) -> StoreCalls:
    """The app's bounded thread hand-off for store calls."""
    calls: StoreCalls = request.app.state.store_calls
    return calls


async def require_admin(request: Request, settings: ServingSettings = Depends(get_settings)) -> None:
    """Bearer-token guard of ``/admin``: a token is required when set, and must be set off loopback."""
    if settings.admin_token is None:
        if not settings.loopback:
            raise HTTPException(403, f"admin calls are refused on non-loopback host {settings.host} without "
                                     "--admin-token")
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), settings.admin_token.encode()):
        raise HTTPException(401, "admin calls need 'Authorization: Bearer <token>' with the --admin-token",
                            headers={"WWW-Authenticate": "Bearer"})
