"""The ``deepcrossing`` command: the one place that parses arguments, seeds, picks the device and draws
progress bars. Nothing imports this module; every verb calls into the library and prints what it did.

Verbs are grouped by pipeline stage, in the order data flows:
  data (download, synth) -> prepare -> train -> evaluate -> export -> publish -> serve / recommend;
  quickstart runs them end to end.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from deepcrossing.errors import DeepCrossingError

app = typer.Typer(
    help="Deep Crossing (Embedding+MLP) recommender: data -> samples -> model -> service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Get rating logs: download MovieLens, or generate synthetic MovieLens-format data.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console(stderr=True)
out = Console()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (the CLI owns seeding; library code never seeds)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass


def pick_device(name: str | None) -> str:
    """Resolve ``--device``: ``cuda`` when asked or available (with ``auto``), else ``cpu``."""
    import torch

    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise DeepCrossingError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise DeepCrossingError(f"--device must be cpu, cuda or auto, not {name!r}")
    return name


def set_threads(threads: int | None) -> None:
    """Use one intra-op thread per core (2 here) unless told otherwise; more only adds contention."""
    import torch

    n = threads or max(1, min(os.cpu_count() or 1, 8))
    torch.set_num_threads(n)


# ---- verbs are registered below, one section per pipeline stage ----

# [data]


@data_app.command("download")
def data_download(
    name: Annotated[str, typer.Argument(help="ml-latest-small, ml-latest, ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-32m")],
    cache: Annotated[Optional[Path], typer.Option(help="cache folder [default: $DEEPCROSSING_HOME/datasets or "
                                                       "~/.cache/deepcrossing/datasets]")] = None,
    base_url: Annotated[str, typer.Option(help="where <name>.zip and <name>.zip.md5 live")] =
        "https://files.grouplens.org/datasets/movielens",
    force: Annotated[bool, typer.Option(help="download again even when cached")] = False,
) -> None:
    """Download a GroupLens MovieLens zip (MD5-verified) and extract it into the cache."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from deepcrossing.data.download import download

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(f"{name}.zip", total=None)
        folder = download(name, cache=cache, base_url=base_url, force=force,
                          progress=lambda done, total: bar.update(task, completed=done, total=total))
    out.print(f"{name}: {folder}")


@data_app.command("synth")
def data_synth(
    ratings: Annotated[int, typer.Option("--ratings", help="number of ratings (10k .. 20M+)")] = 100_000,
    out_dir: Annotated[Path, typer.Option("--out", help="output folder (replaced atomically)")] = Path("synthetic"),
    seed: Annotated[int, typer.Option(help="random seed; same seed and size give the same files")] = 0,
) -> None:
    """Generate synthetic MovieLens-format ratings.csv + movies.csv with learnable structure."""
    import time

    from deepcrossing.data.synth import generate

    start = time.perf_counter()
    with console.status(f"generating {ratings:,} ratings"):
        folder = generate(ratings, out_dir, seed=seed)
    out.print(f"wrote {ratings:,} ratings to {folder} in {time.perf_counter() - start:.1f} s")


@data_app.command("info")
def data_info(
    path: Annotated[Path, typer.Argument(help="a MovieLens folder or your own CSV/Parquet log")],
    user_col: Annotated[Optional[str], typer.Option(help="your logs: user id column")] = None,
    item_col: Annotated[Optional[str], typer.Option(help="your logs: item id column")] = None,
    rating_col: Annotated[Optional[str], typer.Option(help="your logs: rating column")] = None,
    label_col: Annotated[Optional[str], typer.Option(help="your logs: 0/1 label column")] = None,
    time_col: Annotated[Optional[str], typer.Option(help="your logs: time column (unix s or ISO)")] = None,
    items: Annotated[Optional[Path], typer.Option(help="your logs: items file (CSV/Parquet)")] = None,
    skip_bad_rows: Annotated[bool, typer.Option(help="skip and count bad rows instead of failing")] = False,
) -> None:
    """Detect the layout, validate, and print counts, time range and rating distribution."""
    import tempfile

    from deepcrossing.data.info import describe
    from deepcrossing.data.readers import ColumnMapping, load_dataset

    mapping = None
    if any(c is not None for c in (user_col, item_col, rating_col, label_col, time_col)):
        mapping = ColumnMapping(user_col=user_col or "", item_col=item_col or "", time_col=time_col or "",
                                rating_col=rating_col, label_col=label_col)
    with tempfile.TemporaryDirectory(prefix="deepcrossing-info-") as work:
        ds = load_dataset(path, workdir=work, columns=mapping, items_path=items, skip_bad_rows=skip_bad_rows)
        out.print(describe(ds))


