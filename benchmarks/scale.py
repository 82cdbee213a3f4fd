"""Scale-out benchmark: synthetic ratings -> `prepare` (DuckDB; Spark local[2] when `prepare --engine spark`
exists) -> `train` one epoch in memory vs `--stream` vs `--nproc 2`, plus a hashed-user-id run.

Every step is the real command in a child process. A poller samples the RSS of the child's whole process tree
(every 0.2 s) and keeps, per step, the peak of the Python processes' sum (driver, or all ranks together) and of
the JVM (Spark), besides wall and CPU seconds (the children's rusage, plus the JVM's CPU sampled from /proc).
Training rows report the train samples/s of the epoch (validation excluded, from metrics.jsonl) and the valid AUC.

What to expect on 2 cores: Spark and DDP are slower than DuckDB and one process (JVM start-up and shuffles;
two ranks share two cores and pay a gradient all-reduce per step). What they buy is machines: Spark runs
the same feature SQL on a cluster, `train --nproc N` under torchrun spreads the epoch over N machines or
GPUs. `--stream` buys memory: its peak RSS does not grow with the train file.

Usage:
    .venv/bin/python benchmarks/scale.py                        # 20M ratings (the issue's target run)
    .venv/bin/python benchmarks/scale.py --rows 1000000         # small run
    .venv/bin/python benchmarks/scale.py --rows 20000002 --users 10000000   # 10M distinct users, hashed ids
    (the generator gives every user a rating only when rows > 2 x users; --rows 20000000 gives 6.4M distinct)
Options: --device auto|cpu|cuda (training on the accelerator where there is one), --json out.json, --workdir.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    return out


def _rss(pid: int) -> tuple[str, int]:
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        return name, pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return "", 0


def _cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` in clock ticks (/proc/PID/stat fields 14 and 15; 0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return 0


def run_step(name: str, argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one command; wall, CPU seconds of the tree, peak RSS of its Python processes (sum) and of the JVM.

    The child's rusage holds the CPU of the descendants it waited for; pyspark does not wait for its JVM, so the
    JVM's CPU is sampled from /proc with the RSS (its last sample: the final 0.2 s may be missed) and added."""
    peaks = {"python": 0, "java": 0}
    jvm_ticks: dict[int, int] = {}
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})})
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            sums = {"python": 0, "java": 0}
            for p in _tree(proc.pid):
                comm, rss = _rss(p)
                sums["java" if comm == "java" else "python"] += rss
                if comm == "java":
                    jvm_ticks[p] = max(jvm_ticks.get(p, 0), _cpu_ticks(p))
            for k, v in sums.items():
                peaks[k] = max(peaks[k], v)
            stop.wait(0.2)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stop.set()
    watcher.join()
    output = proc.stdout.read() if proc.stdout else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{name} failed ({code}):\n{output[-3000:]}")
    jvm_cpu = sum(jvm_ticks.values()) / os.sysconf("SC_CLK_TCK")
    return {"step": name, "wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime + jvm_cpu, 2),
            "cpu_s_jvm": round(jvm_cpu, 2), "peak_rss_python": peaks["python"], "peak_rss_jvm": peaks["java"],
            "output_tail": output[-600:]}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "deepcrossing.cli", *args]


def _has_spark_engine() -> bool:
    help_text = subprocess.run(_cli("prepare", "--help"), capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "200"}).stdout
    return "--engine" in help_text


def _train_record(step: dict[str, Any], model: Path) -> dict[str, Any]:
    history = [json.loads(x) for x in (model / "metrics.jsonl").read_text().splitlines()]
    metrics = json.loads((model / "metrics.json").read_text())
    return {**step, "samples_per_s": history[-1]["samples_per_s"], "valid_auc": metrics["valid"]["auc"],
            "n_train": metrics["n_train"]}


