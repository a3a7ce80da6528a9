"""One epoch of training: the steps, their logs, the stall check, and a stop or checkpoint mid-epoch.

    loop = EpochLoop(config, ctx, state, loader, schedule, optimizer, scaler, fast, checkpoints,
                     steps_log, samples_log, num_classes, warnings)
    outcome = loop.run(model, epoch, skip, stop)   # the epoch's train loss, error, images, time, lr; or "stopped"

Each step is :meth:`alexnet.fastpath.FastPath.train_step` (forward in the run's precision,
the loss in float32, backward, SGD) at the lr the schedule gives that step (section 5 of
the paper: SGD with momentum and weight decay, lr divided by 10 on a plateau). Around it:

* The data order and augmentation are functions of (seed, epoch, batch) in the loader, so an
  epoch resumed after ``skip`` batches replays the same batches as an uninterrupted one.
* One all-reduce per step (:func:`step_flags`) carries whether any rank's loss is not finite,
  whether any rank was asked to stop and whether a periodic checkpoint is due by the clock,
  so every rank acts on the same step. A loss that is not finite ends the run (one line,
  exit 2) before anything of that step is logged or saved.
* The running loss and top-1 hits stay on the device (:class:`~alexnet.train.state.EpochSums`);
  the host reads them once per ``train.log_every`` steps, for ``steps.jsonl`` and the stall check.
* A stop request (SIGINT/SIGTERM) finishes the step, saves the epoch's position and running
  sums in the checkpoint and ends the epoch with "stopped".
"""

from __future__ import annotations

import math
import time

import torch
import torch.distributed as dist

from ..console import progress, warn
from ..errors import UserError
from ..fastpath import FastPath
from ..signals import StopFlag
from . import distributed as dist_utils
from .checkpoints import RunCheckpoints
from .config import Config
from .schedule import LRSchedule
from .state import EpochSums, TrainState


def step_flags(loss: torch.Tensor, flags: list[bool], ctx: dist_utils.DistContext) -> list[bool]:
    """[diverged, *flags], the same on every rank: whether any rank's loss of this step is not
    finite, then whether any rank raised each flag (a stop request, a periodic checkpoint due by
    the clock). One all-reduce per step carries them all, so every rank stops at the same step and
    none waits for a rank that has stopped; their clocks need not agree."""
    bad = (~torch.isfinite(loss)).to(torch.float64).reshape(1)
    if not ctx.distributed:
        return [bool(bad), *[bool(f) for f in flags]]
    device = ctx.device if ctx.device.type == "cuda" else torch.device("cpu")
    values = torch.cat([bad.to(device), torch.tensor([float(f) for f in flags], dtype=torch.float64, device=device)])
    dist.all_reduce(values)
    return [v > 0 for v in values.tolist()]


def stall_message(mean_loss: float, state: TrainState, stall_steps: int, num_classes: int) -> str | None:
    """Once ``stall_steps`` steps have run: a warning when the mean loss is still near chance
    (ln C, the loss of a uniform guess over C classes), else None; decided once per run."""
    if not stall_steps or state.stall_warned or state.step < stall_steps:
        return None
    state.stall_warned = True    # decided either way: stop checking
    ln_c = math.log(num_classes)
    if mean_loss > 0.95 * ln_c:
        return (f"training looks stalled at chance: mean loss {mean_loss:.3f} vs ln C = {ln_c:.3f} after "
                f"{state.step} steps; remedies: --model.kwargs.init kaiming (He init), "
                f"a smaller --optim.lr, or --schedule.warmup_epochs 1 (see docs/training.md)")
    return None


