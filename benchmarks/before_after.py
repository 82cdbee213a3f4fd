"""Before/after: the same jobs on two revisions of deepcrossing, in one run, on the same machine.

A refactor must not cost speed. This script checks out ``--before`` (any git revision) into a temporary
worktree and runs, for each revision in turn (before, after, and again before, after with ``--rounds 2``, so
drift of a shared machine hits both sides alike), with that revision's source first on ``PYTHONPATH``:

* the pipeline's verbs on real data through the command line, timed from outside (wall, CPU seconds of the
  child, peak RSS of the child): ``prepare`` (ml-latest-small), ``train`` (ml-latest-small, one epoch),
  ``evaluate``, ``publish`` (SQLite store); and ``prepare`` on ``--synthetic`` generated ratings;
* that revision's own ``benchmarks/throughput.py`` (training samples/s, deepcrossing only) and
  ``benchmarks/serve.py --quick`` (p50/p99 and req/s of the main phases), which print JSON.

It prints one table, each figure for both revisions and the ratio after/before (for times, < 1 is faster;
for throughputs, > 1 is faster). The machine here is shared and noisy: read ratios within 0.8-1.25 as "the
same within noise" unless several rounds agree.

Usage::

    .venv/bin/python benchmarks/before_after.py --before c6d61a3 [--rounds 1] [--synthetic 2000000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DEEPCROSSING_SHARED_DATA", ROOT.parent / "shared" / "data")) / "ml-latest-small"


def run(cmd: list[str], tree: Path, *, timeout: float = 1800) -> dict:
    """Run ``cmd`` with ``tree``'s source first on the path; wall, child CPU seconds and peak RSS."""
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return {"error": f"timeout after {timeout:.0f} s"}
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"error": (err.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:160]}
    return {"wall_s": wall, "stdout": out}


def timed(cmd: list[str], tree: Path, *, timeout: float = 1800) -> dict:
    """Like :func:`run`, measured by a small wrapper process: wall, CPU seconds and peak RSS of the job."""
    wrapper = ("import json,resource,subprocess,sys,time;t=time.perf_counter();"
               "r=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
               "u=resource.getrusage(resource.RUSAGE_CHILDREN);"
               "print(r.stderr[-400:],file=sys.stderr);"
               "print(json.dumps([r.returncode,time.perf_counter()-t,u.ru_utime+u.ru_stime,u.ru_maxrss]))")
    res = run([sys.executable, "-c", wrapper, *cmd], tree, timeout=timeout)
    if "error" in res:
        return res
    code, wall, cpu, rss_kib = json.loads(res["stdout"].strip().splitlines()[-1])
    if code != 0:
        return {"error": f"exit {code}"}
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_gib": rss_kib / 2**20}


def pipeline(tree: Path, work: Path, synthetic: int) -> dict[str, dict]:
    """The CLI verbs on ml-latest-small (and prepare on synthetic data), each timed alone."""
    cli = [sys.executable, "-m", "deepcrossing.cli"]
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    samples, model = work / "samples", work / "model"
    res = {"prepare ml-latest-small": timed([*cli, "prepare", "--data", str(DATA), "--out", str(samples)], tree),
           "train ml-latest-small 1 epoch": timed([*cli, "train", "--samples", str(samples), "--out", str(model),
                                                   "--epochs", "1", "--device", "cpu"], tree),
           "evaluate test split": timed([*cli, "evaluate", "--model", str(model), "--samples", str(samples)], tree),
           "publish (SQLite)": timed([*cli, "publish", "--model", str(model), "--data", str(DATA), "--store",
                                      f"sqlite:///{work / 'features.db'}"], tree)}
    if synthetic:
        synth = work.parent / f"synth-{synthetic}"
        if not (synth / "ratings.csv").exists():
            run([*cli, "data", "synth", "--ratings", str(synthetic), "--out", str(synth)], tree)
        res[f"prepare {synthetic:,} synthetic"] = timed([*cli, "prepare", "--data", str(synth), "--out",
                                                         str(work / "synth-samples")], tree)
    return res


def throughput(tree: Path, work: Path, n: int) -> dict[str, dict]:
    out = work / "throughput.json"
    res = run([sys.executable, str(tree / "benchmarks" / "throughput.py"), f"--n={n}", "--skip-deepctr",
               "--json", str(out)], tree)
    if "error" in res:
        return {"train samples/s (throughput.py)": res}
    dc = json.loads(out.read_text())["deepcrossing"]
    return {"train samples/s (throughput.py)": {"rate": dc["samples_per_s"]},
            "train samples/CPU-s (throughput.py)": {"rate": dc["samples_per_cpu_s"]}}