def _hashed_spec(path: Path, buckets: int) -> Path:
    import dataclasses

    from deepcrossing.config import Feature, FeatureSpec, dumps_toml, load_builtin

    base = load_builtin("movielens")
    user = Feature("userId", "hashed", "user", hash_buckets=buckets, dim=8)
    # sparse Adam: a step updates the rows it looked up, not all `buckets` rows (dense Adam on a 1M-row table
    # ran at 4,896 samples/s on the loaded machine, 2026-12-01)
    config = dataclasses.replace(base, spec=FeatureSpec((user, *base.spec.features)),
                                 train=dataclasses.replace(base.train, optimizer="sparse_adam"))
    path.write_text(dumps_toml(config))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000_000, help="synthetic ratings")
    parser.add_argument("--users", type=int, default=None, help="distinct users (default: rows / 150)")
    parser.add_argument("--buckets", type=int, default=1 << 20, help="hash buckets of the hashed userId run")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--skip", default="",
                        help="comma-separated steps to skip: synth (reuse --workdir's synth), duckdb (reuse its "
                             "samples), spark, memory, stream, nproc, hashed")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    sys.path.insert(0, str(ROOT / "src"))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="dc-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    steps: list[dict[str, Any]] = []
    load = os.getloadavg()

    def record(step: dict[str, Any]) -> None:
        """Keep a finished step: one line on stdout now, the JSON rewritten (a killed run keeps its steps)."""
        steps.append(step)
        print(json.dumps({k: v for k, v in step.items() if k != "output_tail"}), flush=True)
        if args.json:
            args.json.write_text(json.dumps({"config": {k: str(v) for k, v in vars(args).items()},
                                             "load_avg": load, "steps": steps, "partial": True}, indent=1))

    users = f", n_users={args.users}" if args.users else ""
    if "synth" not in skip:
        record(run_step("synth", [sys.executable, "-c", "from deepcrossing.data.synth import generate; "
                                  f"generate({args.rows}, {str(work / 'synth')!r}, overwrite=True{users})"]))
    if "duckdb" not in skip:
        record(run_step("prepare duckdb", _cli("prepare", "--data", str(work / "synth"), "--out",
                                               str(work / "samples"), "--overwrite")))
    if "spark" not in skip and _has_spark_engine():
        record(run_step("prepare spark local[2]", _cli(
            "prepare", "--data", str(work / "synth"), "--out", str(work / "samples-spark"), "--overwrite",
            "--engine", "spark", "--spark-master", "local[2]", "--spark-conf", "spark.driver.memory=4g")))
    elif "spark" not in skip:
        record({"step": "prepare spark local[2]", "skipped": "this checkout has no `prepare --engine spark`"})
    samples = work / "samples"
    common = ["train", "--samples", str(samples), "--epochs", "1", "--device", args.device, "--overwrite"]
    # "in memory" forces it: above a quarter of the RAM (the default --memory-budget) train streams by itself
    runs = [("train in memory", ["--memory-budget", "1T"], "memory"), ("train --stream", ["--stream"], "stream"),
            ("train --nproc 2", ["--nproc", "2"], "nproc")]
    for name, extra, key in runs:
        if key in skip:
            continue
        model = work / f"model-{key}"
        record(_train_record(run_step(name, _cli(*common, "--out", str(model), *extra)), model))
    if "hashed" not in skip:
        spec = _hashed_spec(work / "hashed.toml", args.buckets)
        model = work / "model-hashed"
        import pyarrow.parquet as pq

        hashed = _train_record(run_step(f"train --stream, hashed userId ({args.buckets:,} buckets)", _cli(
            *common, "--out", str(model), "--stream", "--spec", str(spec))), model)
        hashed["distinct_users"] = len(pq.read_table(samples / "train.parquet", columns=["userId"])
                                       .column(0).unique())
        record(hashed)

    by = {s["step"]: s for s in steps}
    lines = [f"scale benchmark: {args.rows:,} synthetic ratings, device {args.device}, {os.cpu_count()} cores, "
             f"load avg {load[0]:.1f} (a shared machine: noisy)", "",
             "| step | wall s | CPU s | peak RSS python (GiB) | peak RSS JVM (GiB) | samples/s | valid AUC |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in steps:
        if "skipped" in s:
            lines.append(f"| {s['step']} | skipped: {s['skipped']} | | | | | |")
            continue
        lines.append(f"| {s['step']} | {s['wall_s']:.1f} | {s['cpu_s']:.1f} | {s['peak_rss_python'] / GIB:.2f} | "
                     f"{s['peak_rss_jvm'] / GIB:.2f} | {s.get('samples_per_s', float('nan')):,.0f} | "
                     f"{s.get('valid_auc', float('nan')):.4f} |")
    ratios = {}
    if "wall_s" in by.get("prepare spark local[2]", {}) and "prepare duckdb" in by:
        ratios["spark / duckdb wall"] = by["prepare spark local[2]"]["wall_s"] / by["prepare duckdb"]["wall_s"]
    base = by.get("train in memory")
    for name in ("train --stream", "train --nproc 2"):
        if name in by and base is not None:
            ratios[f"{name} / in memory samples/s"] = by[name]["samples_per_s"] / base["samples_per_s"]
            ratios[f"{name} / in memory peak RSS"] = by[name]["peak_rss_python"] / base["peak_rss_python"]
            ratios[f"{name} valid AUC - in memory"] = by[name]["valid_auc"] - base["valid_auc"]
    lines += ["", *(f"{k}: {v:.3f}" for k, v in ratios.items())]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"config": {k: str(v) for k, v in vars(args).items()}, "load_avg": load,
                                         "steps": steps, "ratios": ratios}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
