"""Trainer: the loop, early stopping on validation AUC, a weight average, and resume.

The loop knows nothing about Deep Crossing (minGPT's rule): it sees a training wrapper
(:class:`TrainModule`: ``batch -> (objective, loss)``, ``parameter_groups()``, ``.model``), as torchrec's
training loops see ``DLRMTrain``. The optimizers and the LR schedule are in :mod:`training.optim`, the
checkpoints in :mod:`training.checkpoint`. Train and valid are encoded once; every step is
``train.take(perm[i:i+B])`` on tensors, with the permutation drawn per epoch from a generator seeded by
``TrainConfig.seed``; the rows of ~64k samples' steps are gathered at once and sliced into the batches.

A checkpoint is written after every epoch; ``fit(resume=True)`` continues from it and ends exactly where an
uninterrupted run would have ended (same seed, same device and thread count). With a ``fingerprint`` (see
:func:`training.checkpoint.fingerprint`) it refuses a checkpoint made from other samples or another spec.

Example:
    >>> from deepcrossing.config import Feature, FeatureSpec, ModelConfig, TrainConfig
    >>> from deepcrossing.model import DeepCrossing, DeepCrossingTrain
    >>> spec = FeatureSpec((Feature("movieId", "categorical", "item", dim=4),))
    >>> model = DeepCrossing(spec, ModelConfig(hidden=(4,), width=4), {"movieId": 10})
    >>> ids = torch.arange(40) % 10
    >>> data = Batch(torch.zeros(40, 0), {"movieId": ids}, labels=(ids % 2).float())
    >>> result = Trainer(DeepCrossingTrain(model), TrainConfig(epochs=2, batch_size=8)).fit(data, data)
    >>> len(result.history), result.best_epoch in (1, 2)
    (2, True)
"""

from __future__ import annotations

import math
from collections import deque
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from deepcrossing import metrics
from deepcrossing.config import TrainConfig
from deepcrossing.encoding.batch import Batch
from deepcrossing.errors import InputError
from deepcrossing.model.train_module import ParameterGroups
from deepcrossing.training import checkpoint, distributed, pairwise
from deepcrossing.training.checkpoint import TrainingState
from deepcrossing.training.distributed import DistContext
from deepcrossing.training.optim import lr_at, make_optimizers, set_lr


GATHER_ROWS = 65536  # train rows gathered per block of steps (see Trainer._batches)


@dataclass
class StepInfo:
    """What a progress bar needs after each step."""

    epoch: int
    step: int
    steps: int
    samples: int
    loss: float
    samples_per_s: float