class EpochLoop:
    """The training epochs of one run, one :meth:`run` per epoch, on the objects the trainer built."""

    def __init__(self, config: Config, ctx: dist_utils.DistContext, state: TrainState, loader,
                 schedule: LRSchedule, optimizer: torch.optim.Optimizer, scaler, fast: FastPath,
                 checkpoints: RunCheckpoints, steps_log, samples_log, num_classes: int, warnings: list[str]):
        self.config, self.ctx, self.state, self.loader = config, ctx, state, loader
        self.schedule, self.optimizer, self.scaler, self.fast = schedule, optimizer, scaler, fast
        self.checkpoints, self.steps_log, self.samples_log = checkpoints, steps_log, samples_log
        self.num_classes, self.warnings = num_classes, warnings     # warnings: the run's list, appended to

    def run(self, model, epoch: int, skip: int, stop: StopFlag):
        """Train ``epoch`` (0-based) from batch ``skip``: its totals over all ranks (loss, top1_err,
        images, time, lr), or "stopped" after saving a checkpoint when a stop was requested."""
        c, ctx, s, fast = self.config, self.ctx, self.state, self.fast
        loader = self.loader
        loader.set_epoch(epoch)
        model.train()
        total = len(loader)
        bar = progress(total, f"epoch {epoch + 1}/{c.train.epochs}", "batch", initial=skip,
                       disable=not (ctx.is_main and c.run.progress))
        bar = None if bar.disable else bar
        sums = EpochSums.resume(s.partial if skip else {}, ctx.device, ctx.rank)
        window_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
        window_n, window_t = 0, time.time()
        t0 = time.time()
        lr = self.schedule.lr_at(s.step)
        every_steps, every_s = c.train.checkpoint_every_steps, 60 * c.train.checkpoint_every_minutes
        for batch_index, batch in enumerate(loader):
            if batch_index < skip:
                continue           # replay the data order up to where the checkpoint stopped
            x, y = batch[0], batch[1]
            lr = self.schedule.apply(self.optimizer, s.step)
            x = fast.prepare_input(x)
            loss, logits = fast.train_step(model, self.optimizer, x, y, self.scaler)
            s.step += 1
            if self.samples_log is not None:
                self.samples_log.write({"step": s.step, "epoch": epoch, "batch": batch_index,
                                        "indices": batch[2].tolist()})
            loss_d = loss.detach()
            diverged, stopping, minutes_due = step_flags(
                loss_d, [stop.requested, bool(every_s) and time.time() - self.checkpoints.last_save >= every_s], ctx)
            if diverged:    # before any log or checkpoint of this step: never save the weights it made
                raise UserError(f"training diverged: the loss is not finite at step {s.step} (lr {lr:.3g}); "
                                f"{self.checkpoints.kept()}; lower --optim.lr or add --schedule.warmup_epochs 1")
            sums.add(loss_d, logits.detach(), y.to(logits.device))
            window_sum += loss_d.double()
            window_n += 1
            last = batch_index + 1 == total
            if window_n >= c.train.log_every or last:
                window_mean = float(window_sum) / window_n     # a sync point on GPUs: once per window
                now = time.time()
                rate = window_n * c.train.batch_size / max(now - window_t, 1e-9)
                if self.steps_log is not None:
                    self.steps_log.write({"step": s.step, "epoch": epoch + (batch_index + 1) / total,
                                          "loss": float(loss_d), "window_loss": window_mean, "lr": lr,
                                          "img_per_s": rate})
                self._check_stall(window_mean)
                window_sum.zero_()
                window_n, window_t = 0, now
            if bar is not None:
                elapsed = max(time.time() - t0 + sums.prior_time, 1e-9)
                bar.set_postfix(loss=f"{float(loss_d):.3f}", lr=f"{lr:.3g}",
                                img_s=f"{sums.seen * ctx.world_size / elapsed:.0f}", refresh=False)
                bar.update(1)
            if stopping and not last:
                cut = time.time() - t0
                s.train_time += cut
                if bar is not None:
                    bar.close()
                s.partial = sums.to_partial(cut, lambda v: dist_utils.all_reduce_sum(v, ctx))
                self.checkpoints.save(s, epoch, batch_index + 1, status="interrupted")
                return "stopped"
            if not last and (minutes_due or (every_steps and s.step % every_steps == 0)):
                # A periodic checkpoint mid-epoch: the state as a stop here would save it, then back to
                # the running epoch (its time and sums are counted at the epoch end as usual).
                cut = time.time() - t0
                s.train_time, train_time = s.train_time + cut, s.train_time
                s.partial = sums.to_partial(cut, lambda v: dist_utils.all_reduce_sum(v, ctx))
                self.checkpoints.save(s, epoch, batch_index + 1)
                s.train_time, s.partial = train_time, {}
            if c.train.max_steps and s.step >= c.train.max_steps:
                break
        if bar is not None:
            bar.close()
        elapsed = time.time() - t0
        s.train_time += elapsed
        s.partial = {}
        totals = dist_utils.all_reduce_sum([float(sums.loss_sum), float(sums.correct), float(sums.seen)], ctx)
        return {"loss": totals[0] / max(totals[2], 1), "top1_err": 1 - totals[1] / max(totals[2], 1),
                "images": totals[2], "time": elapsed + sums.prior_time, "lr": lr}

    def _check_stall(self, mean_loss: float) -> None:
        message = stall_message(mean_loss, self.state, self.config.train.stall_steps, self.num_classes)
        if message:
            self.warnings.append(message)
            if self.ctx.is_main:
                warn(message)