# [prepare]


@app.command("prepare")
def prepare_cmd(
    data: Annotated[Path, typer.Option("--data", help="MovieLens folder (any release) or your own log file/folder.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder (replaced as a whole at the end).")],
    fmt: Annotated[str, typer.Option("--format", help="parquet (our schema) or sparrow (SparrowRecSys CSV).")] = "parquet",
    label_threshold: Annotated[float, typer.Option(help="rating >= this is a positive.")] = 3.5,
    recent_n: Annotated[int, typer.Option(help="N of userRecentPositives (last N positive movies).")] = 10,
    split: Annotated[str, typer.Option(help="time (global timestamp quantiles) or random (seeded).")] = "time",
    fractions: Annotated[str, typer.Option(help="train,valid,test shares.")] = "0.8,0.1,0.1",
    seed: Annotated[int, typer.Option(help="Seed of the random split.")] = 0,
    skip_bad_rows: Annotated[bool, typer.Option(help="Skip and count bad input rows instead of failing.")] = False,
    user_col: Annotated[Optional[str], typer.Option(help="Your log: user id column.")] = None,
    item_col: Annotated[Optional[str], typer.Option(help="Your log: item id column.")] = None,
    rating_col: Annotated[Optional[str], typer.Option(help="Your log: rating column.")] = None,
    label_col: Annotated[Optional[str], typer.Option(help="Your log: explicit 0/1 label column.")] = None,
    time_col: Annotated[Optional[str], typer.Option(help="Your log: time column (unix seconds or ISO).")] = None,
    items: Annotated[Optional[Path], typer.Option(help="Your log: items file (id, title, genres, year).")] = None,
) -> None:
    """Rating logs -> leakage-free train/valid/test samples + items.parquet + manifest.json."""
    import tempfile
    import time

    from deepcrossing.data import ColumnMapping, load_dataset
    from deepcrossing.features import FeatureConfig, build_samples

    started = time.perf_counter()
    try:
        shares = tuple(float(x) for x in fractions.split(","))
    except ValueError:
        raise DeepCrossingError(f"--fractions must be three numbers like 0.8,0.1,0.1, not {fractions!r}") from None
    config = FeatureConfig(label_threshold=label_threshold, recent_n=recent_n, split=split,
                           fractions=shares, seed=seed)  # type: ignore[arg-type]
    columns = None
    if any(v is not None for v in (user_col, item_col, rating_col, label_col, time_col)):
        missing = [name for name, v in (("--user-col", user_col), ("--item-col", item_col),
                                        ("--time-col", time_col)) if v is None]
        if missing or (rating_col is None and label_col is None):
            raise DeepCrossingError("your own log needs --user-col, --item-col, --time-col and --rating-col "
                                    f"or --label-col (missing: {', '.join(missing) or '--rating-col/--label-col'})")
        columns = ColumnMapping(user_col=user_col, item_col=item_col, time_col=time_col,  # type: ignore[arg-type]
                                rating_col=rating_col, label_col=label_col)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".prepare-", dir=out_dir.parent) as work:
        dataset = load_dataset(data, workdir=work, columns=columns, items_path=items, skip_bad_rows=skip_bad_rows)
        loaded = time.perf_counter() - started
        manifest = build_samples(dataset, config, out_dir, fmt=fmt)
    def say(text: str) -> None:
        out.print(text, soft_wrap=True, highlight=False)

    for name, count in dataset.skipped_rows.items():
        if count:
            console.print(f"skipped {count} bad rows in {name}")
    say(f"read {manifest['dataset']['ratings']:,} ratings of {dataset.name} from {data} "
              f"({loaded:.1f} s)")
    split_info = manifest["split"]
    if config.split == "time":
        say(f"time split: valid from {split_info['valid_start_iso']}, test from {split_info['test_start_iso']}")
    for name in ("train", "valid", "test"):
        info = manifest["splits"][name]
        rate = "-" if info["positive_rate"] is None else f"{info['positive_rate']:.3f}"
        say(f"  {name:<5} {info['rows']:>11,} rows  positive rate {rate}  -> "
                  f"{out_dir / manifest['files'][name]}")
    unseen = manifest["unseen_users"]["test_users_not_in_train_share"]
    if unseen is not None:
        say(f"test users never seen in train: {unseen:.1%} (their features come from earlier ratings)")
    say(f"wrote {out_dir} (manifest.json, items.parquet) in {time.perf_counter() - started:.1f} s")


