"""In-process CPU cost of one ``/recommend`` (retrieval + ranking of 800), two source trees side by side.

No HTTP: the engine alone (``Engine.recommend`` with the user's record read once beforehand), so what is
measured is the recall and ranking CPU per request, the part the serving code decides. Each source tree
(``--src``, e.g. the main checkout's ``src`` and this one's) runs in its own worker process, and the workers
take turns, one short batch each, so both see the same machine load (the machine is shared: compare the
columns of one run, not numbers of different runs). Each worker also hashes every response (items, scores,
channels, candidates) so the run says whether the trees answer byte for byte the same.

Plans per store: the default recall (``channels`` not given: the recall folder's validated merge with
``--recall``, else ``emb:400,genres:200,popularity:200``) and ``popularity:800``; each with the engine's
per-version user cache (``cached``, the service's default) and without (``--user-cache 0``: every request
computes its user's partial and vectors afresh). Users: every user of the store, plus two unknown ids.

Usage::

    python benchmarks/recall_cpu.py --model MODEL --store sqlite:///features.db [--recall RECALL] \\
        --src /work/main/src --src src --rounds 5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PLANS = {"default": None, "popularity:800": (("popularity", 800),)}


def worker(args: argparse.Namespace) -> None:
    """Answer one line of stdin per batch: ``{plan/cache: ms per request}`` and the response hashes."""
    import torch

    from deepcrossing.serving.channels import load_recall_folder
    from deepcrossing.serving.engine import Engine

    torch.set_num_threads(1)
    recall = load_recall_folder(args.recall) if args.recall else None
    engines = {"cached": Engine.open(args.model, args.store, recall=recall),
               "uncached": Engine.open(args.model, args.store, recall=recall, user_cache=0)}
    first = engines["cached"]
    users = [u for u, _ in first.store.iter_users()] + [10**12 + 1, 10**12 + 2]
    digests = {}
    for plan, channels in PLANS.items():   # warm (fills the cache) and hash every response
        h = hashlib.sha256()
        for u in users:
            out = first.recommend(u, k=10, channels=channels)
            h.update(json.dumps([out["items"], out["channels"], out["candidates"]], sort_keys=True).encode())
        digests[plan] = h.hexdigest()[:16]
    reads = {name: {u: e.fetch_user(u) for u in users} for name, e in engines.items()}
    print(json.dumps({"ready": True, "digests": digests, "users": len(users)}), flush=True)
    for _ in sys.stdin:
        out = {}
        for plan, channels in PLANS.items():
            for name, engine in engines.items():
                t0 = time.perf_counter()
                for u in users:
                    engine.recommend(u, k=10, channels=channels, fetched=reads[name][u])
                out[f"{plan} {name}"] = (time.perf_counter() - t0) / len(users) * 1000
        print(json.dumps(out), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--recall", type=Path, default=None, help="a recall folder (serve --recall)")
    parser.add_argument("--src", action="append", default=[], help="a source tree to measure (repeatable)")
    parser.add_argument("--rounds", type=int, default=5, help="batches per tree (each: every user, every plan)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    trees = [str(Path(s).resolve()) for s in (args.src or ["src"])]
    cmd = [sys.executable, __file__, "--worker", "--model", str(args.model), "--store", args.store,
           *(["--recall", str(args.recall)] if args.recall else [])]
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=os.environ | {"PYTHONPATH": tree, "OMP_NUM_THREADS": "1"}) for tree in trees]
    heads = [json.loads(p.stdout.readline()) for p in procs]   # type: ignore[union-attr]
    times: list[dict[str, list[float]]] = [{} for _ in trees]
    for _ in range(args.rounds):
        for i, p in enumerate(procs):   # one batch each, in turn: the same load for both
            p.stdin.write("go\n")        # type: ignore[union-attr]
            p.stdin.flush()              # type: ignore[union-attr]
            for key, ms in json.loads(p.stdout.readline()).items():   # type: ignore[union-attr]
                times[i].setdefault(key, []).append(ms)
    for p in procs:
        p.stdin.close()                  # type: ignore[union-attr]
        p.wait(timeout=60)
    load = os.getloadavg()
    print(f"\nin-process /recommend CPU, ms per request (median of {args.rounds} batches of {heads[0]['users']} "
          f"users); {os.cpu_count()} cores, shared: load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"store {args.store}; recall folder {args.recall or 'none'}\n")
    print(f"{'plan':<30}" + "".join(f"{Path(t).parent.name + '/' + Path(t).name:>28}" for t in trees))
    for key in times[0]:
        meds = [sorted(t[key])[len(t[key]) // 2] for t in times]
        ratio = f"   {meds[0] / meds[-1]:.2f}x" if len(meds) > 1 else ""
        print(f"{key:<30}" + "".join(f"{m:>28.3f}" for m in meds) + ratio)
    same = all(h["digests"] == heads[0]["digests"] for h in heads)
    print(f"\nresponses (items, scores, channels, candidates) of every user and plan identical across trees: {same}"
          + ("" if same else f" {[h['digests'] for h in heads]}"))


if __name__ == "__main__":
    main()
