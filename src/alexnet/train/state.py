"""What a run must carry across an interruption: :class:`TrainState`, saved in and restored from
a checkpoint's metadata in one place.

A resume may run on another number of processes than the run it continues, with the same
global batch: the position is :attr:`TrainState.samples_in_epoch`, a count of images over all
ranks, and the epoch's running sums are saved summed over the ranks (:class:`EpochSums`).

Besides this state a resume needs the model and optimiser tensors, the schedule, the
gradient scaler and every rank's random generators; those are saved beside it by
alexnet.train.checkpoints, in alexnet.checkpoint's format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class TrainState:
    step: int = 0                     # optimiser steps taken
    epoch: int = 0                    # epochs completed (the epoch the checkpoint continues in)
    batch_in_epoch: int = 0           # batches of that epoch already trained (0 at an epoch end)
    # Images of that epoch already trained, counted over all ranks: the position a resume continues
    # from whatever its number of processes (the epoch's shuffle is the same on every rank, and global
    # batch b is always images b*B .. (b+1)*B-1 of it; alexnet.data.loader.shard_indices).
    samples_in_epoch: int = 0
    best_err: float = math.inf        # best validation top-1 error so far
    best_epoch: int | None = None     # the epoch (1-based) that reached it
    stall_warned: bool = False        # the stall-at-chance check has decided (warned or seen progress)
    train_time: float = 0.0           # seconds of training, every epoch and epoch part so far
    # Running sums of an epoch cut mid-way: loss_sum, correct, seen, time (empty at an epoch end).
    partial: dict = field(default_factory=dict)

    def improve(self, val_err: float | None, epoch: int) -> bool:
        """Record a validation error after ``epoch`` (1-based); True when it is a new best."""
        if val_err is None or not val_err < self.best_err:
            return False
        self.best_err, self.best_epoch = val_err, epoch
        return True

    def to_meta(self) -> dict:
        """The checkpoint metadata keys of this state (their names are the checkpoint format's)."""
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step,
                "samples_in_epoch": self.samples_in_epoch,
                "best_val_top1_err": self.best_err if math.isfinite(self.best_err) else None,
                "best_epoch": self.best_epoch, "stall_warned": self.stall_warned,
                "train_time_s": self.train_time, "partial": dict(self.partial)}

    @classmethod
    def from_meta(cls, meta: dict) -> "TrainState":
        best = meta.get("best_val_top1_err")
        return cls(step=int(meta["step"]), epoch=int(meta["epoch"]), batch_in_epoch=int(meta["batch_in_epoch"]),
                   samples_in_epoch=int(meta.get("samples_in_epoch", -1)),      # -1: a checkpoint from before it
                   best_err=math.inf if best is None else float(best), best_epoch=meta.get("best_epoch"),
                   stall_warned=bool(meta.get("stall_warned")), train_time=float(meta.get("train_time_s", 0.0)),
                   partial=dict(meta.get("partial") or {}))


@dataclass
class EpochSums:
    """Running sums of one epoch's training, kept on the device (no sync per step); an epoch cut
    by a signal saves them in :attr:`TrainState.partial` and the resumed run adds to them."""

    loss_sum: torch.Tensor            # float64: sum of per-batch mean loss x batch size
    correct: torch.Tensor             # int64: top-1 hits
    seen: int = 0                     # images
    prior_time: float = 0.0           # this epoch's training seconds before an interruption

    @classmethod
    def resume(cls, partial: dict, device: torch.device, rank: int = 0) -> "EpochSums":
        """The sums of an epoch cut mid-way. ``partial`` holds the sums of all ranks (summed when
        saved), so rank 0 alone starts from them and the epoch's all-reduced totals count each image
        once, whatever the number of processes; every rank keeps the epoch's earlier time."""
        if rank != 0:
            partial = {"time": partial.get("time", 0.0)}
        return cls(torch.tensor(partial.get("loss_sum", 0.0), dtype=torch.float64, device=device),
                   torch.tensor(int(partial.get("correct", 0)), dtype=torch.int64, device=device),
                   int(partial.get("seen", 0)), float(partial.get("time", 0.0)))

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        n = labels.numel()
        self.seen += n
        self.loss_sum += loss.double() * n
        self.correct += (logits.argmax(1) == labels).sum()

    def to_partial(self, elapsed: float, reduce=None) -> dict:
        """What :attr:`TrainState.partial` stores after ``elapsed`` more seconds of this epoch."""
        sums = [float(self.loss_sum), float(self.correct), float(self.seen)]
        if reduce is not None:          # the sums over all ranks (alexnet.train.distributed.all_reduce_sum)
            sums = reduce(sums)
        return {"loss_sum": sums[0], "correct": int(sums[1]), "seen": int(sums[2]),
                "time": self.prior_time + elapsed}
