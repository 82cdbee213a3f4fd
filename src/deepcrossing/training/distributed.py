"""Data-parallel training (DistributedDataParallel): the rank context, its collectives, and the local launcher.

One rank per process; each holds a full copy of the model and trains on its own shard of the train rows.

* **Objective.** Every rank runs the same number of steps over equal-size local batches of
  ``batch_size // world_size`` rows and minimizes its local *mean* loss. DDP averages the gradients over
  the ranks in backward, and the average of equal-size local means is the global mean, so a step of W
  ranks is the step of one process on their concatenated batch (same weights to float rounding). A sum
  would multiply the gradient, and with it the effective learning rate, by W.
* **Sparse gradients.** gloo all-reduces sparse embedding gradients (``optimizer = "sparse_adam"``); NCCL
  has no sparse all-reduce, so on GPUs the tables are built with dense gradients (and the dense Adam).
* **Rank 0** evaluates, keeps the best weights, writes checkpoints, metrics and the model folder; the
  others wait at the next collective (the early-stopping flag it broadcasts after every epoch).
* **Faults.** :func:`launch` watches its ranks: when one dies, the others are stopped and the launch
  raises a one-line error naming the rank; a rank blocked in a collective whose peer vanished fails after
  ``timeout`` at the latest. Under ``torchrun`` its agent does the watching.

Example:
    >>> ctx = DistContext(rank=1, world_size=2, local_rank=1, backend="gloo")
    >>> ctx.is_main, shard_rows(5, ctx).tolist()
    (False, [1, 3])
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from deepcrossing.errors import DeepCrossingError, InputError

DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a data-parallel run.

    Attributes:
        rank: 0 .. world_size - 1 (rank 0 evaluates and writes).
        world_size: number of ranks (processes), across all machines.
        local_rank: rank on this machine (its GPU index with NCCL).
        backend: ``gloo`` (CPU) or ``nccl`` (GPU).
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank."""
        dist.barrier()

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (the others' values are ignored)."""
        t = torch.tensor([int(flag)], device=self._device())
        dist.broadcast(t, src=0)
        return bool(t.item())

    def all_reduce(self, values: list[float], op: str = "sum") -> list[float]:
        """Element-wise ``sum`` / ``min`` / ``max`` of ``values`` over the ranks (float64)."""
        ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.all_reduce(t, op=ops[op])
        return [float(v) for v in t.cpu()]

    def require_same(self, what: str, state: Any) -> None:
        """Refuse (InputError on every rank) when the ranks' JSON-ready ``state`` differ (by SHA-256)."""
        digest = hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()
        digests: list[Any] = [None] * self.world_size
        dist.all_gather_object(digests, digest)
        if len(set(digests)) != 1:
            odd = [r for r, d in enumerate(digests) if d != digests[0]]
            raise InputError(f"the ranks fitted different {what} (ranks {odd} differ from rank 0): every rank "
                             "must read the same train file; refusing to train on mismatched vocabularies")

    def _device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")


def from_env(device: str = "cpu") -> DistContext | None:
    """The context ``torchrun`` (or :func:`launch`) describes in ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, or None
    for a plain single process; NCCL when ``device`` is ``cuda``, else gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return DistContext(rank, world, local, "nccl" if device.startswith("cuda") else "gloo")


def init(ctx: DistContext, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Join the process group (``MASTER_ADDR``/``MASTER_PORT`` rendezvous from the environment)."""
    if dist.is_initialized():
        return
    if ctx.backend == "nccl":
        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group(ctx.backend, rank=ctx.rank, world_size=ctx.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))


def shutdown() -> None:
    """Leave the process group (if joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def shard_rows(n: int, ctx: DistContext | None) -> torch.Tensor:
    """Row indices of this rank's shard of ``n`` rows: every ``world_size``-th row from ``rank`` (shards
    differ by at most one row; :class:`~deepcrossing.training.trainer.Trainer` evens them out per epoch)."""
    if ctx is None:
        return torch.arange(n)
    return torch.arange(ctx.rank, n, ctx.world_size)


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """Seed of one rank's shuffling and dropout in one epoch (so ``--resume`` under DDP needs no RNG state)."""
    return (seed * 1_000_003 + epoch * 7_919 + rank) % (2**63 - 1)


def wrap(module: nn.Module, ctx: DistContext) -> nn.Module:
    """``module`` in DistributedDataParallel (its forward must return the loss: DDP syncs what goes through
    its forward; rank 0's initial weights are broadcast to every rank)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.local_rank] if ctx.backend == "nccl" else None
    return DistributedDataParallel(module, device_ids=ids)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_entry(local_rank: int, worker: Callable[[DistContext, Any], None], job: Any, world: int,
                backend: str, error_dir: str) -> None:
    os.environ.update({"RANK": str(local_rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world)})
    ctx = DistContext(local_rank, world, local_rank, backend)
    try:
        worker(ctx, job)
        if dist.is_initialized():  # leave together: a gloo rank leaving while another still talks to it
            dist.barrier()         # sometimes aborts in gloo's threads (SIGABRT, "terminate called without...")
    except DeepCrossingError as exc:  # a message for people: hand it to the launcher, exit quietly
        Path(error_dir, f"rank-{local_rank}").write_text(str(exc))
        raise SystemExit(2) from None
    finally:
        shutdown()


def launch(nproc: int, worker: Callable[[DistContext, Any], None], job: Any, backend: str = "gloo") -> None:
    """Run ``worker(ctx, job)`` in ``nproc`` local rank processes (spawned; rendezvous on a free loopback port).

    ``worker`` must be importable (a module-level function) and ``job`` picklable. The launcher watches the
    ranks: when one fails or is killed, the others are terminated.

    Raises:
        DeepCrossingError: a rank failed: its own message for an input error, else which rank died and how.
    """
    from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException, start_processes

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(_free_port())
    with tempfile.TemporaryDirectory(prefix="deepcrossing-ranks-") as error_dir:
        try:
            start_processes(  # type: ignore[no-untyped-call]
                _rank_entry, args=(worker, job, nproc, backend, error_dir), nprocs=nproc, join=True,
                start_method="spawn")
        except (ProcessRaisedException, ProcessExitedException) as exc:
            messages = sorted(Path(error_dir).glob("rank-*"))
            if messages:
                raise DeepCrossingError(messages[0].read_text()) from None
            lines = str(exc).strip().splitlines()
            how = lines[-1] if lines else type(exc).__name__
            raise DeepCrossingError(f"training rank {exc.error_index} of {nproc} died ({how}); the other ranks "
                                    "were stopped; run again with --resume to continue from the last checkpoint"
                                    ) from None


__all__ = ["DEFAULT_TIMEOUT_S", "DistContext", "epoch_seed", "from_env", "init", "launch", "shard_rows",
           "shutdown", "wrap"]
