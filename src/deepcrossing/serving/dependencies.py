"""Providers for the routers: the engine, the metrics and the admin guard, all read from ``app.state``.

Tests swap any of them with ``app.dependency_overrides``.
"""

from __future__ import annotations

import hmac

from fastapi import Depends, HTTPException, Request

from deepcrossing.serving.engine import Engine
from deepcrossing.serving.metrics import ServiceMetrics
from deepcrossing.serving.settings import ServingSettings


async def get_settings(request: Request) -> ServingSettings:
    """The app's settings."""
    return request.app.state.settings


async def get_engine(request: Request) -> Engine:
    """The app's engine (model + store)."""
    return request.app.state.engine


async def get_metrics(request: Request) -> ServiceMetrics:
    """The app's Prometheus metrics."""
    return request.app.state.metrics


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
