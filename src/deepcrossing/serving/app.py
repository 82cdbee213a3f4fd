"""The FastAPI app factory: ``create_app(settings)``; no module-global state.

The model and the store are opened in ``lifespan`` and kept in ``app.state``; a background task polls the
store for newly published versions. Errors are JSON: ``{"error": <kind>, "detail": <message>}`` with 4xx for
bad requests, 503 when the store is unreachable, hung (every store call runs in a bounded thread hand-off
with a timeout, never on the event loop), has nothing published, or was recreated under the service (fail
fast: short timeouts, and the next request after the store is back succeeds, no restart needed).

Example:
    >>> app = create_app(ServingSettings("model", "sqlite:///model/features.db"))   # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)                                # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deepcrossing.errors import DeepCrossingError, InputError
from deepcrossing.serving.channels import load_recall_folder
from deepcrossing.serving.compat import Compat
from deepcrossing.serving.control import Control
from deepcrossing.serving.engine import Engine
from deepcrossing.serving.metrics import ServiceMetrics
from deepcrossing.serving.offload import StoreCalls
from deepcrossing.serving.routers import admin, catalog, compat, health, ranking
from deepcrossing.serving.settings import ServingSettings
from deepcrossing.serving.store import StoreConfigError, StoreError, StoreUnavailable, open_store

STATIC_DIR = Path(__file__).parent / "static"
log = logging.getLogger("deepcrossing.serving")


class BodyLimitAndMetrics:
    """Pure ASGI middleware: refuse bodies over ``max_bytes`` with 413, count and time every request.

    Pure ASGI (not ``BaseHTTPMiddleware``) so that it adds microseconds, not a task per request.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, max_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._reject(send, start, scope)
                return
        received = [0]

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > self.max_bytes:
                    raise _TooLarge()
            return message

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, limited_receive, counting_send)
        except _TooLarge:
            await self._reject(send, start, scope)
            return
        route = scope.get("route")
        path = getattr(route, "path", None) or ("/ui" if scope["path"].startswith("/ui") else "unmatched")
        self.metrics.observe(path, scope["method"], status[0], time.perf_counter() - start)

    async def _reject(self, send: Send, start: float, scope: Scope) -> None:
        body = json.dumps({"error": "body_too_large",
                           "detail": f"request body over {self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        self.metrics.observe("unmatched", scope["method"], 413, time.perf_counter() - start)


class _TooLarge(BaseException):
    """Raised by the middleware's ``receive`` past the limit. A BaseException, so that FastAPI's body reading
    (``except Exception`` -> 400 "error parsing the body") and the exception middleware let it through to the
    middleware, which answers 413."""


ROUTERS = (ranking.router, catalog.router, compat.router, health.router, admin.router)


class WebRoot(StaticFiles):
    """A person's folder of static pages (``serve --webroot``): Starlette's StaticFiles, which serves nothing
    outside the folder (``..`` and symlinks out of it are not found), and which answers 404, not 500, for a
    path the file system refuses (a symlink loop, a folder it may not read)."""

    def lookup_path(self, path: str) -> tuple[str, os.stat_result | None]:
        try:
            return super().lookup_path(path)
        except OSError:
            return "", None

    def __init__(self, directory: Path, api_routes: list[Route]) -> None:
        super().__init__(directory=directory, html=True)
        self.api_routes = api_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A path of an API route asked with another method (HEAD /healthz, POST /getmovie) falls through the
        # routes to this mount; answer what the service answers without a webroot: 405 with the route's Allow
        allowed = _api_methods(scope, self.api_routes)
        if allowed:
            raise StarletteHTTPException(405, headers={"Allow": ", ".join(sorted(allowed))})
        await super().__call__(scope, receive, send)


def _api_methods(scope: Scope, routes: list[Route]) -> set[str]:
    """The methods of the ``routes`` whose path is the request's: non-empty only when the path is an API
    route's and the request's method is none of them."""
    if scope["type"] != "http":
        return set()
    probe = {**scope, "root_path": scope.get("app_root_path", scope.get("root_path", ""))}
    methods: set[str] = set()
    for route in routes:
        if route.matches(probe)[0] is Match.PARTIAL:
            methods |= route.methods or set()
    return methods


def _error(status: int, kind: str, detail: object) -> JSONResponse:
    return JSONResponse({"error": kind, "detail": detail}, status_code=status)


def create_app(settings: ServingSettings, *, loader: Callable[[Path], Any] | None = None) -> FastAPI:
    """Build the service.

    Args:
        settings: model folder, store URL, limits, admin token.
        loader: model folder -> loaded model (default :func:`deepcrossing.load`); tests inject in-memory models.
    """
    metrics = ServiceMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # read-only: the service never creates an empty database, and reports a missing file as not ready
        store = open_store(settings.store_url, readonly=True, timeout=settings.store_timeout_s)
        recall = None if settings.recall_dir is None else await run_in_threadpool(load_recall_folder,
                                                                                  settings.recall_dir)
        eng = Engine(store, loader=loader, backend=settings.backend, user_cache=settings.user_cache, recall=recall)
        control = Control(settings.control_dir) if settings.control_dir is not None else None
        wanted = control.read() if control is not None else None   # a reload that happened before we started
        app.state.control = control
        app.state.model_generation = wanted[0] if wanted else None
        app.state.reload_lock = asyncio.Lock()   # one model swap at a time (admin call or poller)
        app.state.store_calls = calls = StoreCalls(timeout=settings.store_timeout_s)
        state = await run_in_threadpool(eng.load_model, wanted[1] if wanted else settings.model_dir)
        app.state.compat = compat_answers = Compat(eng)
        try:
            await run_in_threadpool(eng.refresh)
            await run_in_threadpool(compat_answers.catalog)   # the compat routes' movies, built once per version
        except DeepCrossingError as exc:  # serve 503 until the store is usable; the poller retries
            eng.last_error = str(exc)
            log.warning("store not usable yet: %s", exc)
        app.state.engine = eng
        metrics.set_model(str(state.model_dir), state.model_version)
        # The model, tables and snapshot live as long as the process: move them out of the cyclic GC's
        # generations so that collections during requests stay short (fewer latency spikes).
        gc.collect()
        gc.freeze()
        stop = asyncio.Event()
        poller = asyncio.create_task(_poll(app, eng, metrics, settings.poll_interval_s, stop))
        try:
            yield
        finally:
            # Let a poll in flight finish before the store closes: cancelling the task would not stop its
            # worker thread, and closing a SQLite connection that thread is using crashes the process.
            stop.set()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(poller, timeout=2 * settings.store_timeout_s + 1.0)
            calls.close()
            eng.store.close()
            metrics.worker_exit()

    app = FastAPI(title="deepcrossing ranking service", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.settings = settings
    app.state.metrics = metrics
    for router in ROUTERS:
        app.include_router(router)
    _add_error_handlers(app, metrics)
    app.mount("/ui", StaticFiles(directory=STATIC_DIR, html=True), name="ui")
    if settings.webroot is None:
        @app.get("/", include_in_schema=False)
        def _root() -> RedirectResponse:
            return RedirectResponse("/ui/")
    else:
        # a person's static pages at / (e.g. SparrowRecSys's webroot), after every API route and /ui, so those
        # take precedence; StaticFiles serves nothing outside the folder (no "..", no symlink out of it)
        if not settings.webroot.is_dir():
            raise InputError("the web root must be an existing folder", path=settings.webroot, field="webroot")
        routes = [r for router in (app.router, *ROUTERS) for r in router.routes if isinstance(r, Route)]
        app.mount("/", WebRoot(settings.webroot, routes), name="webroot")
    app.add_middleware(BodyLimitAndMetrics, metrics=metrics, max_bytes=settings.max_body_bytes)
    return app


def _add_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    """Every error answer is JSON ``{"error", "detail"}``: 4xx for bad requests, 503 for the store."""

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        metrics.store_errors.inc()
        return _error(503, "store_unavailable", str(exc))

    async def not_ready(request: Request, exc: Exception) -> JSONResponse:
        metrics.store_errors.inc()
        return _error(503, "store_not_ready", str(exc))

    async def misconfigured(request: Request, exc: Exception) -> JSONResponse:
        metrics.store_errors.inc()
        return _error(503, "store_misconfigured", str(exc))

    async def bad_input(request: Request, exc: Exception) -> JSONResponse:
        return _error(400, "bad_input", str(exc))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
                422: "invalid_request"}.get(exc.status_code, "http_error")   # 422: as the validation errors
        response = _error(exc.status_code, kind, exc.detail)
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in exc.errors()]
        return _error(422, "invalid_request", detail)

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, "internal_error", f"{type(exc).__name__}; see the service log")

    for kind, handler in ((StoreUnavailable, unavailable), (StoreError, not_ready),
                          (StoreConfigError, misconfigured), (InputError, bad_input),
                          (StarletteHTTPException, http_error), (RequestValidationError, invalid),
                          (Exception, internal)):
        app.add_exception_handler(kind, handler)


