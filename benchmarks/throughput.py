"""Training throughput: deepcrossing vs DeepCTR-Torch's Embedding+DNN(128,128) at the same model size.

One run measures, on the same synthetic encoded samples (2,000,000 by default; ids drawn Zipf-like from
MovieLens-sized vocabularies: 9 single-valued id features, one 10-long recent-movies bag sharing the movie
table, 8 standardized numerics; embedding width 10 everywhere; MLP 128-128; same batch size):

* training samples/s of deepcrossing's Trainer (one epoch over all samples, validation excluded) and of
  DeepCTR-Torch 0.3.0's ``WDL`` with an empty wide part (= Embedding + DNN(128,128)), ``model.fit`` over
  ``--deepctr-samples`` of them at its best honest setting for the same work (fused Adam, no embedding L2,
  as deepcrossing here). Its rate is steady state: 50,000 and 200,000 samples give the same per-sample rate
  (measured: marginal 63.8k vs overall 64.5k samples/CPU-s), so setup does not dominate;
* samples per CPU second of each (``time.process_time``), besides wall-clock samples/s: on a shared
  machine the CPU rate is the steadier comparison;
* achieved training GFLOP/s of deepcrossing: per sample, forward FLOPs = MLP multiply-adds x 2 (+ the
  embedding pooling adds), training ~ 3x forward; as a fraction of a ``torch.matmul`` fp32 GEMM
  (``--gemm`` square) measured in the same run with the same thread count;
* peak RSS of each training child process (data generation included).

Every measurement runs in its own child process so that peak RSS and thread settings do not leak.
The shared 2-core machine this was written on is noisy: run it on a quiet machine for stable numbers.

``--bf16`` runs deepcrossing's forward pass and loss under ``torch.autocast("cpu", dtype=torch.bfloat16)``
(CPUs with AVX512-BF16 or AMX; the Trainer's ``autocast`` option: backward, the optimizer steps and validation
stay fp32); compare its samples/s and valid AUC with a run without it. The valid AUC is that of the trained
weights scored in fp32 on 20,000 held-out rows. An earlier version wrapped the whole training loop (backward
and the optimizer steps too) in autocast: with sparse Adam the loss then stayed at log 2 (valid AUC 0.50).
With the forward pass alone under autocast, 400,000 samples, 1 thread, sparse Adam, on the shared 2-core
machine at load 7-10 (noisy): valid AUC 0.7601 vs fp32 0.7600; 79,323 vs 50,502 samples per CPU second
(wall figures meaningless at that load). bf16 is an option here and in the Trainer, not a default.

Where a step goes (batch 1024, 1 thread, sparse Adam; ~183 kFLOP/sample, so the MLP's six GEMMs are ~1 ms
of a step at the idle GEMM rate). Everything else is many small operations, each a few microseconds of
dispatch plus its memory traffic, so the work since the 218k samples/s idle measurement removed operations
rather than FLOPs, keeping the math (same batches, same vectors, bit-equal table gradients, same valid AUC):

* embedding tables: one ``BagLookup`` per table in training (:mod:`deepcrossing.model.lookup`): the batch's
  distinct ids once in forward (a marked mask, not a sort, when the table is not much larger than the batch),
  one ``embedding_bag`` for all its features and bags, and in backward one gather + one ``index_add_`` giving
  a coalesced gradient, so ``RowSparseAdam`` no longer sorts the 11k looked-up movie ids per step;
* ``RowSparseAdam``'s elementwise update as ``torch._foreach_*`` calls over all tables at once;
* the Trainer gathers the rows of ~64 steps at once and slices them (the same batches), and sets the
  gradients to None directly;
* the MLP's ReLU in place (no (B, 128) buffer per layer).

Measured as interleaved 64-step ``Trainer.fit`` calls of main's and this code in one process (10 rounds,
median samples per CPU second), on the shared 2-core machine at load 6-10: 152,730 -> 185,296 (1.21x); the
full benchmark there, 500,000 samples, best of 2 alternating runs: 96,322 -> 111,974 samples/CPU-s, valid
AUC 0.7612 both, DeepCTR-Torch 1.8x slower per CPU second in the same run (GEMM ran at 78-121 GFLOP/s there,
not 198: rerun on an idle machine for the GEMM fraction). What is left (same machine, per step): ~1/4 in
the GEMMs, ~1/3 in the table lookups (the distinct-id pass and, in backward, the ``index_add_`` of 19k rows),
~1/7 in the two optimizers, the rest in small operations and autograd overhead; a further large step needs
fused kernels, not fewer Python calls.

``--breakdown`` prints, instead, the CPU time per step of each phase (thread time, median of 180 steps):
embedding forward, dense forward + loss, backward, optimizer steps. Issue 10's pass (same shared machine,
load 2-7): 0.61 / 0.61 / 1.59 / 0.53 ms. Since then all tables of one width are looked up by one
``BagLookup`` (one ``embedding_bag``, one backward ``index_add_``) and ``RowSparseAdam`` stores its moments'
rows with ``index_copy_``: 1.04x samples per CPU second in an interleaved A/B, bit-equal updates;
``torch.compile`` of the dense part and loss was 0.97x after a 138 s compile and is not used.

Fused kernels (issue 10): the lookup's forward and backward and ``RowSparseAdam``'s row update are now three C
calls per step (:mod:`deepcrossing.model.kernels`: compiled on first use into ``~/.cache/deepcrossing``, called
by ctypes; ``DEEPCROSSING_KERNELS=0`` runs the torch path), with the same vectors and gradients bit for bit and
Adam weights within 1 ulp. Shared 2-core machine, load 2-3 (other jobs), 1 thread, batch 1024:

* interleaved 64-step ``Trainer.fit`` calls, kernels on / off, 19 rounds (the process's first call dropped),
  median samples per CPU second: 195,990 -> 247,937 (1.27x; median per-round ratio 1.27);
* steps alternating on / off in one loop (thread time, medians of 140 steps each): lookup forward
  417 -> 186 us, its backward 476 -> 249 us, ``RowSparseAdam`` 484 -> 224 us, the step 4.63 -> 3.91 ms;
* ``--breakdown`` (2 runs each): embedding forward 0.73 / 0.72 -> 0.51 / 0.57 ms, optimizers 0.78 / 0.76 ->
  0.54 / 0.55 ms (backward, dense included, 2.3 -> 2.2-2.3 ms: the dense part's noise hides the lookup's);
* ``--n 400000``: 199,670 -> 285,464 samples/s wall, 131,711 -> 167,208 per CPU second, valid AUC 0.7601 both,
  DeepCTR-Torch 1.6x -> 1.9x slower per CPU second; the GEMM ran at 103-107 GFLOP/s under that load (idle:
  ~198), so the 34% -> 51% "of GEMM" it printed is of a loaded GEMM; rerun idle for issue 10's figure.

Fusion pass (issue 10): the embedding layer's training lookup of all 4 tables is one C call straight from the
batch's id tensors (:class:`~deepcrossing.model.lookup.FeatureLookup`: the ids' weights computed in C, one (B, 100)
block out; no per-step concatenation of ids or weights, offsets or output split); the stacking layer takes that
block as one input and its backward reads its gradient slice in place; ``RowSparseAdam``'s ascending-rows check
is in the C update (in torch it ran on every table every step: AccumulateGrad drops the gradients'
``is_coalesced`` flag); the dense Adam's step called torch's private fused kernel directly (``LeanAdam``, ~1%
of a step; reverted afterwards, so the figures below include ~30 us a step that main no longer saves). Same
vectors and table gradients bit for bit, same Adam weights and state, same valid AUC. Shared 2-core machine, load
1.1-1.8, 1 thread, batch 1024, main (45bd984) -> after:

* ``--breakdown --n 250000``, 5 interleaved rounds, medians: embedding forward 427 -> 256 us, dense forward and
  loss 621 -> 605, backward 1374 -> 1322, optimizers 337 -> 243, the step 2764 -> 2429 us (1.14x);
* interleaved 64-step ``Trainer.fit`` calls, processes alternating, 6 rounds of 4 fits (each process's first fit
  dropped), median samples per CPU second: 340,514 -> 379,528 (1.115x; per-round ratios 1.10-1.13);
* the whole benchmark (``--skip-deepctr``, 2 runs each, alternating): 339,719 / 340,464 -> 387,091 / 381,214
  samples/s, 29.7% / 29.7% -> 35.9% / 33.4% of the 2048^2 GEMM (197-209 GFLOP/s), valid AUC 0.7610 in all four.

What is left per step (``perf`` of the training loop, 2.64 ms a step there): the MLP's GEMMs ~42% (~1.1 ms), the
two lookup kernels ~12% (forward ~0.14 ms, backward ~0.17 ms: cache misses on table rows and ids; keeping the
pooled columns in registers was slower, setting only new bits of the row bitmap no faster), ``threshold_backward``
2%, torch's other small operations, autograd and Python the rest; each ``Optimizer.step`` also pays ~45 us for
torch's hook/profiler wrapper (kept: step hooks and profiler labels).

Usage:
    .venv/bin/python benchmarks/throughput.py [--n 2000000] [--batch-size 1024] [--threads 1]
        [--deepctr-samples 200000] [--optimizer sparse_adam|adam] [--bf16] [--breakdown] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

N_USERS, N_MOVIES, N_GENRES, N_YEARS = 100_000, 20_000, 20, 100
CATEGORICAL = {  # feature -> (table, rows)
    "userId": ("user", N_USERS), "movieId": ("movie", N_MOVIES),
    "movieGenre1": ("genre", N_GENRES), "movieGenre2": ("genre", N_GENRES), "movieGenre3": ("genre", N_GENRES),
    "userGenre1": ("genre", N_GENRES), "userGenre2": ("genre", N_GENRES), "userGenre3": ("genre", N_GENRES),
    "releaseYear": ("year", N_YEARS),
}
BAG, BAG_LEN, N_DENSE, DIM, HIDDEN = "userRecentPositives", 10, 8, 10, (128, 128)


def synthetic(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Encoded ids (1-based rows, 0 = padding) Zipf-like per table, a padded bag, numerics and labels."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, (_, rows) in CATEGORICAL.items():
        out[name] = np.minimum(rng.zipf(1.3, n), rows - 1).astype(np.int64)
    bag = np.minimum(rng.zipf(1.3, (n, BAG_LEN)), N_MOVIES - 1).astype(np.int64)
    lengths = rng.integers(0, BAG_LEN + 1, n)
    bag[np.arange(BAG_LEN)[None, :] >= lengths[:, None]] = 0
    out[BAG] = bag
    out["dense"] = rng.standard_normal((n, N_DENSE)).astype(np.float32)
    logit = out["dense"][:, 0] - 0.5 * out["dense"][:, 1] + 0.3 * (out["movieGenre1"] % 3 == 0)
    out["label"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return out


def forward_flops_per_sample() -> float:
    """Multiply-adds x 2 of the MLP and scoring, plus the bag's pooling adds (lookups are memory, not FLOPs)."""
    stacked = (len(CATEGORICAL) + 1) * DIM + N_DENSE
    dims = [stacked, *HIDDEN, 1]
    mlp = sum(2 * a * b for a, b in zip(dims[:-1], dims[1:]))
    return float(mlp + 2 * BAG_LEN * DIM)


