"""The training loop, top to bottom: the paper's recipe (section 5), resumable, observable, data-parallel.

    result = train(load_config("cifar10", ["--train.epochs", "3"]))
    result.run_dir, result.summary["test"]["top1_err"]

:func:`train` does everything a run needs, in this order (the methods of :class:`Trainer`
follow it): check the configuration, join the process group (when launched by torchrun),
build the data cache if it does not exist yet (alexnet.train.run_data), the model, the
optimiser (parameter groups by role) and the schedule, choose the fast path
(alexnet.fastpath: precision, memory format, compilation) - so that a start that fails
leaves no run folder - then take the run folder (alexnet.train.rundir owns its files),
restore the checkpoint when resuming, then per epoch: the steps (:meth:`Trainer.train_one_epoch`),
validation, the lr's plateau rule, ``last.safetensors`` and, on a new best validation error,
``best.safetensors``. At the end: the test split (centre or ten views), plots,
``summary.json`` and ``report.md``.

Departure from the paper: ``train.precision = "auto"`` (the default) trains in bfloat16
autocast where bfloat16 is native (CUDA, CPUs with AVX512_BF16 or AMX); the paper
trained in float32. ``--train.precision fp32`` restores it.

No host sync per step. The host reads device values (the loss, the running sums) only at
log points (every ``train.log_every`` steps and an epoch's last), before a checkpoint and at
an epoch end, all through :meth:`Trainer.host_read`; between them it queues step after step.
The loss, top-1 hits and a "first step whose loss was not finite" marker stay on the device
(:class:`~alexnet.train.state.EpochSums`). Stop requests and the checkpoint clock are host
facts, agreed by the ranks without blocking (:class:`~alexnet.train.distributed.HostFlags`).

Divergence. A loss that is not finite ends the run on every rank at the next read (one line
naming the step it happened at, exit 2), before anything of that step is logged or saved:
log points and checkpoints come after that read, and a checkpoint also refuses weights that
are not finite, so ``last.safetensors`` keeps the last good state.

Exactness of resume. A checkpoint holds the model and optimiser tensors, the schedule, the
gradient scaler, every rank's random generators and the run's :class:`TrainState`; the data
order and augmentation are functions of (seed, epoch, batch) in the loader, so a resumed run
seeks to its batch (``loader.set_epoch(epoch, start_batch)``, reading nothing before it) and
sees the same batches. On a CPU the result is bit-identical to an uninterrupted run, in float32
and in bfloat16 (tests/test_checkpoint_resume.py), also after a torchrun restart with
``--resume auto`` (tests/test_cluster.py). A resume on another number of processes with the
same global batch continues the epoch with exactly the images not yet seen (the position is a
count of images, :class:`TrainState`), though not bit for bit.

Signals. SIGINT and SIGTERM set a flag; the current step finishes, a checkpoint is written
and the process exits with a line saying how to resume (status 130/143). A second Ctrl-C
interrupts immediately.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import checkpoint as ckpt_io
from ..console import first_line, info, progress, warn
from ..data.device_pipeline import describe_data_path
from ..data.loader import derive_seed
from ..errors import UserError
from ..files import atomic_copy
from ..eval.metrics import evaluate_loader
from ..fastpath import choose_fast_path
from ..models import build_model
from ..runtime import machine_description
from ..signals import StopFlag
from . import distributed as dist_utils
from . import tensorboard_log
from .config import Config, apply_overrides, check_launch, load_config, resume_config
from .init_from import apply_init_from, check_before_data as check_init_from, save_record as save_init_record
from .run_data import RunData
from .rundir import RunFolder, RunLogs, run_folder
from .schedule import LRSchedule, build_optimizer
from .state import EpochSums, TrainState


@dataclass
class TrainResult:
    """What :func:`train` returns: the run folder, its summary (summary.json) and the trained model."""

    run_dir: Path
    summary: dict
    model: nn.Module | None = field(default=None, repr=False)

    @property
    def interrupted(self) -> bool:
        return self.summary.get("status") == "interrupted"


def train(config: Config | str | os.PathLike | None = None, *, resume: str | os.PathLike | None = None,
          overrides: dict | list[str] | None = None) -> TrainResult:
    """Train a model as the config says and return the run folder and its summary.

    ``config``: a :class:`Config`, a preset name or TOML path (``None`` = fashion-mnist).
    ``resume``: a run folder to continue from its ``last.safetensors`` (its saved
    ``config.toml`` is used; ``overrides`` may change only what
    :data:`alexnet.train.config.RESUME_CHANGEABLE` lists, e.g. ``train.epochs``).
    ``config.run.resume = "auto"`` (with a fixed ``run.name``): continue RUN.OUT/RUN.NAME when it
    holds a checkpoint of this run, else start it (:meth:`alexnet.train.rundir.RunFolder.auto_resume`).
    """
    if resume is not None:
        config = resume_config(resume, overrides)     # refuses overrides that change the replay; writes nothing
    elif not isinstance(config, Config):
        config = load_config(config, overrides)
    elif overrides:
        config = apply_overrides(config, overrides)   # the caller's config stays as it was
    if config.run.resume not in ("", "auto"):
        raise UserError(f"run.resume must be \"auto\" or \"\" (to resume a given folder: --resume RUN_DIR), "
                        f"got {config.run.resume!r}")
    if config.run.resume == "auto" and not config.run.name:
        raise UserError("run.resume = \"auto\" needs a fixed --run.name: a restarted job must find the same run folder")
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    if config.train.deterministic:
        # cuBLAS reads this when it starts: set before any CUDA work of this process.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    ctx = dist_utils.setup(config.train.device, config.train.dist_timeout)
    try:
        check_launch(config, ctx.world_size)
        return Trainer(config, ctx, Path(resume) if resume is not None else None).run()
    except Exception as exc:
        if ctx.distributed and dist_utils.is_communication_failure(exc):
            raise UserError(f"rank {ctx.rank}: lost contact with the other processes of the job ({first_line(exc)}); "
                            f"stopping. Resume from the last checkpoint with --resume once all nodes are up "
                            f"(torchrun --max-restarts with --resume auto does it by itself)") from None
        raise
    finally:
        dist_utils.teardown()
        torch.use_deterministic_algorithms(deterministic_before)   # the process as it was (the Python API)


class Trainer:
    """One run from its configuration to its result: :meth:`run` builds, trains and reports.

    ``subscribers``: callables ``fn(kind, record)`` that see every step and epoch record (rank 0)
    as it is logged, e.g. a TensorBoard writer (alexnet.train.rundir.RunLogs)."""

    def __init__(self, config: Config, ctx: dist_utils.DistContext, resume_dir: Path | None):
        self.config, self.ctx, self.resume_dir = config, ctx, resume_dir
        self.quiet = not config.run.progress or not ctx.is_main
        self.warnings: list[str] = []
        self.state = TrainState()
        self.subscribers: list = []
        self.host_reads = 0            # reads of device values by the host (host_read): the loop's syncs
        self.steps_run = 0             # steps this process took (a resumed run counts from its checkpoint)
        self.data_wait_s = 0.0         # seconds the steps waited for the loader
        self.saved_step: int | None = None     # the step last.safetensors holds (None: no checkpoint yet)
        self.last_save = time.time()           # when it was written (the clock of periodic checkpoints)

    # -- set-up ------------------------------------------------------------------------------------
    def _build(self) -> None:
        """The fast path, data, loaders, model, optimiser and schedule, before any run folder exists."""
        c, ctx = self.config, self.ctx
        self.fast = choose_fast_path(ctx.device, c.train.precision, c.train.channels_last, c.train.compile,
                                     what="train.precision")
        if c.train.threads:
            torch.set_num_threads(c.train.threads)
        if self.resume_dir is None:
            check_init_from(c)           # a checkpoint that cannot start this run: refused before any prepare
        self.data = data = RunData.open(c, ctx, self.quiet)
        if c.train.batch_size % ctx.world_size:
            raise UserError(f"train.batch_size {c.train.batch_size} is not divisible by {ctx.world_size} processes")
        self.local_batch = c.train.batch_size // ctx.world_size
        self.train_loader = data.loader(c.data.train_split, train=True, batch_size=self.local_batch)
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise UserError(f"{data.cache.path}: split '{c.data.train_split}' has fewer images than one batch")
        self.val_loader = (data.loader(data.val_split, train=False, batch_size=self._eval_batch())
                           if data.val_split else None)

        # The model: identical initial weights on every rank (same seed), then per-rank streams.
        seed_everything(c.train.seed)
        model = build_model(c.model.name, num_classes=data.num_classes, in_channels=data.cache.channels,
                            **c.model.kwargs)
        # Fine-tuning: layers matching train.init_from by name and shape (a fresh run; a resume rebuilds
        # only which were loaded, for the same frozen set and parameter groups).
        self.init_from = apply_init_from(model, c, run_dir=self.resume_dir,
                                         resuming=self.resume_dir is not None, input_spec=data.input_spec,
                                         is_main=ctx.is_main, quiet=self.quiet)
        if c.model.parallel == "towers":
            model = dist_utils.TwoTowerModel(model, tuple(c.model.devices or (str(ctx.device), str(ctx.device))))
            self.model = model.to(memory_format=torch.channels_last) if self.fast.channels_last else model
        else:
            self.model = self.fast.prepare_model(model)
        lr = c.optim.lr * (c.train.batch_size / 128 if c.optim.scale_lr else 1.0)
        self.optimizer = build_optimizer(self.model, c.optim, lr, self.init_from.scaled_params(), c.train.loaded_lr_scale)
        self.schedule = LRSchedule(c.schedule, lr, self.steps_per_epoch, c.train.epochs)
        self.scaler = self.fast.grad_scaler()
        seed_everything(c.train.seed + 1_000_003 * ctx.rank)

    def _eval_batch(self, views: str = "center") -> int:
        """The per-rank evaluation batch: twice the training one (no gradients to keep), at most 256
        images, a tenth of that with ten views per image."""
        return max(1, min(256, self.local_batch * 2)) // (10 if views == "ten" else 1) or 1

    # -- the run -----------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        t_start = time.time()
        c, ctx = self.config, self.ctx
        if self.resume_dir is None and c.run.resume == "auto":     # reads the folder, writes nothing
            candidate = RunFolder(Path(c.run.out).expanduser() / c.run.name)
            if dist_utils.on_main(lambda: candidate.auto_resume(c.to_dict()), ctx):
                self.resume_dir = candidate.path
        resuming = self.resume_dir is not None
        self.folder = RunFolder(self.resume_dir if resuming else run_folder(c, ctx))
        if ctx.is_main:      # a folder in use or already holding a run: refused before any work
            self.folder.check_available(resuming)
        self._build()     # data, model, optimiser first: a start that fails leaves no run folder behind
        lock = self.folder.open(c, resuming) if ctx.is_main else None
        if lock is not None and not resuming:
            save_init_record(self.init_from, self.folder.path)
        try:
            return self._train(t_start)
        finally:
            if lock is not None:
                lock.release()

    def _train(self, t_start: float) -> TrainResult:
        c, ctx, s = self.config, self.ctx, self.state
        if self.resume_dir is not None:
            self.state = s = self.restore()
            if ctx.is_main:
                self.folder.write_config(c)    # the overrides, now that the checkpoint took them
        model = self.model
        if ctx.distributed and not isinstance(model, dist_utils.TwoTowerModel):
            model = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        example = torch.zeros(2, self.data.cache.channels, c.data.crop, c.data.crop)
        model, failure = self.fast.compile_model(model, example, doing="training")
        self.warnings += [failure] if failure else []
        model.train()

        self.logs = RunLogs(self.folder, ctx.rank, samples=c.train.log_samples)
        for fn in self.subscribers:
            self.logs.subscribe(fn)
        self.flags = dist_utils.HostFlags(ctx, c.train.dist_timeout)
        self.last_save = time.time()     # periodic checkpoints count from here (after any compile)
        if ctx.is_main:
            events = tensorboard_log.attach(self.logs, self.folder.path, c, unwrap(self.model), s.step,
                                            self.resume_dir is not None, self.quiet)
            info(f"training {c.model.name} on {self.data.cache.path} "
                 f"({len(self.data.selection.split(c.data.train_split)):,} images, "
                 f"{self.data.num_classes} classes) for {c.train.epochs} epochs on {ctx.device} x{ctx.world_size} in "
                 f"{self.fast.describe()}; data path {describe_data_path(self.train_loader.data_path)}; "
                 f"run folder {self.folder.path}{events}", self.quiet)
            for note in self.data.notes:
                info(note, self.quiet)

        status, epoch = "finished", s.epoch
        try:
            with StopFlag(announce="finishing this step and saving a checkpoint") as stop:
                for epoch in range(s.epoch, c.train.epochs):
                    totals = self.train_one_epoch(model, epoch, stop)
                    if totals is None:
                        status = "interrupted"
                        break
                    self.logs.write("epoch", self._end_epoch(epoch, totals))
                    if c.train.max_steps and s.step >= c.train.max_steps:
                        status, epoch = "max_steps", epoch + 1
                        break
                    if dist_utils.any_rank(stop.requested, ctx):
                        status, epoch = "interrupted", epoch + 1
                        break
                else:
                    epoch = c.train.epochs
        finally:
            self.logs.close()
            self.flags.close()
        if status == "interrupted":
            if ctx.is_main:
                info(f"{stop.name or 'stop'}: checkpoint saved at step {s.step}; "
                     f"continue with: alexnet train --resume {self.folder.path}")
            summary = {"status": "interrupted", "step": s.step, "run_dir": str(self.folder.path), "signal": stop.name}
            if ctx.is_main:     # how `alexnet runs` tells a stopped run from one that died (alexnet.train.runs)
                self.folder.write_summary(summary)
            return TrainResult(self.folder.path, summary, unwrap(self.model))
        return self._finish(t_start, status, epoch)

    # -- one epoch: the steps ------------------------------------------------------------------------
    def train_one_epoch(self, model: nn.Module, epoch: int, stop: StopFlag) -> dict | None:
        """Train ``epoch`` (0-based) from the state's position in it: the epoch's totals over all ranks
        (loss, top1_err, images, time, lr), or None when a stop was requested (after saving a checkpoint).

        Each step is :meth:`alexnet.fastpath.FastPath.train_step` (forward in the run's precision,
        the loss in float32, backward, SGD) at the lr the schedule gives that step. The host
        reads nothing back from the device between log points."""
        c, ctx, s, fast = self.config, self.ctx, self.state, self.fast
        first = s.batch_in_epoch                          # 0, or where a resumed epoch stopped
        self.train_loader.set_epoch(epoch, start_batch=first)     # seek: nothing before it is read
        total = len(self.train_loader)
        bar = progress(total, f"epoch {epoch + 1}/{c.train.epochs}", "batch", initial=first,
                       disable=not (ctx.is_main and c.run.progress))
        bar = None if bar.disable else bar
        sums = EpochSums(ctx.device, s.partial if first else None, ctx.rank)
        t0 = window_t = time.time()
        waited = 0.0
        lr = self.schedule.lr_at(s.step)
        every_steps, every_s = c.train.checkpoint_every_steps, 60 * c.train.checkpoint_every_minutes

        def host_flags() -> list[bool]:        # a stop request; a periodic checkpoint due by the clock
            return [stop.requested, bool(every_s) and time.time() - self.last_save >= every_s]

        for batch_index, (batch, wait) in enumerate(timed(self.train_loader), start=first):
            self.flags.send(host_flags())                 # travels to the other ranks while the step runs
            x, y = fast.prepare_input(batch[0]), batch[1]
            lr = self.schedule.apply(self.optimizer, s.step)
            loss, logits = fast.train_step(model, self.optimizer, x, y, self.scaler)
            s.step += 1
            self.steps_run += 1
            sums.add(loss.detach(), logits.detach(), y.to(logits.device), s.step)   # on the device: no read
            waited += wait
            if c.train.log_samples:
                self.logs.write("sample", {"step": s.step, "epoch": epoch, "batch": batch_index,
                                           "indices": batch[2].tolist()})          # host data
            stopping, clock_due = self.flags.receive(host_flags())
            last = batch_index + 1 == total
            if sums.window_steps >= c.train.log_every or last:       # a log point: the host reads the device
                window_loss, loss_now = self.host_read(sums.window_loss, sums.last_loss, sums=sums)
                now = time.time()
                n, mean = sums.window_steps, window_loss / sums.window_steps
                self.logs.write("step", {"step": s.step, "epoch": epoch + (batch_index + 1) / total,
                                         "loss": loss_now, "window_loss": mean, "lr": lr,
                                         "img_per_s": n * c.train.batch_size / max(now - window_t, 1e-9),
                                         "data_wait_s": waited})
                self._check_stall(mean)
                if bar is not None:
                    elapsed = max(now - t0 + sums.prior_time, 1e-9)
                    bar.set_postfix(loss=f"{mean:.3f}", lr=f"{lr:.3g}",
                                    img_s=f"{sums.seen * ctx.world_size / elapsed:.0f}", refresh=False)
                self.data_wait_s += waited
                sums.reset_window()
                window_t, waited = now, 0.0
            if bar is not None:
                bar.update(1)
            periodic = clock_due or (every_steps and s.step % every_steps == 0)
            if (stopping or periodic) and not last:
                # Mid-epoch: the state as a stop here saves it (the epoch's position and running sums).
                cut = time.time() - t0
                s.partial = sums.to_partial(self._epoch_sums(sums), cut)
                s.train_time, before = s.train_time + cut, s.train_time
                self.save(epoch, batch_index + 1, status="interrupted" if stopping else "running")
                if stopping:
                    if bar is not None:
                        bar.close()
                    return None
                s.train_time, s.partial = before, {}     # counted at the epoch end as usual
            if c.train.max_steps and s.step >= c.train.max_steps:
                break
        if bar is not None:
            bar.close()
        elapsed = time.time() - t0
        s.train_time += elapsed
        s.partial = {}
        self.data_wait_s += waited
        loss_sum, correct, seen = self._epoch_sums(sums)
        return {"loss": loss_sum / max(seen, 1), "top1_err": 1 - correct / max(seen, 1),
                "images": seen, "time": elapsed + sums.prior_time, "lr": lr}

    def host_read(self, *values: torch.Tensor, sums: EpochSums | None = None) -> list[float]:
        """The loop's one way to read device values on the host - on a GPU a synchronisation (the host
        waits for every queued step) - so it happens only at log points, checkpoints and epoch ends:
        ``values`` (0-dim tensors) as floats, in one transfer.

        With ``sums``: first every rank learns whether a step's loss since the epoch began was not
        finite, and raises, naming the first such step, before anything of it is logged or saved."""
        self.host_reads += 1
        if sums is None:
            return torch.stack([v.double() for v in values]).tolist()
        if self.ctx.distributed:
            dist.all_reduce(sums.first_bad, op=dist.ReduceOp.MIN)
        first_bad, *out = torch.stack([sums.first_bad, *[v.double() for v in values]]).tolist()
        if math.isfinite(first_bad):
            step = int(first_bad)
            raise UserError(f"training diverged: the loss is not finite at step {step} "
                            f"(lr {self.schedule.lr_at(step - 1):.3g}); {self.kept()}; "
                            f"lower --optim.lr or add --schedule.warmup_epochs 1")
        return out

    def _epoch_sums(self, sums: EpochSums) -> list[float]:
        """[loss_sum, correct, seen] of the epoch so far, over all ranks (checked for divergence first)."""
        loss_sum, correct = self.host_read(sums.loss_sum, sums.correct, sums=sums)
        return dist_utils.all_reduce_sum([loss_sum, correct, float(sums.seen)], self.ctx)

    def _check_stall(self, mean_loss: float) -> None:
        message = stall_message(mean_loss, self.state, self.config.train.stall_steps, self.data.num_classes)
        if message:
            self.warnings.append(message)
            if self.ctx.is_main:
                warn(message)

    # -- the epoch end ---------------------------------------------------------------------------------
    def _end_epoch(self, epoch: int, train_stats: dict) -> dict:
        """Validate (when due), let the schedule see the error, checkpoint, keep a new best: the epoch's record."""
        c, ctx, s = self.config, self.ctx, self.state
        record = {"epoch": epoch + 1, "step": s.step, "train_loss": train_stats["loss"],
                  "train_top1_err": train_stats["top1_err"], "lr": train_stats["lr"],
                  "epoch_time_s": train_stats["time"],
                  "img_per_s": train_stats["images"] / max(train_stats["time"], 1e-9)}
        val = None
        due = epoch + 1 == c.train.epochs or (c.train.val_every > 0 and (epoch + 1) % c.train.val_every == 0)
        if self.val_loader is not None and due:
            t = time.time()
            val = evaluate_loader(unwrap(self.model), self.val_loader, self.data.num_classes, fast=self.fast).result()
            record.update(val_loss=val["loss"], val_top1_err=val["top1_err"], val_top5_err=val["top5_err"],
                          val_time_s=time.time() - t)
        if self.schedule.epoch_end(val["top1_err"] if val else None) and ctx.is_main:
            info(f"validation error stopped improving: lr divided, now {self.schedule.lr_at(s.step):.3g} "
                 f"(drop {self.schedule.drops} of {c.schedule.max_drops})", self.quiet)
        improved = s.improve(val["top1_err"] if val else None, epoch + 1)
        self.save(epoch + 1, 0)
        if improved and ctx.is_main:
            self.folder.keep_best()
        if ctx.is_main:
            val_text = (f" | val top-1 {100 * val['top1_err']:.2f}% top-5 {100 * val['top5_err']:.2f}%" if val else "")
            info(f"epoch {epoch + 1}/{c.train.epochs}: train loss {train_stats['loss']:.4f} "
                 f"err {100 * train_stats['top1_err']:.2f}%{val_text} | lr {train_stats['lr']:.3g} | "
                 f"{record['img_per_s']:.0f} img/s | {train_stats['time']:.0f} s", self.quiet)
        return record

    # -- checkpoints: what they hold, writing one, restoring one -------------------------------------------
    @property
    def periodic(self) -> bool:
        """Checkpoints also every N steps or M minutes: each one is then kept as step-<STEP> too."""
        return bool(self.config.train.checkpoint_every_steps or self.config.train.checkpoint_every_minutes)

    def _meta(self, status: str) -> dict:
        c, cache = self.config, self.data.cache
        return {
            "model": {"name": c.model.name, "num_classes": self.data.num_classes, "in_channels": cache.channels,
                      "kwargs": c.model.kwargs},
            "classes": list(cache.classes), "class_names": list(getattr(cache, "class_names", cache.classes)),
            "data": {"cache": str(cache.path), **self.data.input_spec.checkpoint_fields()[0]},
            **self.state.to_meta(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "world_size": self.ctx.world_size, "fast_path": self.fast.to_dict(),
            "config": c.to_dict(), "status": status,
        }

    def save(self, epoch: int, batch_in_epoch: int, status: str = "running") -> None:
        """Write last.safetensors (rank 0) at this position: the model and optimiser tensors, the schedule,
        the scaler, every rank's random state (gathered first), the run's state, and what eval, predict
        and features need to feed the model (the cache's statistics, the InputSpec). With periodic
        checkpoints a copy is kept as step-<STEP>.safetensors (alexnet.train.rundir).

        Never weights that are not finite (every rank holds the same weights, so every rank
        refuses together): last.safetensors keeps the last good state."""
        s, m = self.state, unwrap(self.model)
        finite = torch.stack([torch.isfinite(p).all().to(self.ctx.device) for p in m.parameters()]).all()
        if not self.host_read(finite)[0]:
            raise UserError(f"training diverged: the weights are not finite at step {s.step}, not saved; "
                            f"{self.kept()}; lower --optim.lr or add --schedule.warmup_epochs 1")
        s.epoch, s.batch_in_epoch = epoch, batch_in_epoch
        s.samples_in_epoch = batch_in_epoch * self.config.train.batch_size
        rng = dist_utils.all_gather_objects(ckpt_io.capture_rng(), self.ctx)
        if self.ctx.is_main:
            weights = m.grouped_state_dict() if isinstance(m, dist_utils.TwoTowerModel) else m.state_dict()
            stats = {f"stats.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.data.cache.stats.items()}
            self.folder.save_checkpoint(step=s.step, keep_copy=self.periodic and status == "running",
                                        keep=self.config.train.keep_checkpoints, model=weights,
                                        optimizer=self.optimizer, meta=self._meta(status), rng=dict(enumerate(rng)),
                                        extra_tensors=stats)
        self.last_save = time.time()
        self.saved_step = s.step
        dist_utils.barrier(self.ctx)

    def kept(self) -> str:
        """What a run that stops now leaves behind, for its error line."""
        return (f"{self.folder.last} keeps step {self.saved_step}" if self.saved_step is not None
                else "no checkpoint was written")

    def restore(self) -> TrainState:
        """Load the checkpoint a resume continues from (``last``, or the newest valid one: rank 0 chooses
        and says so, every rank loads the same file) into the run's objects and return its state; the
        run folder's logs are cut back to it (rank 0)."""
        c, ctx = self.config, self.ctx
        chosen = {}

        def choose() -> str:
            ck, note = self.folder.choose_checkpoint()
            if note:
                warn(note)
                atomic_copy(ck.path, self.folder.last, what="checkpoint")   # a later restart finds a valid last
            chosen["ck"] = ck
            return str(ck.path)

        path = dist_utils.on_main(choose, ctx)
        ck = chosen["ck"] if "ck" in chosen else ckpt_io.load_checkpoint(path)
        ckpt_io.check_compatible(ck, c.model.name, self.data.num_classes, self.data.cache.channels)
        saved_world = int(ck.meta.get("world_size", 1))
        saved_batch = (ck.meta.get("config") or {}).get("train", {}).get("batch_size", c.train.batch_size)
        if saved_world != ctx.world_size and saved_batch != c.train.batch_size:
            raise UserError(f"{ck.path}: saved by {saved_world} processes with global batch {saved_batch}; on "
                            f"{ctx.world_size} processes resume with the same global batch "
                            f"(--train.batch_size {saved_batch})")
        m = unwrap(self.model)
        if isinstance(m, dist_utils.TwoTowerModel):
            raise UserError("resuming a model-parallel run is not supported; restart it without model.parallel")
        m.load_state_dict(ck.model_state)
        ckpt_io.restore_optimizer(ck, self.optimizer)
        self.schedule.load_state_dict(ck.meta["schedule"])
        if self.scaler is not None and ck.meta.get("scaler"):
            self.scaler.load_state_dict(ck.meta["scaler"])
        # Every rank's random state; on another number of processes, a rank the checkpoint has no state
        # for starts streams derived from (seed, step, rank), the same on every resume.
        if saved_world == ctx.world_size or str(ctx.rank) in ck.meta.get("rng", {}):
            ckpt_io.restore_rng_for_rank(ck, ctx.rank)
        else:
            seed_everything(derive_seed(c.train.seed, int(ck.meta["step"]), ctx.rank))
        s = TrainState.from_meta(ck.meta)
        if s.samples_in_epoch < 0:           # written before the count existed: batches of the same global batch
            s.samples_in_epoch = s.batch_in_epoch * saved_batch
        if s.samples_in_epoch % c.train.batch_size:
            raise UserError(f"{ck.path}: stopped after {s.samples_in_epoch} images of epoch {s.epoch + 1}, not a "
                            f"multiple of train.batch_size {c.train.batch_size}; resume with "
                            f"--train.batch_size {saved_batch}")
        s.batch_in_epoch = s.samples_in_epoch // c.train.batch_size
        self.saved_step = s.step
        if ctx.is_main:
            self.folder.truncate_logs(s.step, s.epoch)
            if saved_world != ctx.world_size:
                info(f"resuming a run of {saved_world} processes on {ctx.world_size}: same global batch, the "
                     f"epoch continues after its first {s.samples_in_epoch} images", self.quiet)
            if s.batch_in_epoch == 0 and s.best_epoch == s.epoch and not self.folder.best_holds(s.epoch):
                self.folder.keep_best()     # a crash came between writing last and copying it to best
            restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)   # set by torchrun
            info(f"resuming {self.folder.path} at epoch {s.epoch + 1}, step {s.step}"
                 + (f" (batch {s.batch_in_epoch} of the epoch)" if s.batch_in_epoch else "")
                 + (f" after torchrun restart {restarts}" if restarts else ""), self.quiet)
        return s

    # -- the end ---------------------------------------------------------------------------------------------
    def _finish(self, t_start: float, status: str, epochs_done: int) -> TrainResult:
        """The final evaluation (the test split, centre or ten views), summary.json, report.md, plots."""
        c, ctx, s, data = self.config, self.ctx, self.state, self.data
        summary = {"status": status, "preset": c.preset, "model": c.model.name, "model_kwargs": c.model.kwargs,
                   "cache": str(data.cache.path), "num_classes": data.num_classes,
                   "train_images": len(data.selection.split(c.data.train_split)), "epochs_done": epochs_done,
                   "steps": s.step, "batch_size": c.train.batch_size, "world_size": ctx.world_size,
                   "precision": self.fast.precision, "fast_path": self.fast.to_dict(),
                   "best_val_top1_err": None if math.isinf(s.best_err) else s.best_err,
                   "best_epoch": s.best_epoch, "val_split": data.val_split, "notes": data.notes,
                   "warnings": self.warnings, "run_dir": str(self.folder.path), "train_time_s": s.train_time,
                   "code_version": ckpt_io.code_version(),
                   # This process's loop: its steps, the seconds they waited for data, its host reads of device values.
                   "loop": {"steps": self.steps_run, "data_wait_s": self.data_wait_s, "host_reads": self.host_reads}}
        epochs = self.folder.epoch_records() if ctx.is_main else []
        if epochs and epochs[-1].get("val_top1_err") is not None:
            last = epochs[-1]
            summary["val"] = {"split": data.val_split, "views": "center", "top1_err": last["val_top1_err"],
                              "top5_err": last["val_top5_err"], "loss": last.get("val_loss")}
        if data.test_split:
            views = c.train.test_views
            loader = data.loader(data.test_split, train=False, views=views, batch_size=self._eval_batch(views))
            meter = evaluate_loader(unwrap(self.model), loader, data.num_classes, views=views, fast=self.fast)
            summary["test"] = {"split": data.test_split, "views": views, **meter.result()}
            summary["test"]["accuracy"] = 1 - summary["test"]["top1_err"]
        summary["wall_time_s"] = time.time() - t_start
        summary["machine"] = machine_description()
        if ctx.is_main:
            self.folder.write_outputs(summary, epochs, plots=c.run.plots,
                                      title=f"{c.label()}: {c.model.name} ({self.folder.path.name})")
        return TrainResult(self.folder.path, summary, unwrap(self.model))


# ----------------------------------------------------------------------------- helpers

def timed(batches):
    """``(batch, seconds waited for it)`` for each batch of ``batches``: the loop's data wait."""
    it = iter(batches)
    while True:
        start = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        yield batch, time.perf_counter() - start


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


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (the ones a checkpoint saves)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def unwrap(model: nn.Module) -> nn.Module:
    """The model under torch.compile's and DistributedDataParallel's wrappers: the weights to save."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)