async def _poll(app: FastAPI, engine: Engine, metrics: ServiceMetrics, interval: float,
                stop: asyncio.Event) -> None:
    """Adopt newly published store versions (verified first), notice a store that was recreated or whose
    file is gone, and, with several workers, the model another worker was told to reload; keep serving the
    old ones on any error that leaves them valid."""
    while True:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
        if stop.is_set():
            return
        try:
            if await run_in_threadpool(engine.refresh):
                log.info("serving store %s", engine.info()["storeVersion"])
                await run_in_threadpool(app.state.compat.catalog)
            version = engine.info()["storeVersion"]
            metrics.store_version.set(0 if version is None else version)  # 0: none served
            control: Control | None = app.state.control
            if control is not None:
                async with app.state.reload_lock:
                    wanted = control.read()
                    if wanted is not None and wanted[0] != app.state.model_generation:
                        state = await run_in_threadpool(engine.reload, wanted[1])
                        app.state.model_generation = wanted[0]
                        metrics.set_model(str(state.model_dir), state.model_version)
                        log.info("serving model %s (reloaded by another worker)", state.model_dir)
        except Exception as exc:
            engine.last_error = f"{type(exc).__name__}: {exc}"


ENV_SETTINGS = "DEEPCROSSING_SERVE_SETTINGS"
def app_from_env() -> FastAPI:
    """The app of one worker process of ``deepcrossing serve --workers N`` (uvicorn's ``factory=True``):
    settings from the ``DEEPCROSSING_SERVE_SETTINGS`` JSON the serve command set."""
    import torch

    text = os.environ.get(ENV_SETTINGS)
    if not text:
        raise InputError(f"{ENV_SETTINGS} is not set; start workers with `deepcrossing serve --workers N`",
                         field=ENV_SETTINGS)
    settings = ServingSettings.from_json(text)
    torch.set_num_threads(settings.threads)
    return create_app(settings)