# [train]


@app.command()
def train(
    samples: Annotated[Optional[Path], typer.Option(
        "--samples", help="Samples folder from `deepcrossing prepare` (train/valid/test .parquet or .csv).")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Model folder to write.")] = Path("model"),
    spec: Annotated[Optional[str], typer.Option(
        "--spec", help="Spec file (TOML/JSON) or a built-in name: movielens, sparrow "
                       "(default: sparrow for .csv samples, else movielens).")] = None,
    train_file: Annotated[Optional[Path], typer.Option("--train", help="Train sample file (instead of --samples).")] = None,
    valid_file: Annotated[Optional[Path], typer.Option("--valid", help="Validation sample file.")] = None,
    test_file: Annotated[Optional[Path], typer.Option("--test", help="Test sample file (optional).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Override the spec's train.epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Override train.batch_size.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Override train.lr.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Override train.seed (init, shuffling, dropout).")] = None,
    mlp: Annotated[Optional[str], typer.Option(help="Override model.mlp: residual or plain.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto (cuda when available).")] = "auto",
    threads: Annotated[int, typer.Option(
        help="Intra-op threads. 1 is fastest for these small per-step ops on a busy 2-core machine; "
             "0 = one per core.")] = 1,
    resume: Annotated[bool, typer.Option(help="Continue from MODEL/checkpoints/last after a kill.")] = False,
) -> None:
    """Train the Deep Crossing model; early stopping on validation AUC; write the model folder."""
    import dataclasses
    import time

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from deepcrossing.config import load_builtin, load_config
    from deepcrossing.errors import InputError
    from deepcrossing.features import read_samples
    from deepcrossing.training.evaluate import find_split_file
    from deepcrossing.training.pipeline import train_model

    if samples is not None:
        files = {"train": find_split_file(samples, "train"), "valid": find_split_file(samples, "valid")}
        try:
            files["test"] = find_split_file(samples, "test")
        except InputError:
            pass
    elif train_file is not None and valid_file is not None:
        files = {"train": train_file, "valid": valid_file}
        if test_file is not None:
            files["test"] = test_file
    else:
        raise DeepCrossingError("give --samples DIR, or --train FILE and --valid FILE (and optionally --test FILE)")
    if spec is None:
        spec = "sparrow" if files["train"].suffix.lower() == ".csv" else "movielens"
    config = load_builtin(spec) if spec in ("movielens", "sparrow") else load_config(spec)
    train_over = {k: v for k, v in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr), ("seed", seed))
                  if v is not None}
    model_over = {"mlp": mlp} if mlp is not None else {}
    if model_over.get("mlp") == "plain":
        model_over["hidden"] = (128, 128)  # SparrowRecSys's network
    try:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, **train_over),
                                     model=dataclasses.replace(config.model, **model_over))
    except InputError as exc:
        raise InputError(exc.message, field=f"--{(exc.field or '').replace('_', '-')}") from None
    seed_everything(config.train.seed)
    dev = pick_device(device)
    set_threads(threads or None)
    started = time.perf_counter()
    tables = {name: read_samples(path) for name, path in files.items()}
    out.print(f"read {', '.join(f'{n} {t.num_rows:,}' for n, t in tables.items())} samples "
              f"({time.perf_counter() - started:.1f} s); device {dev}, {threads or os.cpu_count()} thread(s)",
              highlight=False)

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("epoch", total=None, info="")

        def on_step(info) -> None:  # noqa: ANN001
            progress.update(task, description=f"epoch {info.epoch}/{config.train.epochs}", total=info.steps,
                            completed=info.step, info=f"loss {info.loss:.4f}  {info.samples_per_s:,.0f} samples/s")

        def on_epoch(r: dict) -> None:
            progress.console.print(
                f"epoch {r['epoch']}: train loss {r['train_loss']:.4f}  valid AUC {r['valid_auc']:.4f}  "
                f"logloss {r['valid_logloss']:.4f}  ({r['samples_per_s']:,.0f} samples/s, {r['train_seconds']:.1f} s)",
                highlight=False)

        summary = train_model(tables, config, out_dir, device=dev, resume=resume,
                              sources={k: str(v) for k, v in files.items()}, on_step=on_step, on_epoch=on_epoch)
    best = summary["best_epoch"]
    out.print(f"best epoch {best} of {summary['epochs_run']}"
              + (" (stopped early)" if summary["stopped_early"] else "")
              + f": valid AUC {summary['valid']['auc']:.4f}  logloss {summary['valid']['logloss']:.4f}",
              highlight=False)
    if "test" in summary:
        out.print(f"test AUC {summary['test']['auc']:.4f}  logloss {summary['test']['logloss']:.4f}", highlight=False)
    out.print(f"wrote {out_dir}: model.safetensors, manifest.json, metrics.jsonl, metrics.json, curves.png, "
              f"roc.png, checkpoints/ in {summary['seconds']:.1f} s", highlight=False)


