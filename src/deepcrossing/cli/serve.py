"""`deepcrossing publish`, `serve` and `recommend`: model + logs -> feature store -> top-K."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from deepcrossing.cli.common import INT64, LOG_LEVELS, PORT, app, existing_folder, model_folder, one_of, out, \
    set_threads


@app.command("publish")
def publish_cmd(
    model: Annotated[Path, typer.Option("--model", callback=model_folder,
                                        help="Model folder from `deepcrossing train`.")],
    data: Annotated[Path, typer.Option(
        "--data", help="The rating logs (MovieLens folder or log file), as for prepare.")],
    store: Annotated[str | None, typer.Option(
        "--store", help="sqlite:///path.db or redis://host:port/db (default: sqlite:///MODEL/features.db).")] = None,
    candidates: Annotated[int, typer.Option(min=1, help="How many popular movies to keep as candidates.")] = 5000,
    keep_previous: Annotated[float, typer.Option(
        min=0, help="Seconds the previous version stays readable after the switch (running services move "
                    "over).")] = 2.0,
) -> None:
    """Compute each user's and movie's latest features and publish them as a new store version."""
    import time

    from deepcrossing.serving.publish import default_store_url, publish_for_model

    url = store or default_store_url(model)
    if store is None:
        out.print(f"store: {url} (default; pass --store redis://host:port/db for Redis)", highlight=False,
                  soft_wrap=True)
    started = time.perf_counter()
    meta = publish_for_model(model, data, url, max_candidates=candidates, keep_previous_s=keep_previous)
    out.print(f"published version {meta['version']} to {url}: {meta['n_users']:,} users, {meta['n_movies']:,} "
              f"movies, {meta['n_candidates']:,} candidates, checksum {meta['checksum'][:12]}, "
              f"in {time.perf_counter() - started:.1f} s (feature config {meta['feature_config_source']})",
              highlight=False, soft_wrap=True)
    out.print(f"serve it: deepcrossing serve --model {model} --store {url}", highlight=False, soft_wrap=True)

# [serve]


def check_store(url: str) -> None:
    """Refuse to serve a store that has nothing published (or a bad URL) with a one-line error, before any
    server starts; opened read-only, so a missing SQLite file is reported, never created. A store that is
    merely unreachable now (Redis down) is let through: the service answers 503 until it is back."""
    from deepcrossing.serving.store import StoreUnavailable, open_store

    store = open_store(url, readonly=True)
    try:
        if store.current() is None:
            raise store.nothing_published()
    except StoreUnavailable as exc:
        out.print(f"note: {exc}; serving 503 until it answers", highlight=False, soft_wrap=True)
    finally:
        store.close()


@app.command("serve")
def serve_cmd(
    model: Annotated[Path, typer.Option("--model", callback=model_folder,
                                        help="Model folder from `deepcrossing train`.")],
    store: Annotated[str | None, typer.Option(
        "--store", help="sqlite:///path.db or redis://host:port/db (default: sqlite:///MODEL/features.db).")] = None,
    host: Annotated[str, typer.Option(help="Address to bind (loopback unless you mean otherwise).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(**PORT, help="TCP port (1..65535).")] = 8000,
    admin_token: Annotated[str | None, typer.Option(
        "--admin-token", envvar="DEEPCROSSING_ADMIN_TOKEN",
        help="Bearer token for /admin (required to use /admin when --host is not loopback).")] = None,
    threads: Annotated[int, typer.Option(min=1, help="Torch intra-op threads for scoring, per worker.")] = 1,
    workers: Annotated[int, typer.Option(
        min=1, help="Server processes (one per core is fastest; each loads the model and the store snapshot). "
                    "/admin/reload reaches all of them.")] = 1,
    user_cache: Annotated[int, typer.Option(
        min=0, help="Users whose request-side partial each worker keeps per model and store version (exact; "
                    "0 = off).")] = 100_000,
    score_in_threads: Annotated[bool, typer.Option(
        "--score-in-threads", help="Rank in uvicorn's thread pool instead of on the event loop (slower "
                                   "for ~1 ms ranking calls; see ServingSettings).")] = False,
    backend: Annotated[str, typer.Option(
        help="torch, or onnx: ONNX Runtime for the per-candidate part of the fast path (onnx extra).")] = "torch",
    log_level: Annotated[str, typer.Option(callback=one_of(*LOG_LEVELS), help="uvicorn log level.")] = "warning",
    webroot: Annotated[Path | None, typer.Option(
        callback=existing_folder,
        help="A folder of static pages to serve at / beside the API (e.g. your copy of SparrowRecSys's "
             "webroot: its pages call /getrecforyou, /getmovie, ...).")] = None,
) -> None:
    """Run the ranking service (FastAPI + uvicorn): /recommend, /score, /users, /movies, /metrics, web page,
    and the SparrowRecSys-compatible /getrecommendation, /getrecforyou, /getsimilarmovie, /getmovie, /getuser."""
    import shutil
    import tempfile

    import uvicorn

    from deepcrossing.serving.app import ENV_SETTINGS, create_app
    from deepcrossing.serving.control import Control
    from deepcrossing.serving.publish import default_store_url
    from deepcrossing.serving.settings import ServingSettings

    url = store or default_store_url(model)
    check_store(url)
    control_dir = Path(tempfile.mkdtemp(prefix="deepcrossing-serve-")) if workers > 1 else None
    settings = ServingSettings(model_dir=model.resolve(), store_url=url, host=host, admin_token=admin_token,
                               backend=backend, threads=threads, workers=workers, control_dir=control_dir,
                               score_in_threads=score_in_threads, user_cache=user_cache, webroot=webroot)
    procs = f" in {workers} worker processes" if workers > 1 else ""
    pages = f"{webroot} at /, web page: /ui/" if webroot else "web page: /ui/"
    out.print(f"serving {model} with store {url} on http://{host}:{port}/{procs} ({pages}, metrics: /metrics)",
              highlight=False, soft_wrap=True)
    if not settings.loopback and admin_token is None:
        out.print("note: /admin is refused on a non-loopback host without --admin-token", highlight=False,
                  soft_wrap=True)
    if control_dir is None:
        set_threads(threads)
        uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level, access_log=False)
        return
    # Several processes: uvicorn starts (and restarts) the workers; each builds its app from the settings in
    # the environment, and they coordinate reloads and metrics through the control folder.
    control = Control(control_dir)
    control.prometheus_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(control.prometheus_dir)
    os.environ[ENV_SETTINGS] = settings.to_json()
    try:
        uvicorn.run("deepcrossing.serving.app:app_from_env", factory=True, workers=workers, host=host,
                    port=port, log_level=log_level, access_log=False)
    finally:
        shutil.rmtree(control_dir, ignore_errors=True)

@app.command("recommend")
def recommend_cmd(
    model: Annotated[Path, typer.Option("--model", callback=model_folder,
                                        help="Model folder from `deepcrossing train`.")],
    user: Annotated[int, typer.Option("--user", **INT64, help="User id (unknown ids get cold-start features).")],
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="How many movies to list.")] = 10,
    store: Annotated[str | None, typer.Option(
        "--store", help="sqlite:///path.db or redis://host:port/db (default: sqlite:///MODEL/features.db).")] = None,
    candidates: Annotated[int, typer.Option(min=1, help="How many popular movies to rank.")] = 800,
) -> None:
    """Print the same top-k list the service returns, offline (no HTTP)."""
    from deepcrossing.serving.engine import Engine
    from deepcrossing.serving.publish import default_store_url

    set_threads(1)
    url = store or default_store_url(model)
    engine = Engine.open(model, url)
    try:
        result = engine.recommend(user, k=k, candidates=candidates)
    finally:
        engine.store.close()
    who = "known user" if result["known"] else "unknown user: cold start"
    out.print(f"top {len(result['items'])} for user {user} ({who}; model {result['modelVersion']}, store "
              f"version {result['storeVersion']}, {result['candidates']} candidates)", highlight=False, soft_wrap=True)
    for rank, item in enumerate(result["items"], 1):
        out.print(f"{rank:>3}. {item['score']:.4f}  {item['movieId']:>7}  {item['title']}  "
                  f"[{', '.join(item['genres'])}]", highlight=False, soft_wrap=True)