@dataclass
class FitResult:
    """Outcome of :meth:`Trainer.fit`: per-epoch records, the best epoch (1-based) and its valid AUC, and the
    samples trained on per epoch (all ranks; under DDP up to ``world_size - 1`` fewer than the train rows)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_auc: float = float("nan")
    stopped_early: bool = False
    samples_per_epoch: int = 0


class EvalSource(Protocol):
    """Labelled samples scored piece by piece instead of held encoded (:class:`training.stream.ParquetSplit`:
    a valid/test file of ``train --stream``). ``labels``: (B,) float32, or None without a label column."""

    labels: Tensor | None

    def __len__(self) -> int: ...

    def pieces(self) -> Iterator[Batch]:
        """The encoded rows, in file order, a few thousand at a time."""


@torch.no_grad()
def predict_logits(model: nn.Module, batch: Batch | EvalSource, device: str | torch.device = "cpu",
                   chunk: int = 65536) -> Tensor:
    """(B,) logits of ``model`` over ``batch`` (or each piece of an :class:`EvalSource`) in eval mode, ``chunk``
    rows at a time (CPU result)."""
    was_training = model.training
    model.eval()
    out = []
    for piece in [batch] if isinstance(batch, Batch) else batch.pieces():
        for start in range(0, len(piece), chunk):
            part = piece.slice(start, min(start + chunk, len(piece))).to(device)
            out.append(model(part).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def evaluate_batch(model: nn.Module, batch: Batch | EvalSource, device: str | torch.device = "cpu"
                   ) -> dict[str, float]:
    """AUC and logloss of ``model`` on an encoded, labelled batch (or an :class:`EvalSource`)."""
    if batch.labels is None:
        raise InputError("the samples to evaluate have no label column", field="label")
    return logit_metrics(predict_logits(model, batch, device), batch.labels)


def logit_metrics(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """AUC and logloss of (B,) logits against (B,) 0/1 labels (:func:`evaluate_batch` on scores at hand)."""
    probs = torch.sigmoid(logits).numpy().astype(np.float64)
    y = labels.numpy()
    return {"auc": metrics.auc(y, probs), "logloss": metrics.logloss(y, probs)}


class TrainModule(Protocol):
    """What the Trainer trains: a training wrapper such as :class:`~deepcrossing.model.DeepCrossingTrain`."""

    @property
    def model(self) -> nn.Module:
        """The wrapped model (Batch -> logits): evaluated, averaged, checkpointed."""

    def __call__(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """A labelled batch -> (objective to minimize, detached loss to report)."""

    def parameter_groups(self) -> ParameterGroups:
        """Trainable parameters by optimizer treatment."""

    def train(self, mode: bool = True) -> Any:
        """Training mode on (dropout, batch norm statistics)."""


class BatchStream(Protocol):
    """Train samples read incrementally (:class:`~deepcrossing.training.stream.ParquetStream`), not held whole."""

    @property
    def rows(self) -> int:
        """Rows this rank can read per epoch."""

    def batches(self, epoch: int, batch_size: int, rows: int, generator: torch.Generator) -> Iterator[Batch]:
        """The first ``rows`` rows of this rank's epoch ``epoch``, shuffled, as CPU batches of ``batch_size``."""