# [evaluate]


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option("--model", help="Model folder written by `deepcrossing train`.")],
    samples: Annotated[Optional[Path], typer.Option(
        "--samples", help="Samples folder from `deepcrossing prepare` (Parquet or --format sparrow CSV).")] = None,
    split: Annotated[str, typer.Option("--split", help="Which split of --samples: train, valid or test.")] = "test",
    file: Annotated[Optional[Path], typer.Option(
        "--file", help="Evaluate this sample file (Parquet or SparrowRecSys CSV) instead of --samples/--split.")] = None,
    out_path: Annotated[Optional[Path], typer.Option(
        "--out", help="Where to write the metrics JSON (default: MODEL/metrics-<split>.json, "
                      "or MODEL/metrics-<file stem>.json with --file).")] = None,
    k: Annotated[int, typer.Option("--k", min=1, help="Cut-off of NDCG/Recall/HitRate per user.")] = 10,
) -> None:
    """Score a sample split with a trained model; print and write AUC, log loss, accuracy, PR-AUC, GAUC and
    per-user NDCG/Recall/HitRate@k, next to a popularity baseline (the movie's rating count before t)."""
    import json

    from rich.table import Table

    import deepcrossing
    from deepcrossing.atomic import write_text_atomic
    from deepcrossing.features import read_samples
    from deepcrossing.training.evaluate import evaluate_scores, find_split_file, metric_rows

    if file is None and samples is None:
        raise DeepCrossingError("give --samples DIR (with --split) or --file FILE")
    path = file if file is not None else find_split_file(samples, split)
    loaded = deepcrossing.load(model)
    table = read_samples(path)
    with console.status(f"scoring {table.num_rows:,} samples of {path}"):
        scores = loaded.predict(table)
    report = evaluate_scores(table, scores, k=k, source=path)
    report["model_dir"] = str(model)
    report["split"] = None if file is not None else split

    view = Table(title=f"{path}: {report['n_samples']:,} samples, {report['n_users']:,} users, "
                       f"positive rate {report['positive_rate']:.3f}")
    view.add_column("metric")
    view.add_column("model", justify="right")
    view.add_column("popularity", justify="right")
    for row in metric_rows(report):
        view.add_row(*row)
    out.print(view)
    out.print(f"popularity baseline: {report['popularity_definition']}", highlight=False)

    target = out_path or Path(model) / f"metrics-{split if file is None else Path(file).stem}.json"
    write_text_atomic(target, json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {target}", highlight=False)


# [export]


@app.command()
def export(
    model: Annotated[Path, typer.Option("--model", help="Model folder written by `deepcrossing train`.")],
    fmt: Annotated[str, typer.Option("--format", help="onnx or torchscript.")] = "onnx",
    out_file: Annotated[Optional[Path], typer.Option(
        "--out", help="Output file (default: MODEL/model.onnx or MODEL/model.torchscript.pt).")] = None,
) -> None:
    """Export a model folder to ONNX or TorchScript (same scores as the PyTorch model; inputs in FILE.json)."""
    from deepcrossing.training.export import export_model

    path = export_model(model, fmt, out_file)
    out.print(f"wrote {path} (inputs described in {path.name}.json)", highlight=False)


# [publish]


@app.command("publish")
def publish_cmd(
    model: Annotated[Path, typer.Option("--model", help="Model folder from `deepcrossing train`.")],
    data: Annotated[Path, typer.Option("--data", help="The rating logs (MovieLens folder or log file), as for prepare.")],
    store: Annotated[Optional[str], typer.Option(
        "--store", help="sqlite:///path.db or redis://host:port/db (default: sqlite:///MODEL/features.db).")] = None,
    candidates: Annotated[int, typer.Option(help="How many popular movies to keep as candidates.")] = 5000,
    keep_previous: Annotated[float, typer.Option(
        help="Seconds the previous version stays readable after the switch (running services move over).")] = 2.0,
) -> None:
    """Compute each user's and movie's latest features and publish them as a new store version."""
    import time

    from deepcrossing.serving.publish import default_store_url, publish_for_model

    url = store or default_store_url(model)
    if store is None:
        out.print(f"store: {url} (default; pass --store redis://host:port/db for Redis)", highlight=False, soft_wrap=True)
    started = time.perf_counter()
    meta = publish_for_model(model, data, url, max_candidates=candidates, keep_previous_s=keep_previous)
    out.print(f"published version {meta['version']} to {url}: {meta['n_users']:,} users, {meta['n_movies']:,} "
              f"movies, {meta['n_candidates']:,} candidates, checksum {meta['checksum'][:12]}, "
              f"in {time.perf_counter() - started:.1f} s (feature config {meta['feature_config_source']})",
              highlight=False, soft_wrap=True)
    out.print(f"serve it: deepcrossing serve --model {model} --store {url}", highlight=False, soft_wrap=True)

# [serve]


@app.command("serve")
def serve_cmd(
    model: Annotated[Path, typer.Option("--model", help="Model folder from `deepcrossing train`.")],
    store: Annotated[Optional[str], typer.Option(
        "--store", help="sqlite:///path.db or redis://host:port/db (default: sqlite:///MODEL/features.db).")] = None,
    host: Annotated[str, typer.Option(help="Address to bind (loopback unless you mean otherwise).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    admin_token: Annotated[Optional[str], typer.Option(
        "--admin-token", envvar="DEEPCROSSING_ADMIN_TOKEN",
        help="Bearer token for /admin (required to use /admin when --host is not loopback).")] = None,
    threads: Annotated[int, typer.Option(help="Torch intra-op threads for scoring, per worker.")] = 1,
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
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Run the ranking service (FastAPI + uvicorn): /recommend, /score, /users, /movies, /metrics, web page."""
    import shutil
    import tempfile

    import uvicorn

    from deepcrossing.serving.app import ENV_SETTINGS, create_app
    from deepcrossing.serving.control import Control
    from deepcrossing.serving.publish import default_store_url
    from deepcrossing.serving.settings import ServingSettings

    url = store or default_store_url(model)
    control_dir = Path(tempfile.mkdtemp(prefix="deepcrossing-serve-")) if workers > 1 else None
    settings = ServingSettings(model_dir=model.resolve(), store_url=url, host=host, admin_token=admin_token,
                               backend=backend, threads=threads, workers=workers, control_dir=control_dir,
                               score_in_threads=score_in_threads, user_cache=user_cache)
    procs = f" in {workers} worker processes" if workers > 1 else ""
    out.print(f"serving {model} with store {url} on http://{host}:{port}/{procs} (web page: /ui/, metrics: "
              "/metrics)", highlight=False, soft_wrap=True)
    if not settings.loopback and admin_token is None:
        out.print("note: /admin is refused on a non-loopback host without --admin-token", highlight=False, soft_wrap=True)
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
    model: Annotated[Path, typer.Option("--model", help="Model folder from `deepcrossing train`.")],
    user: Annotated[int, typer.Option("--user", help="User id (unknown ids get cold-start features).")],
    k: Annotated[int, typer.Option("-k", "--k", help="How many movies to list.")] = 10,
    store: Annotated[Optional[str], typer.Option(
        "--store", help="sqlite:///path.db or redis://host:port/db (default: sqlite:///MODEL/features.db).")] = None,
    candidates: Annotated[int, typer.Option(help="How many popular movies to rank.")] = 800,
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

# [quickstart]


def _quickstart_users(samples_dir: Path) -> list[int]:
    """Three users worth looking at: the busiest of the test period, a light user, and one never seen (cold start)."""
    import duckdb

    con = duckdb.connect()
    test = str(samples_dir / "test.parquet")
    rows = con.execute(
        f"SELECT userId, count(*) AS n FROM read_parquet('{test}') GROUP BY userId ORDER BY n DESC, userId"
    ).fetchall()
    unknown = con.execute(
        f"SELECT max(userId) + 1 FROM read_parquet('{samples_dir}/*.parquet', union_by_name = true) "
        "WHERE userId IS NOT NULL").fetchone()[0]
    con.close()
    if not rows:
        return [int(unknown)]
    return [int(rows[0][0]), int(rows[len(rows) // 2][0]), int(unknown)]


@app.command()
def quickstart(
    data: Annotated[Optional[Path], typer.Option(
        "--data", help="Rating logs to use (MovieLens folder of any release, or your own log with prepare's "
                       "options). Default: a downloaded MovieLens from the cache, else synthetic data.")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Where everything goes.")] = Path("runs/quickstart"),
    ratings: Annotated[int, typer.Option(help="Size of the synthetic default data.")] = 300_000,
    epochs: Annotated[Optional[int], typer.Option(help="Override the spec's epochs (default: the spec's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic data and of training.")] = 0,
) -> None:
    """Run the whole pipeline offline: data -> prepare -> train -> evaluate -> publish -> top 10 for three users."""
    import json
    import time

    from deepcrossing.data.download import find_cached_movielens
    from deepcrossing.data.synth import generate

    started = time.perf_counter()

    def stage(text: str) -> None:
        out.rule(f"[bold]{text}", align="left")

    stage("1/6 data")
    if data is None:
        data = find_cached_movielens()
        if data is not None:
            out.print(f"using MovieLens found in the cache: {data}", highlight=False)
    if data is None:
        data = out_dir / "data"
        marker = data / "synth.json"
        made = json.loads(marker.read_text()) if marker.exists() else {}
        if made.get("n_ratings") == ratings and made.get("seed") == seed:
            out.print(f"using the synthetic data already in {data}", highlight=False)
        else:
            out.print(f"no --data and no downloaded MovieLens: generating {ratings:,} synthetic ratings "
                      f"(`deepcrossing data download ml-latest-small` gets real data where the network allows)",
                      highlight=False, soft_wrap=True)
            generate(ratings, data, seed=seed)
    samples, model = out_dir / "samples", out_dir / "model"

    stage("2/6 prepare: point-in-time features, time split")
    prepare_cmd(data=data, out_dir=samples)
    stage("3/6 train")
    train(samples=samples, out_dir=model, epochs=epochs, seed=seed)
    stage("4/6 evaluate on the test period")
    evaluate(model=model, samples=samples)
    stage("5/6 publish features to the online store")
    publish_cmd(model=model, data=data, store=None)
    stage("6/6 top 10 for three users")
    for user in _quickstart_users(samples):
        recommend_cmd(model=model, user=user, k=10)
    out.rule()
    out.print(f"done in {time.perf_counter() - started:.0f} s. Everything is under {out_dir}/:\n"
              f"  data    {data}\n  samples {samples}  (train/valid/test.parquet, manifest.json)\n"
              f"  model   {model}  (model.safetensors, manifest.json, metrics, curves.png, roc.png)\n"
              f"Serve it (web page at http://127.0.0.1:8000/ui/):\n"
              f"  deepcrossing serve --model {model}", highlight=False, soft_wrap=True)


def main() -> None:
    """Console entry point: people get a one-line error and exit status 2 for bad input."""
    try:
        app()
    except DeepCrossingError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
