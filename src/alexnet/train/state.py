"""What a run must carry across an interruption: :class:`TrainState`, saved in and restored from
a checkpoint's metadata in one place.

A resume may run on another number of processes than the run it continues, with the same
global batch: the position is :attr:`TrainState.samples_in_epoch`, a count of images over all
ranks, and the epoch's running sums are saved summed over the ranks (:class:`EpochSums`).

Besides this state a resume needs the model and optimiser tensors, the schedule, the
gradient scaler and every rank's random generators; the trainer (alexnet.train.trainer) saves
those beside it, in alexnet.checkpoint's format, as files of the run folder (alexnet.train.rundir).
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


class EpochSums:
    """Running sums of one epoch's training, kept on the device: adding a step reads nothing back to
    the host. The host reads them at log points (:meth:`window`), before a checkpoint and at the epoch
    end; an epoch cut by a signal saves them in :attr:`TrainState.partial` and the resumed run adds to them.

    Besides the epoch's loss and top-1 hits: the losses since the last log point, the last step's loss,
    and the first step whose loss was not finite (``inf`` while there is none), so a divergence is
    found at the next read and named by the step it happened at."""

    def __init__(self, device: torch.device, partial: dict | None = None, rank: int = 0):
        """``partial``: the sums of an epoch cut mid-way, over all ranks (summed when saved), so rank 0
        alone starts from them and the epoch's all-reduced totals count each image once, whatever the
        number of processes; every rank keeps the epoch's earlier time."""
        partial = dict(partial or {})
        if rank != 0:
            partial = {"time": partial.get("time", 0.0)}

        def zero(value=0.0):
            return torch.tensor(value, dtype=torch.float64, device=device)
        self.loss_sum = zero(partial.get("loss_sum", 0.0))          # sum of per-batch mean loss x batch size
        self.correct = torch.tensor(int(partial.get("correct", 0)), dtype=torch.int64, device=device)
        self.seen = int(partial.get("seen", 0))                     # images (a host count)
        self.prior_time = float(partial.get("time", 0.0))           # this epoch's seconds before an interruption
        self.window_loss, self.last_loss, self.first_bad = zero(), zero(), zero(math.inf)
        self.window_steps = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, step: int) -> None:
        """Step ``step``'s loss and hits (device tensors, detached)."""
        n = labels.numel()
        self.seen += n
        loss = loss.double()
        self.loss_sum += loss * n
        self.correct += (logits.argmax(1) == labels).sum()
        self.window_loss += loss
        self.last_loss.copy_(loss)
        self.first_bad.masked_fill_(~torch.isfinite(loss) & torch.isinf(self.first_bad), float(step))
        self.window_steps += 1

    def reset_window(self) -> None:
        self.window_loss.zero_()
        self.window_steps = 0

    def to_partial(self, values: list[float], elapsed: float) -> dict:
        """What :attr:`TrainState.partial` stores after ``elapsed`` more seconds of this epoch, from
        ``values`` = [loss_sum, correct, seen] as read (and summed over the ranks)."""
        return {"loss_sum": values[0], "correct": int(values[1]), "seen": int(values[2]),
                "time": self.prior_time + elapsed}