class Trainer:
    """Trains a :class:`TrainModule` (a model wrapped with its loss and parameter groups).

    Args:
        module: the training wrapper (already on ``device``), e.g. ``DeepCrossingTrain(model)``.
        config: the training config.
        device: where the steps run.
        checkpoint_dir: where the per-epoch checkpoint goes (None: no checkpoints, no resume).
        fingerprint: provenance of the run (:func:`training.checkpoint.fingerprint`), recorded in every
            checkpoint; ``fit(resume=True)`` refuses a checkpoint with another one. None: not recorded.
        dist: this rank of a data-parallel run (:mod:`training.distributed`; the process group joined), or
            None for one process. Each rank gets its own shard as ``train``; the steps go through
            DistributedDataParallel with local batches of ``batch_size // world_size`` rows; rank 0
            evaluates, checkpoints and reports (see the module docstring of :mod:`training.distributed`).
        autocast: a reduced-precision dtype (``torch.bfloat16``) for the forward pass and the loss only, under
            ``torch.autocast`` on ``device``; backward and the optimizer steps stay outside it, as PyTorch's
            autocast docs ask (wrapping the whole loop stalled training with sparse Adam: loss stuck at
            log 2). Weights, optimizer state and validation stay fp32. None (default): fp32 throughout.

    Attributes:
        model: ``module.model``, which holds the best weights after :meth:`fit`.
    """

    def __init__(self, module: TrainModule, config: TrainConfig, device: str | torch.device = "cpu",
                 checkpoint_dir: str | Path | None = None, fingerprint: Mapping[str, str] | None = None,
                 dist: DistContext | None = None, autocast: torch.dtype | None = None) -> None:
        self.module = module
        self.autocast = autocast
        self.model = module.model
        self.config = config
        self.device = torch.device(device)
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.fingerprint = None if fingerprint is None else dict(fingerprint)
        self.optimizers = make_optimizers(module.parameter_groups(), config)
        self.ema_state: dict[str, Tensor] = {}
        self.swa_record: dict[str, Any] = {}  # the SWA average's valid scores and whether it was kept
        self.dist = dist if dist is not None and dist.world_size > 1 else None

    def fit(self, train: Batch | BatchStream, valid: Batch | EvalSource | None, resume: bool = False,
            on_step: Callable[[StepInfo], None] | None = None,
            on_epoch: Callable[[dict[str, Any]], None] | None = None, users: Tensor | None = None,
            fixed_epochs: int | None = None) -> FitResult:
        """Train up to ``config.epochs`` epochs; keep the weights of the best validation AUC.

        Args:
            train: encoded train samples (CPU or ``device``), labels (N,), or a :class:`BatchStream`; under
                DDP this rank's shard.
            valid: encoded validation samples (or an :class:`EvalSource` that encodes them per pass); None
                only with ``fixed_epochs`` (the records then have no ``valid_*``).
            resume: continue from ``checkpoint_dir/last`` if it exists.
            on_step: called after every step (progress bars).
            on_epoch: called with each epoch's record (also in ``FitResult.history``).
            users: (N,) int64 user of each ``train`` row (:func:`training.pairwise.train_users`), needed when
                ``config.pairwise > 0``: each step then adds the pairwise term of a user-grouped batch, and
                the records get ``train_pairwise`` (the term's mean per step; ``train_loss`` stays the BCE).
            fixed_epochs: train exactly this many epochs of the ``config.epochs`` schedule and keep the last
                weights (the EMA's when on): no early stopping, no SWA, no choice on ``valid`` (a refit).

        Returns:
            FitResult; the model holds the best weights afterwards.

        Raises:
            InputError: no training samples; a checkpoint to resume that does not fit (see
                :func:`training.checkpoint.load`).
        """
        c = self.config
        if (valid is None and fixed_epochs is None) or (fixed_epochs is not None and not 0 < fixed_epochs <= c.epochs):
            raise InputError(f"fit: fixed_epochs {fixed_epochs} (needed without valid) must be in 1..{c.epochs}")
        ctx, world = self.dist, 1 if self.dist is None else self.dist.world_size
        if isinstance(train, Batch):
            train = train.to(self.device)
        rows = len(train) if isinstance(train, Batch) else train.rows
        pair_module = None  # the pointwise module plus the pairwise term (train.pairwise > 0)
        if c.pairwise:
            if not isinstance(train, Batch) or users is None or len(users) != len(train):
                raise InputError("train.pairwise > 0 needs the train rows in memory (not --stream) and the user "
                                 "of each row", field="train.pairwise")
            users, pair_module = users.to(self.device), pairwise.PairwiseTrain(self.module, c.pairwise)
        local_batch = c.batch_size
        if ctx is not None:  # equal rows and equal local batches on every rank: same steps, global mean loss
            rows = int(ctx.all_reduce([float(rows)], "min")[0])
            local_batch = c.batch_size // world
            if local_batch < 1:
                raise InputError(f"batch_size {c.batch_size} is smaller than the {world} ranks", field="batch_size")
        if rows == 0:
            raise InputError("there are no training samples")
        n = rows * world  # samples per epoch, all ranks
        generator = torch.Generator().manual_seed(c.seed)
        # EMA of the floating-point weights and buffers: (shadow, live) pairs, lerped after every step
        live = {k: v for k, v in self.model.state_dict().items() if v.is_floating_point()}
        self.ema_state = {k: v.detach().clone() for k, v in live.items()} if c.ema > 0 else {}
        ema_pairs = ([self.ema_state[k] for k in live], list(live.values())) if c.ema > 0 else ([], [])
        state = TrainingState(self.model, self.optimizers, self.ema_state, generator, self.device)
        progress = checkpoint.Progress()
        if resume and self.checkpoint_dir is not None and checkpoint.exists(self.checkpoint_dir):
            progress = checkpoint.load(self.checkpoint_dir, state, c, self.fingerprint)
        # under DDP the loss goes through DDP's forward, which syncs the gradients in backward
        inner: Any = self.module if pair_module is None else pair_module
        step_module: Callable[..., tuple[Tensor, ...]] = inner if ctx is None else distributed.wrap(inner, ctx)
        is_main = ctx is None or ctx.is_main
        steps = math.ceil(rows / local_batch)
        recent: deque[dict[str, Tensor]] = deque(maxlen=max(c.swa, 1))  # the last epochs' weights (SWA)
        self.module.train()
        params = [p for opt in self.optimizers for group in opt.param_groups for p in group["params"]]
        for epoch in range(progress.epochs_done, fixed_epochs or c.epochs):
            if progress.stopped_early:
                break
            if ctx is not None:  # per-epoch seeds: a resumed rank draws what it would have drawn
                generator.manual_seed(distributed.epoch_seed(c.seed, ctx.rank, epoch))
                torch.manual_seed(distributed.epoch_seed(c.seed + 1, ctx.rank, epoch))
            t0 = time.perf_counter()
            total_loss = torch.zeros((), device=self.device)
            pair_total = torch.zeros((), device=self.device)
            seen = 0
            grouped = None  # the user-grouped batches of the pairwise term
            if pair_module is not None and users is not None and isinstance(train, Batch):
                grouped = self._grouped(train, users, epoch, rows, local_batch)
            for step, batch in enumerate(self._batches(train, epoch, rows, local_batch, generator)):
                set_lr(self.optimizers, lr_at(c, epoch, step, steps))
                batch = batch.to(self.device, non_blocking=True) if not isinstance(train, Batch) else batch
                inputs = (batch,) if grouped is None else (batch, *next(grouped))
                if self.autocast is None:
                    objective, loss, *pair = step_module(*inputs)
                else:  # forward + loss only (PyTorch's autocast recipe); backward and steps in fp32
                    with torch.autocast(self.device.type, dtype=self.autocast):
                        objective, loss, *pair = step_module(*inputs)
                    objective, loss = objective.float(), loss.float()
                if pair:
                    pair_total += pair[0]
                for p in params:  # zero_grad(set_to_none=True) of every optimizer, without its per-call overhead
                    p.grad = None
                torch.autograd.backward(objective)
                for opt in self.optimizers:
                    opt.step()
                if c.ema > 0:
                    with torch.no_grad():
                        torch._foreach_lerp_(ema_pairs[0], ema_pairs[1], 1.0 - c.ema)
                total_loss += loss * len(batch)
                seen += len(batch)
                if on_step is not None and is_main and (step % 20 == 0 or step == steps - 1):
                    elapsed = time.perf_counter() - t0
                    on_step(StepInfo(epoch + 1, step + 1, steps, seen * world, float(total_loss) / seen,
                                     seen * world / max(elapsed, 1e-9)))
            sums = [float(total_loss), float(pair_total) / steps]
            if ctx is not None:
                sums = ctx.all_reduce(sums)
            epoch_loss, pair_mean = sums[0], sums[1] / world
            train_seconds = time.perf_counter() - t0
            if not is_main:  # rank 0 evaluates and checkpoints; the others wait for its verdict
                assert ctx is not None
                progress.epochs_done = epoch + 1
                progress.stopped_early = ctx.broadcast_flag(False)
                continue
            if c.ema > 0:  # evaluate (and keep as best) the averaged weights
                current = {k: v.detach().clone() for k, v in live.items()}
                self.model.load_state_dict(self.ema_state, strict=False)
            scores = {} if valid is None else evaluate_batch(self.model, valid, self.device)
            record = {
                "epoch": epoch + 1,
                "train_loss": epoch_loss / n,
                **({} if pair_module is None else {"train_pairwise": pair_mean}),
                **{f"valid_{k}": v for k, v in scores.items()},
                "lr": lr_at(c, epoch, steps - 1, steps),
                "train_seconds": round(train_seconds, 3),
                "samples_per_s": round(n / max(train_seconds, 1e-9), 1),
            }
            progress.history.append(record)
            improved = fixed_epochs is not None or not math.isnan(scores["auc"]) and (
                math.isnan(progress.best_auc) or scores["auc"] > progress.best_auc)
            if improved or progress.best_state is None:
                progress.best_auc, progress.best_epoch = scores.get("auc", math.nan), epoch + 1
                progress.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                progress.bad_epochs = 0
            else:
                progress.bad_epochs += 1
                if c.patience and progress.bad_epochs >= c.patience:
                    progress.stopped_early = True
            if c.ema > 0:
                self.model.load_state_dict(current, strict=False)
            if c.swa > 0:
                recent.append({k: v.detach().clone() for k, v in (self.ema_state or live).items()})
            if on_epoch is not None:
                on_epoch(record)
            progress.epochs_done = epoch + 1
            if self.checkpoint_dir is not None:
                checkpoint.save(self.checkpoint_dir, state, progress, c, self.fingerprint)
            if ctx is not None:
                ctx.broadcast_flag(progress.stopped_early)
        if c.swa > 1 and len(recent) > 1 and is_main and fixed_epochs is None and valid is not None:
            self._try_swa(recent, valid, progress)
        if progress.best_state is not None and is_main:
            self.model.load_state_dict(progress.best_state)
        self.model.eval()
        return FitResult(history=progress.history, best_epoch=progress.best_epoch, best_auc=progress.best_auc,
                         stopped_early=progress.stopped_early, samples_per_epoch=n)

    def _try_swa(self, recent: deque[dict[str, Tensor]], valid: Batch | EvalSource,
                 progress: checkpoint.Progress) -> None:
        """Average the weights of the last epochs (``len(recent)``, at most ``config.swa``); keep the average as
        the best state only when its valid AUC beats the best epoch's (an extra record ``swa`` says which)."""
        average = {k: torch.stack([r[k] for r in recent]).mean(dim=0) for k in recent[0]}
        self.model.load_state_dict(average, strict=False)
        scores = evaluate_batch(self.model, valid, self.device)
        kept = not math.isnan(scores["auc"]) and (math.isnan(progress.best_auc) or scores["auc"] > progress.best_auc)
        self.swa_record = {"epochs": len(recent), "valid_auc": scores["auc"], "valid_logloss": scores["logloss"],
                           "kept": kept}
        if kept:
            progress.best_auc = scores["auc"]
            progress.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def _batches(self, train: Batch | BatchStream, epoch: int, rows: int, batch_size: int,
                 generator: torch.Generator) -> Iterator[Batch]:
        """One epoch's minibatches: a fresh permutation of the encoded rows (its first ``rows``: equal counts
        on every rank), or the stream's shuffled batches."""
        if not isinstance(train, Batch):
            yield from train.batches(epoch, batch_size, rows, generator)
            return
        perm = torch.randperm(len(train), generator=generator).to(self.device)
        yield from gather_batches(train, perm[:rows], batch_size)

    def _grouped(self, train: Batch, users: Tensor, epoch: int, rows: int, batch_size: int
                 ) -> Iterator[tuple[Batch, Tensor]]:
        """One epoch's user-grouped batches with their (G,) users (:mod:`training.pairwise`): the first ``rows``
        rows of a grouped order drawn by its own generator, seeded per (seed, rank, epoch) like a resumed run."""
        rank = 0 if self.dist is None else self.dist.rank
        generator = torch.Generator().manual_seed(distributed.epoch_seed(self.config.seed + 2, rank, epoch))
        order = pairwise.grouped_order(users, generator)[:rows]
        return zip(gather_batches(train, order, batch_size), torch.split(users[order], batch_size), strict=True)


def gather_batches(data: Batch, order: Tensor, batch_size: int) -> Iterator[Batch]:
    """The minibatches ``data.take(order[i:i + batch_size])``, gathered several steps at a time.

    The rows of ~64k samples' steps are taken at once (one ``index_select`` per tensor per block, not per
    step), then sliced: the same minibatches as one take per step, with ~1/64 of the gather calls.

    Args:
        data: encoded rows.
        order: (R,) int64 row indices, on ``data``'s device.
        batch_size: rows per minibatch (the last may be short).
    """
    block = max(1, GATHER_ROWS // batch_size) * batch_size
    for first in range(0, len(order), block):
        rows_of_block = data.take(order[first:first + block])
        for start in range(0, len(rows_of_block), batch_size):
            yield rows_of_block.slice(start, min(start + batch_size, len(rows_of_block)))
