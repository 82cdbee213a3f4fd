"""`deepcrossing train`, `evaluate` and `export`: samples -> model folder -> metrics / ONNX."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from deepcrossing.cli.common import DEVICES, TRAIN_CONFIG, app, byte_size, checked_by, console, existing_folder, \
    model_folder, not_a_file, one_of, out, parse_size, pick_device, positive_ints
from deepcrossing.errors import DeepCrossingError

@app.command()
def train(
    samples: Annotated[Path | None, typer.Option(
        "--samples", help="Samples folder from `deepcrossing prepare` (train/valid/test .parquet or .csv).")] = None,
    out_dir: Annotated[Path, typer.Option(
        "--out", callback=not_a_file,
        help="Model folder to write: new, empty or a previous model folder (replaced as a whole, only "
             "when the new model is complete and loads).")] = Path("model"),
    spec: Annotated[str | None, typer.Option(
        "--spec", help="Spec file (TOML/JSON) or a built-in name: movielens, sparrow "
                       "(default: sparrow for .csv samples, else movielens, + userItemCFScore when the samples were "
                       "prepared with --itemcf).")] = None,
    train_file: Annotated[Path | None, typer.Option(
        "--train", help="Train sample file (instead of --samples).")] = None,
    valid_file: Annotated[Path | None, typer.Option("--valid", help="Validation sample file.")] = None,
    test_file: Annotated[Path | None, typer.Option("--test", help="Test sample file (optional).")] = None,
    epochs: Annotated[int | None, typer.Option(
        callback=checked_by(TRAIN_CONFIG, "epochs"), help="Override the spec's train.epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(
        callback=checked_by(TRAIN_CONFIG, "batch_size"), help="Override train.batch_size.")] = None,
    lr: Annotated[float | None, typer.Option(
        callback=checked_by(TRAIN_CONFIG, "lr"), help="Override train.lr.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override train.seed (init, shuffling, dropout).")] = None,
    mlp: Annotated[str | None, typer.Option(
        callback=one_of(source="deepcrossing.config:MLPS"), help="Override model.mlp: residual or plain.")] = None,
    device: Annotated[str, typer.Option(
        callback=one_of(*DEVICES), help="cpu, cuda or auto (cuda when available).")] = "auto",
    threads: Annotated[int, typer.Option(
        min=0, max=256, help="Intra-op threads. 1 is fastest for these small per-step ops on a busy 2-core machine; "
             "0 = one per core.")] = 1,
    resume: Annotated[bool, typer.Option(
        help="Continue after a kill from the checkpoint in .MODEL.work/ (next to the model folder).")] = False,
    overwrite: Annotated[bool, typer.Option(
        help="Write into a folder of other files; they are kept (a file of the same name is never replaced).")]
        = False,
    nproc: Annotated[int, typer.Option(
        min=1, max=256, help="Data-parallel ranks on this machine (DistributedDataParallel: gloo on CPU, NCCL on "
                             "GPU); for several machines start `python -m deepcrossing.cli train` under torchrun "
                             "instead (see the README).")] = 1,
    stream: Annotated[bool, typer.Option(
        "--stream", help="Read the Parquet train file a few row groups at a time instead of holding it "
                         "(automatic when it exceeds --memory-budget).")] = False,
    memory_budget: Annotated[str | None, typer.Option(
        "--memory-budget", callback=byte_size,
        help="Stream the train file when its uncompressed size exceeds this (e.g. 4G, 512M; default: a quarter "
             "of the physical memory).")] = None,
    ensemble: Annotated[int, typer.Option(
        "--ensemble", min=1, max=16,
        help="Train K members (seeds seed..seed+K-1, each early-stopped on valid) and write ONE model, their "
             "fusion: K-wide layers whose logit is the members' mean (about K^2 the MLP's serving FLOPs).")] = 1,
    refit: Annotated[bool, typer.Option(
        "--refit", help="After the early-stopped run picks the best epoch E on valid, train a fresh model (same "
                        "seed, encoder refitted) on train + valid for E epochs and save THAT one (its valid "
                        "metrics are in-sample; the selection's held-out ones are in metrics.json's refit).")]
        = False,
) -> None:
    """Train the Deep Crossing model; early stopping on validation AUC; write the model folder."""
    import dataclasses

    from deepcrossing.cli import train_run
    from deepcrossing.config import load_builtin, load_config
    from deepcrossing.errors import InputError
    from deepcrossing.outputs import check_output_dir
    from deepcrossing.training.artifact import MODEL_OUTPUT
    from deepcrossing.training.default_spec import default_config
    from deepcrossing.training.evaluate import find_split_file

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
    check_output_dir(out_dir, MODEL_OUTPUT, inputs=files.values(), overwrite=overwrite)  # before any work
    if spec is None:
        config = default_config(files["train"])   # + userItemCFScore when the samples were prepared with it
    else:
        config = load_builtin(spec) if spec in ("movielens", "sparrow") else load_config(spec)
    train_over: dict[str, Any] = {
        k: v for k, v in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr), ("seed", seed))
        if v is not None}
    model_over: dict[str, Any] = {"mlp": mlp} if mlp is not None else {}
    if model_over.get("mlp") == "plain":
        model_over["hidden"] = (128, 128)  # SparrowRecSys's network
    try:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, **train_over),
                                     model=dataclasses.replace(config.model, **model_over))
    except InputError as exc:
        raise InputError(exc.message, field=f"--{(exc.field or '').replace('_', '-')}") from None
    budget = parse_size(memory_budget) if memory_budget is not None else train_run.default_budget()
    if stream and files["train"].suffix.lower() != ".parquet":
        raise InputError("--stream reads Parquet samples (row groups); this train file is not .parquet",
                         path=files["train"])
    if ensemble > 1:
        _check_ensemble(config, spec, resume=resume, nproc=nproc, stream=stream)
    if refit:
        _check_refit(resume=resume, nproc=nproc, stream=stream, ensemble=ensemble)
    dev = pick_device(device)
    job = train_run.TrainJob(files, config, out_dir, dev, threads, resume, overwrite, stream, budget,
                             ensemble=ensemble, refit=refit)
    from deepcrossing.training import distributed

    ctx = distributed.from_env(dev)
    if ctx is not None and refit:
        raise DeepCrossingError("--refit trains in one process; run it without torchrun")
    if ctx is not None and nproc > 1:
        raise DeepCrossingError("--nproc starts local ranks itself; under torchrun (WORLD_SIZE is set) leave it out")
    if ctx is None and nproc > 1:
        distributed.launch(nproc, train_run.run_rank, job, backend="nccl" if dev == "cuda" else "gloo")
    else:
        train_run.run(job, ctx)


def _check_ensemble(config: Any, spec: str | None, *, resume: bool, nproc: int, stream: bool) -> None:
    """``--ensemble K > 1``: the flags it cannot go with, and a model config that cannot be fused."""
    from deepcrossing.errors import InputError
    from deepcrossing.model.ensemble import check_fusable

    for flag, given in (("--resume", resume), ("--nproc", nproc > 1), ("--stream", stream)):
        if given:
            raise DeepCrossingError(f"--ensemble trains its members in one process from held samples; leave out "
                                    f"{flag}")
    try:
        check_fusable(config.model, config.spec)
    except InputError as exc:
        where = spec if spec is not None and spec not in ("movielens", "sparrow") else None
        raise InputError(exc.message, path=where, field=exc.field) from None


def _check_refit(*, resume: bool, nproc: int, stream: bool, ensemble: int) -> None:
    """``--refit``: one process, train + valid held in memory, no checkpoints, one model."""
    for flag, given in (("--resume", resume), ("--nproc", nproc > 1), ("--stream", stream),
                        ("--ensemble", ensemble > 1)):
        if given:
            raise DeepCrossingError(f"--refit trains twice in one process on samples held in memory, without "
                                    f"checkpoints; leave out {flag}")


# [evaluate]

REPORT_KIND = "deepcrossing.evaluation"
RETRIEVAL_KIND = "deepcrossing.retrieval"   # training.retrieval_data.REPORT_KIND (not imported: keeps --help fast)


def _is_report(path: Path) -> bool:
    """True for a metrics report that `evaluate` wrote (its ``kind``, or the keys of reports made before it)."""
    import json

    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(report, dict) and (report.get("kind") in (REPORT_KIND, RETRIEVAL_KIND)
                                         or {"model_dir", "n_samples", "split"} <= set(report))


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option("--model", callback=model_folder,
                                        help="Model folder written by `deepcrossing train`.")],
    samples: Annotated[Path | None, typer.Option(
        "--samples", help="Samples folder from `deepcrossing prepare` (Parquet or --format sparrow CSV).")] = None,
    split: Annotated[str, typer.Option(
        "--split", callback=one_of(source="deepcrossing.training.evaluate:SPLITS"),
        help="Which split of --samples: train, valid or test.")] = "test",
    file: Annotated[Path | None, typer.Option(
        "--file",
        help="Evaluate this sample file (Parquet or SparrowRecSys CSV) instead of --samples/--split.")] = None,
    out_path: Annotated[Path | None, typer.Option(
        "--out", help="Where to write the metrics JSON (default: MODEL/metrics-<split>.json, "
                      "or MODEL/metrics-<file stem>.json with --file).")] = None,
    k: Annotated[str | None, typer.Option(
        "--k", callback=positive_ints,
        help="Cut-off of NDCG/Recall/HitRate per user (default 10); with --retrieval, the Recall@K cut-offs "
             "(default 50,100,200,800).")] = None,
    retrieval: Annotated[bool, typer.Option(
        "--retrieval", help="Evaluate candidate retrieval instead (Recall@K and coverage of each recall channel "
                            "on the time split's test period; needs --samples; default --out "
                            "MODEL/retrieval.json).")] = False,
    recall: Annotated[Path | None, typer.Option(
        "--recall", callback=existing_folder,
        help="With --retrieval: a recall folder from `deepcrossing train-recall` (adds its channels, and its "
             "merge chosen on validation).")] = None,
    overwrite: Annotated[bool, typer.Option(
        help="Replace an --out file that is not a metrics report of ours (never an input).")] = False,
) -> None:
    """Score a sample split with a trained model; print and write AUC, log loss, accuracy, PR-AUC, GAUC and
    per-user NDCG/Recall/HitRate@k, next to a popularity baseline (the movie's rating count before t).
    With --retrieval: Recall@K and coverage@K of the recall channels (popularity, genres, emb, merged)."""
    import json

    from rich.table import Table

    from deepcrossing.atomic import write_text_atomic
    from deepcrossing.features import read_samples
    from deepcrossing.outputs import check_output_file
    from deepcrossing.training.artifact import MANIFEST, WEIGHTS
    from deepcrossing.training.artifact import load as load_model
    from deepcrossing.training.evaluate import evaluate_scores, find_split_file, metric_rows

    if retrieval:
        if samples is None or file is not None:
            raise DeepCrossingError("--retrieval needs --samples DIR (a Parquet samples folder with the time split), "
                                    "not --file")
        _evaluate_retrieval(model, samples, k or "50,100,200,800", out_path, overwrite, recall)
        return
    if recall is not None:
        raise DeepCrossingError("--recall goes with --retrieval")
    if k is not None and "," in k:
        raise DeepCrossingError(f"--k takes one cut-off without --retrieval, not {k[:40]!r}")
    cutoff = int(k) if k is not None else 10
    if file is not None:
        path = file
    elif samples is not None:
        path = find_split_file(samples, split)
    else:
        raise DeepCrossingError("give --samples DIR (with --split) or --file FILE")
    loaded = load_model(model)
    target = out_path or Path(model) / f"metrics-{split if file is None else Path(file).stem}.json"
    check_output_file(target, is_ours=_is_report, what="metrics report", overwrite=overwrite,
                      inputs=[path, Path(model) / MANIFEST, Path(model) / WEIGHTS])
    table = read_samples(path)
    with console.status(f"scoring {table.num_rows:,} samples of {path}"):
        scores = loaded.predict(table, source=path)
    report = evaluate_scores(table, scores, k=cutoff, source=path)
    report["kind"] = REPORT_KIND
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

    write_text_atomic(target, json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {target}", highlight=False)


def _evaluate_retrieval(model: Path, samples: Path, ks_text: str, out_path: Path | None, overwrite: bool,
                        recall: Path | None = None) -> None:
    """``evaluate --retrieval``: print the channel x K table and write the JSON report."""
    import json

    from rich.table import Table

    from deepcrossing.atomic import write_text_atomic
    from deepcrossing.errors import InputError
    from deepcrossing.jsonfile import nan_to_null
    from deepcrossing.outputs import check_output_file
    from deepcrossing.training.artifact import MANIFEST, WEIGHTS
    from deepcrossing.training.artifact import load as load_model
    from deepcrossing.training.retrieval import parse_ks
    from deepcrossing.training.retrieval_data import TRENDING_DAYS, build_channels, evaluate_retrieval, \
        load_retrieval_data
    from deepcrossing.training.retrieval_fusion import fusion_of

    ks = parse_ks(ks_text)
    target = out_path or Path(model) / "retrieval.json"
    check_output_file(target, is_ours=_is_report, what="metrics report", overwrite=overwrite,
                      inputs=[*(Path(samples) / f"{s}.parquet" for s in ("train", "valid", "test", "items")),
                              Path(model) / MANIFEST, Path(model) / WEIGHTS,
                              *([] if recall is None else [p for p in Path(recall).iterdir() if p.is_file()])])
    loaded = load_model(model)
    vectors = None
    manifest: dict[str, Any] = {}       # the recall folder's merge: its trending and weights, as served
    if recall is not None:
        from deepcrossing.training.recall_model import load_recall, read_manifest

        vectors, manifest = load_recall(recall), read_manifest(recall)["merge"]
    data = load_retrieval_data(samples, trending_days=int(manifest.get("trending_days", TRENDING_DAYS)),
                               trending_half_life_days=manifest.get("trending_half_life_days"))
    with console.status(f"recalling for {len(data.users):,} test users"):
        report = evaluate_retrieval(data, build_channels(data, loaded, vectors, manifest.get("weights"),
                                                     manifest.get("head_weights"), int(manifest.get("k", 100)),
                                                     fusion_of(manifest)), ks)
    if report["n_users"] == 0:
        raise InputError("the test period has no user with a relevant movie (a positive rating of a movie not "
                         "rated before): nothing to evaluate", path=Path(samples) / "test.parquet")
    report["model_dir"] = str(model)
    report["recall_dir"] = None if recall is None else str(recall)
    view = Table(title=f"{samples}: {report['n_users']:,} test users with a relevant movie "
                       f"({report['n_skipped']:,} skipped), catalogue {report['catalogue_size']:,}")
    view.add_column("channel", no_wrap=True)
    for kk in ks:
        view.add_column(f"R@{kk}", justify="right")
    for kk in ks:
        view.add_column(f"cov@{kk}", justify="right")
    for name, row in report["channels"].items():
        view.add_row(name, *(f"{row['recall'][str(kk)]:.4f}" for kk in ks),
                     *(f"{row['coverage'][str(kk)]:.4f}" for kk in ks))
    out.print(view)
    # recall_warm is NaN without warm users: null in the report, which stays standard JSON
    write_text_atomic(target, json.dumps(nan_to_null(report), indent=2, allow_nan=False) + "\n")
    console.print(f"wrote {target}", highlight=False)


# [export]


@app.command()
def export(
    model: Annotated[Path, typer.Option("--model", callback=model_folder,
                                        help="Model folder written by `deepcrossing train`.")],
    fmt: Annotated[str, typer.Option("--format", callback=one_of(source="deepcrossing.training.export:FORMATS"),
                                      help="onnx or torchscript.")] = "onnx",
    out_file: Annotated[Path | None, typer.Option(
        "--out", help="Output file (default: MODEL/model.onnx or MODEL/model.torchscript.pt); its folder must "
                      "exist.")] = None,
    overwrite: Annotated[bool, typer.Option(
        help="Replace an --out file that is not an export of ours (never the model's own files).")] = False,
) -> None:
    """Export a model folder to ONNX or TorchScript (same scores as the PyTorch model; inputs in FILE.json)."""
    from deepcrossing.training.export import export_model

    path = export_model(model, fmt, out_file, overwrite=overwrite)
    out.print(f"wrote {path} (inputs described in {path.name}.json)", highlight=False)