# ---------------------------------------------------------------- children


def child_gemm(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    n = args.gemm
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        torch.matmul(a, b)
    best = float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return {"gemm_gflops": 2 * n**3 / best / 1e9, "gemm_n": n}


def _deepcrossing_setup(args: argparse.Namespace):
    """(model, train batch, valid batch) of the benchmark's spec on the synthetic samples."""
    import torch

    from deepcrossing.config import Feature, FeatureSpec, ModelConfig
    from deepcrossing.encoding import Batch
    from deepcrossing.model import DeepCrossing

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = synthetic(args.n)
    features = [Feature(name, "categorical", "user" if name.startswith("user") else "item", table=table, dim=DIM)
                for name, (table, _) in CATEGORICAL.items()]
    features.append(Feature(BAG, "multi_hot", "user", table="movie", pooling="mean", max_len=BAG_LEN))
    features += [Feature(f"num{i}", "numeric", "context", transform="standardize") for i in range(N_DENSE)]
    spec = FeatureSpec(tuple(features))
    rows = {table: size + 1 for table, size in CATEGORICAL.values()}  # + the padding row
    model = DeepCrossing(spec, ModelConfig(mlp="plain", hidden=HIDDEN, dropout=0.0, embedding_dropout=0.0),
                         rows, sparse=args.optimizer == "sparse_adam")
    batch = Batch(torch.from_numpy(data["dense"]), {k: torch.from_numpy(data[k]) for k in CATEGORICAL},
                  {BAG: torch.from_numpy(data[BAG])}, {}, torch.from_numpy(data["label"]))
    held = synthetic(20_000, seed=1)  # held-out rows of the same generator: the valid AUC compares runs
    valid = Batch(torch.from_numpy(held["dense"]), {k: torch.from_numpy(held[k]) for k in CATEGORICAL},
                  {BAG: torch.from_numpy(held[BAG])}, {}, torch.from_numpy(held["label"]))
    return model, batch, valid


def _train_config(args: argparse.Namespace):
    from deepcrossing.config import TrainConfig

    return TrainConfig(epochs=1, batch_size=args.batch_size, lr=1e-3, lr_schedule="constant", weight_decay=0.0,
                       optimizer=args.optimizer, patience=0)


def child_breakdown(args: argparse.Namespace) -> dict:
    """CPU microseconds per step (thread time, median over steps 20-199) of each phase of a training step:
    embedding forward, dense forward + loss, backward, the optimizer steps. Thread time leaves out the time
    the process waits for a core, so it is steadier than wall time on a loaded machine."""
    import statistics


    from deepcrossing.model import DeepCrossingTrain
    from deepcrossing.training.optim import make_optimizers

    model, batch, _ = _deepcrossing_setup(args)
    module = DeepCrossingTrain(model)
    optimizers = make_optimizers(module.parameter_groups(), _train_config(args))
    params = [p for p in module.parameters() if p.requires_grad]
    phases: dict[str, list[float]] = {"embedding_forward": [], "dense_forward_and_loss": [], "backward": [],
                                      "optimizers": []}
    steps = min(200, args.n // args.batch_size)
    for i in range(steps):
        part = batch.slice(i * args.batch_size, (i + 1) * args.batch_size)
        t = [time.thread_time()]
        embedded = model.embedding(part)
        t.append(time.thread_time())
        loss = module.loss_fn(model.score_embedded(embedded, part.dense), part.labels)
        t.append(time.thread_time())
        for p in params:
            p.grad = None
        loss.backward()
        t.append(time.thread_time())
        for opt in optimizers:
            opt.step()
        t.append(time.thread_time())
        if i >= min(20, steps // 2):
            for name, start, end in zip(phases, t, t[1:]):
                phases[name].append((end - start) * 1e6)
    out = {f"{name}_us": round(statistics.median(v), 1) for name, v in phases.items()}
    out["step_us"] = round(sum(out.values()), 1)
    return out


def child_deepcrossing(args: argparse.Namespace) -> dict:
    import torch

    from deepcrossing.model import DeepCrossingTrain
    from deepcrossing.training.trainer import Trainer, evaluate_batch

    model, batch, valid = _deepcrossing_setup(args)
    config = _train_config(args)
    c0 = time.process_time()
    # --bf16: the forward pass and loss under CPU autocast (AVX512-BF16/AMX); backward, optimizer and
    # validation stay fp32 (the Trainer's autocast option)
    result = Trainer(DeepCrossingTrain(model), config, "cpu",
                     autocast=torch.bfloat16 if args.bf16 else None).fit(batch, valid)
    cpu = time.process_time() - c0  # includes the 20,000-sample validation pass (~1% of the epoch)
    record = result.history[0]
    # the trained weights scored in fp32 (outside autocast): bf16 logits tie many scores and lower the AUC
    valid_auc = evaluate_batch(model, valid)["auc"]
    return {"samples_per_s": record["samples_per_s"], "samples_per_cpu_s": args.n / cpu,
            "train_seconds": record["train_seconds"], "samples": args.n, "train_loss": record["train_loss"],
            "valid_auc": valid_auc, "valid_auc_in_loop": record["valid_auc"]}


def child_deepctr(args: argparse.Namespace) -> dict:
    import torch
    from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat
    from deepctr_torch.models import WDL

    torch.set_num_threads(args.threads)
    n = args.deepctr_samples
    data = synthetic(n)
    columns = [SparseFeat(name, rows + 1, embedding_dim=DIM, embedding_name=table)
               for name, (table, rows) in CATEGORICAL.items()]
    columns.append(VarLenSparseFeat(SparseFeat(BAG, N_MOVIES + 1, embedding_dim=DIM, embedding_name="movie"),
                                    maxlen=BAG_LEN, combiner="mean"))
    columns += [DenseFeat(f"num{i}", 1) for i in range(N_DENSE)]
    x = {name: data[name] for name in CATEGORICAL}
    x[BAG] = data[BAG]
    x.update({f"num{i}": data["dense"][:, i] for i in range(N_DENSE)})
    # Its best honest setting for the same work: no embedding L2 (deepcrossing trains without one here;
    # DeepCTR's default 1e-5 adds a penalty over the whole tables each step) and fused Adam, the same
    # optimizer kernel deepcrossing uses for its dense weights (~35% faster than the default Adam here).
    model = WDL([], columns, dnn_hidden_units=HIDDEN, dnn_dropout=0.0, l2_reg_embedding=0.0, seed=0,
                device="cpu")
    model.compile(torch.optim.Adam(model.parameters(), lr=1e-3, fused=True), "binary_crossentropy")
    t0, c0 = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(sys.stderr):  # fit prints "cpu" and a summary line
        model.fit(x, data["label"], batch_size=args.batch_size, epochs=1, verbose=0)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"samples_per_s": n / seconds, "samples_per_cpu_s": n / cpu, "train_seconds": seconds, "samples": n}


CHILDREN = {"gemm": child_gemm, "deepcrossing": child_deepcrossing, "deepctr": child_deepctr,
            "breakdown": child_breakdown}


def run_child(which: str, argv: list[str]) -> dict:
    """Run one measurement in a fresh interpreter; add its peak RSS (bytes)."""
    proc = subprocess.run([sys.executable, __file__, "--child", which, *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{which} failed:\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2_000_000, help="synthetic training samples for deepcrossing")
    parser.add_argument("--deepctr-samples", type=int, default=200_000, help="samples DeepCTR-Torch trains on")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--optimizer", default="sparse_adam", choices=["adam", "sparse_adam"],
                        help="sparse_adam: sparse table gradients + SparseAdam (the option for large tables)")
    parser.add_argument("--gemm", type=int, default=2048, help="side of the square fp32 GEMM")
    parser.add_argument("--skip-deepctr", action="store_true")
    parser.add_argument("--bf16", action="store_true",
                        help="deepcrossing under torch.autocast('cpu', bfloat16) (off by default: see the README)")
    parser.add_argument("--breakdown", action="store_true",
                        help="only the CPU time of each phase of a step (embedding forward, dense forward, backward, "
                             "optimizers), in a child process")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = CHILDREN[args.child](args)
        result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps(result))
        return 0

    passthrough = [f"--n={args.n}", f"--deepctr-samples={args.deepctr_samples}", f"--batch-size={args.batch_size}",
                   f"--threads={args.threads}", f"--optimizer={args.optimizer}", f"--gemm={args.gemm}"]
    passthrough += ["--bf16"] * args.bf16
    if args.breakdown:
        result = run_child("breakdown", passthrough)
        print(json.dumps(result, indent=1))
        return 0
    results = {"config": {k: v for k, v in vars(args).items() if k not in ("child", "json")},
               "cpu_count": os.cpu_count(), "load_avg_before": os.getloadavg()}
    results["gemm"] = run_child("gemm", passthrough)
    results["deepcrossing"] = run_child("deepcrossing", passthrough)
    if not args.skip_deepctr:
        results["deepctr"] = run_child("deepctr", passthrough)
    results["load_avg_after"] = os.getloadavg()
    dc = results["deepcrossing"]
    flops = 3 * forward_flops_per_sample()
    dc["train_gflops"] = dc["samples_per_s"] * flops / 1e9
    dc["gemm_fraction"] = dc["train_gflops"] / results["gemm"]["gemm_gflops"]

    gib = 1024**3
    lines = [f"deepcrossing training throughput ({args.n:,} synthetic samples, batch {args.batch_size}, "
             f"{args.threads} thread(s), optimizer {args.optimizer}{', bf16 autocast' * args.bf16}; "
             f"load avg {results['load_avg_before'][0]:.1f})",
             "",
             "| system | samples/s (wall) | ratio | samples/CPU-s | ratio | peak RSS (GiB) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |",
             f"| deepcrossing | {dc['samples_per_s']:,.0f} | 1.00 | {dc['samples_per_cpu_s']:,.0f} | 1.00 "
             f"| {dc['peak_rss_bytes'] / gib:.2f} |"]
    if "deepctr" in results:
        ctr = results["deepctr"]
        ratio = dc["samples_per_s"] / ctr["samples_per_s"]
        cpu_ratio = dc["samples_per_cpu_s"] / ctr["samples_per_cpu_s"]
        results["speedup_vs_deepctr"], results["cpu_speedup_vs_deepctr"] = ratio, cpu_ratio
        lines.append(f"| DeepCTR-Torch WDL(DNN 128-128), {ctr['samples']:,} samples | {ctr['samples_per_s']:,.0f} "
                     f"| 1/{ratio:.1f} | {ctr['samples_per_cpu_s']:,.0f} | 1/{cpu_ratio:.1f} "
                     f"| {ctr['peak_rss_bytes'] / gib:.2f} |")
    lines += ["",
              f"deepcrossing training FLOPs: {flops / 1e3:.1f} kFLOP/sample (3 x forward) -> "
              f"{dc['train_gflops']:.2f} GFLOP/s = {dc['gemm_fraction']:.1%} of torch.matmul fp32 "
              f"{args.gemm}x{args.gemm} at {results['gemm']['gemm_gflops']:.1f} GFLOP/s",
              f"peak RSS training on {args.n:,} samples: {dc['peak_rss_bytes'] / gib:.2f} GiB (target < 4 GiB)",
              f"valid AUC after one epoch: {dc['valid_auc']:.4f}"]
    if "speedup_vs_deepctr" in results:
        lines.append(f"speed-up over DeepCTR-Torch: {results['speedup_vs_deepctr']:.1f}x wall, "
                     f"{results['cpu_speedup_vs_deepctr']:.1f}x per CPU second (target >= 10x)")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