def serve(tree: Path, work: Path) -> dict[str, dict]:
    out = work / "serve.json"
    res = run([sys.executable, str(tree / "benchmarks" / "serve.py"), "--data", str(DATA), "--quick",
               "--json", str(out)], tree, timeout=1200)
    if "error" in res:
        return {"serve (serve.py --quick)": res}
    rows = json.loads(out.read_text())["rows"]
    picked: dict[str, dict] = {}
    for row in rows:
        key = f"serve {row['phase']} [{row['setup']}]"
        if key in picked:
            continue
        if row["phase"].startswith("open loop"):
            picked[key + " p99 ms"] = {"ms": row["p99_ms"]}
        else:
            picked[key + " req/s"] = {"rate": row["rps"]}
    return picked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="git revision to compare against (e.g. main~5)")
    parser.add_argument("--rounds", type=int, default=1, help="before/after pairs (alternating)")
    parser.add_argument("--synthetic", type=int, default=2_000_000, help="synthetic ratings for prepare (0: skip)")
    parser.add_argument("--throughput-n", type=int, default=500_000, help="samples for throughput.py")
    parser.add_argument("--skip", default="", help="comma list of: pipeline, throughput, serve")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if not DATA.exists():
        sys.exit(f"ml-latest-small not found at {DATA} (set DEEPCROSSING_SHARED_DATA)")
    skip = set(filter(None, args.skip.split(",")))
    base = Path(tempfile.mkdtemp(prefix="bench-before-after-"))
    before_tree = base / "before"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(before_tree), args.before],
                   check=True)
    trees = {"before": before_tree, "after": ROOT}
    results: dict[str, dict[str, list[dict]]] = {"before": {}, "after": {}}
    try:
        for round_ in range(args.rounds):
            for side, tree in trees.items():
                work = base / f"work-{side}"
                print(f"round {round_ + 1}: {side} ({tree})", file=sys.stderr, flush=True)
                got: dict[str, dict] = {}
                if "pipeline" not in skip:
                    got |= pipeline(tree, work, args.synthetic)
                if "throughput" not in skip:
                    got |= throughput(tree, work, args.throughput_n)
                if "serve" not in skip:
                    got |= serve(tree, work)
                for key, value in got.items():
                    results[side].setdefault(key, []).append(value)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before_tree)], check=False)
        shutil.rmtree(base, ignore_errors=True)
    print_table(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def _best(values: list[dict], key: str) -> float | None:
    got = [v[key] for v in values if key in v]
    if not got:
        return None
    return max(got) if key == "rate" else min(got)


def print_table(results: dict[str, dict[str, list[dict]]], args: argparse.Namespace) -> None:
    print(f"\nbefore = {args.before}, after = working tree; {os.cpu_count()} cores (shared); best of "
          f"{args.rounds} round(s); ratio = after / before\n")
    head = f"{'job':<58} {'before':>10} {'after':>10} {'ratio':>7}  {'CPU s b/a':>13} {'RSS GiB b/a':>12}"
    print(head)
    print("-" * len(head))
    for job in results["after"] | results["before"]:
        b, a = results["before"].get(job, []), results["after"].get(job, [])
        errors = [v["error"] for v in b + a if "error" in v]
        if errors:
            print(f"{job:<58} error: {errors[0]}")
            continue
        key = next((k for k in ("rate", "ms", "wall_s") if any(k in v for v in a)), "wall_s")
        vb, va = _best(b, key), _best(a, key)
        if vb is None or va is None:
            continue
        unit = {"rate": "", "ms": " ms", "wall_s": " s"}[key]
        cpu = rss = ""
        if any("cpu_s" in v for v in a):
            cpu = f"{_best(b, 'cpu_s'):.1f}/{_best(a, 'cpu_s'):.1f}"
            rss = f"{_best(b, 'peak_rss_gib'):.2f}/{_best(a, 'peak_rss_gib'):.2f}"
        shown = [f"{x:,.0f}" if key == "rate" else f"{x:.2f}{unit}" for x in (vb, va)]
        print(f"{job:<58} {shown[0]:>10} {shown[1]:>10} {va / vb:>7.2f}  {cpu:>13} {rss:>12}")


if __name__ == "__main__":
    main()
