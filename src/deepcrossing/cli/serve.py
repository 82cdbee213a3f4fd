"""`deepcrossing publish`, `serve` and `recommend`: model + logs -> feature store -> top-K."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from deepcrossing.cli.common import INT64, LOG_LEVELS, PORT, app, bind_host, existing_folder, model_folder, one_of, \
    out, require_free_port, set_threads


@app.command("publish")
def publish_cmd(
    model: Annotated[Path, typer.Option("--model", callback=model_folder,
                                        help="Model folder from `deepcrossing train`.")],
    data: Annotated[Path, typer.Option(
        "--data", help="The rating logs (MovieLens folder or log file), as for prepare.")],
    users: Annotated[Path | None, typer.Option(
        "--users", exists=True, dir_okay=False, help="The users file given to prepare --users, if any.")] = None,
    store: Annotated[str | None, typer.Option(
        "--store", help="sqlite:///path.db or redis://host:port/db (default: sqlite:///MODEL/features.db).")] = None,
    candidates: Annotated[int, typer.Option(min=1, help="How many popular movies to keep as candidates.")] = 5000,
    keep_previous: Annotated[float, typer.Option(
        min=0, help="Seconds the previous version stays readable after the switch (running services move "
                    "over).")] = 2.0,
    emb: Annotated[bool, typer.Option(
        "--emb/--no-emb", help="Index the model's own item vectors (the emb recall channel) into the version.")] = True,
    recall: Annotated[Path | None, typer.Option(
        "--recall", callback=existing_folder,
        help="A recall folder from `deepcrossing train-recall`: its channels (two_tower, item2vec) are indexed "
             "into the version too; serve it with the same --recall.")] = None,
) -> None:
    """Compute each user's and movie's latest features and publish them as a new store version, with the ANN
    index of every vector recall channel."""
    import time

    from deepcrossing.serving.channels import load_recall_folder
    from deepcrossing.serving.publish import default_store_url, publish_for_model

    url = store or default_store_url(model)
    if store is None:
        out.print(f"store: {url} (default; pass --store redis://host:port/db for Redis)", highlight=False,
                  soft_wrap=True)
    started = time.perf_counter()
    folder = None if recall is None else load_recall_folder(recall)
    meta = publish_for_model(model, data, url, max_candidates=candidates, keep_previous_s=keep_previous, emb=emb,
                             recall=folder, users_path=users)
    channels = ", ".join(f"{name} ({info['index']})" for name, info in meta.get("vector_channels", {}).items())
    out.print(f"published version {meta['version']} to {url}: {meta['n_users']:,} users, {meta['n_movies']:,} "
              f"movies, {meta['n_candidates']:,} candidates, vector channels: {channels or 'none'}, "
              f"checksum {meta['checksum'][:12]}, "
              f"in {time.perf_counter() - started:.1f} s (feature config {meta['feature_config_source']})",
              highlight=False, soft_wrap=True)
    again = f" --recall {recall}" if recall is not None else ""
    out.print(f"serve it: deepcrossing serve --model {model} --store {url}{again}", highlight=False, soft_wrap=True)

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
    host: Annotated[str, typer.Option(callback=bind_host, help="Address to bind (loopback unless you mean "
                                                               "otherwise).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(**PORT, help="TCP port (1..65535).")] = 8000,
    admin_token: Annotated[str | None, typer.Option(
        "--admin-token", envvar="DEEPCROSSING_ADMIN_TOKEN",
        help="Bearer token for /admin (required to use /admin when --host is not loopback).")] = None,
    threads: Annotated[int, typer.Option(min=1, max=256, help="Torch intra-op threads for scoring, per worker.")] = 1,
    workers: Annotated[int, typer.Option(
        min=1, max=256, help="Server processes (one per core is fastest; each loads the model and the store "
                             "snapshot). /admin/reload reaches all of them.")] = 1,
    user_cache: Annotated[int, typer.Option(
        min=0, help="Users whose request-side partial (user part, user vectors, merged candidates) each worker "
                    "keeps per model and store version (exact; ~20 KB each; 0 = off).")] = 100_000,
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
    recall: Annotated[Path | None, typer.Option(
        "--recall", callback=existing_folder,
        help="The recall folder the store was published with (`publish --recall`).")] = None,
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
    from deepcrossing.serving.workers import run_workers

    require_free_port(host, port)
    url = store or default_store_url(model)
    check_store(url)
    control_dir = Path(tempfile.mkdtemp(prefix="deepcrossing-serve-")) if workers > 1 else None
    settings = ServingSettings(model_dir=model.resolve(), store_url=url, host=host, admin_token=admin_token,
                               backend=backend, threads=threads, workers=workers, control_dir=control_dir,
                               score_in_threads=score_in_threads, user_cache=user_cache, webroot=webroot,
                               recall_dir=None if recall is None else recall.resolve())
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
        # each worker listens on its own socket (serving/workers.py): a shared one left keep-alive clients on one
        run_workers(uvicorn.Config("deepcrossing.serving.app:app_from_env", factory=True, workers=workers, host=host,
                                   port=port, log_level=log_level, access_log=False))
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
    candidates: Annotated[int, typer.Option(min=1, help="How many movies to recall and rank.")] = 800,
    channels: Annotated[str | None, typer.Option(
        help="Recall channels and sizes, e.g. emb:300,genres:200,popularity:300 (default: as the service).")] = None,
    recall: Annotated[Path | None, typer.Option(
        "--recall", callback=existing_folder,
        help="The recall folder the store was published with (`publish --recall`).")] = None,
) -> None:
    """Print the same top-k list the service returns, offline (no HTTP): recall, then ranking."""
    from deepcrossing.serving.channels import load_recall_folder
    from deepcrossing.serving.engine import Engine
    from deepcrossing.serving.publish import default_store_url
    from deepcrossing.serving.recall import parse_channels

    set_threads(1)
    url = store or default_store_url(model)
    engine = Engine.open(model, url, recall=None if recall is None else load_recall_folder(recall))
    try:
        plan = None if channels is None else parse_channels(channels, engine.channel_names(), 100_000)
        result = engine.recommend(user, k=k, candidates=candidates, channels=plan)
    finally:
        engine.store.close()
    who = "known user" if result["known"] else "unknown user: cold start"
    recalled = ", ".join(f"{name} {n}" for name, n in result["channels"].items())
    out.print(f"top {len(result['items'])} for user {user} ({who}; model {result['modelVersion']}, store "
              f"version {result['storeVersion']}, {result['candidates']} candidates: {recalled})", highlight=False,
              soft_wrap=True)
    for rank, item in enumerate(result["items"], 1):
        out.print(item_line(rank, item), highlight=False, soft_wrap=True)


def item_line(rank: int, item: dict[str, Any]) -> str:
    """One recommended movie as `recommend` prints it; a log without a movies file has no title or genres.

    Example:
        >>> item_line(1, {"score": 0.5, "movieId": 7, "title": None, "genres": [], "channel": "popularity"})
        '  1. 0.5000        7  (no title: the log has no movies file)  (popularity)'
    """
    title = item["title"] or "(no title: the log has no movies file)"
    genres = f"  [{', '.join(item['genres'])}]" if item["genres"] else ""
    return f"{rank:>3}. {item['score']:.4f}  {item['movieId']:>7}  {title}{genres}  ({item['channel']})"
