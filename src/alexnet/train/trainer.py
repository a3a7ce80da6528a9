"""The training loop: the paper's recipe (section 5), resumable, observable, data-parallel.

    result = train(load_config("cifar10", ["--train.epochs", "3"]))
    result.run_dir, result.summary["test"]["top1_err"]

One call does everything a run needs, in this order: check the configuration (the
model's options included), join the process group (when launched by torchrun), build
the data cache if it does not exist yet (alexnet.train.run_data), build the model,
optimiser (parameter groups by role) and schedule, choose the fast path
(alexnet.fastpath: precision, memory format, compilation) - so that a start that fails
leaves no run folder - then take the run-folder lock (alexnet.train.rundir), restore the
last checkpoint when resuming (alexnet.train.checkpoints), then per epoch: train
(alexnet.train.epoch: progress bar, per-step JSON lines, stall detection), validate,
adjust the lr (the paper's plateau rule), write ``last.safetensors`` and, on a new best
validation error, ``best.safetensors``. At the end: the test split (centre or ten
views), plots, ``summary.json`` and ``report.md``.

Departure from the paper: ``train.precision = "auto"`` (the default) trains in bfloat16
autocast where bfloat16 is native (CUDA, CPUs with AVX512_BF16 or AMX); the paper
trained in float32. ``--train.precision fp32`` restores it.

Exactness of resume. Every random generator (torch, numpy, python; every rank's) is
saved with the step, and the run's :class:`TrainState`; the data order and augmentation
are functions of (seed, epoch, batch) in the loader, so a resumed run replays the same
batches. On a CPU the result is bit-identical to an uninterrupted run, in float32 and in
bfloat16 (tests/test_checkpoint_resume.py), also after a torchrun restart with ``--resume auto``
(tests/test_cluster.py). A resume on another number of processes with the same global batch
continues the epoch with exactly the images not yet seen (the position is a count of images,
:class:`TrainState`), though not bit for bit. What a checkpoint holds and how it is restored:
alexnet.train.checkpoints. Periodic checkpoints, the fallback from a corrupt ``last`` and
``run.resume = "auto"``: alexnet.train.restart.

Signals. SIGINT and SIGTERM set a flag; the current step finishes, a checkpoint is
written and the process exits with a line saying how to resume (status 130/143). A
second Ctrl-C interrupts immediately.

Divergence. Every step checks that the loss is finite, on every rank, in the same
all-reduce as the stop flag: a loss that is not finite ends the run on all ranks at that
step (one line naming it, exit 2) before anything of that step is logged or saved, and
a checkpoint is never written from weights that are not finite, so ``last.safetensors``
keeps the last good state.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import checkpoint as ckpt_io
from .. import report
from ..console import first_line, info
from ..data.device_pipeline import describe_data_path
from ..errors import UserError
from ..eval.metrics import evaluate_loader
from ..fastpath import choose_fast_path
from ..models import build_model
from ..runtime import machine_description
from ..signals import StopFlag
from . import distributed as dist_utils
from . import restart, rundir
from .checkpoints import RunCheckpoints, seed_everything, unwrap
from .config import Config, _merge, check_launch, load_config, parse_overrides, resume_config, validate
from .epoch import EpochLoop
from .init_from import apply_init_from, save_record as save_init_record
from .run_data import RunData
from .schedule import LRSchedule, build_optimizer
from .state import TrainState


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
    holds a checkpoint of this run, else start it (alexnet.train.restart).
    """
    if resume is not None:
        config = resume_config(resume, overrides)     # refuses overrides that change the replay; writes nothing
    elif not isinstance(config, Config):
        config = load_config(config, overrides)
    elif overrides:
        config = copy.deepcopy(config)       # the caller's config stays as it was
        _merge(config, overrides if isinstance(overrides, dict) else parse_overrides(overrides), "overrides")
        validate(config)
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
    """One run from its configuration to its result: :meth:`run` builds, trains and reports."""

    def __init__(self, config: Config, ctx: dist_utils.DistContext, resume_dir: Path | None):
        self.config, self.ctx, self.resume_dir = config, ctx, resume_dir
        self.quiet = not config.run.progress or not ctx.is_main
        self.warnings: list[str] = []
        self.state = TrainState()

    # -- set-up ------------------------------------------------------------------------------
    def _build(self) -> None:
        """The fast path, data, loaders, model, optimiser and schedule, before any run folder exists."""
        c, ctx = self.config, self.ctx
        self.fast = choose_fast_path(ctx.device, c.train.precision, c.train.channels_last, c.train.compile,
                                     what="train.precision")
        if c.train.threads:
            torch.set_num_threads(c.train.threads)
        self.data = data = RunData.open(c, ctx, self.quiet, resume_dir=self.resume_dir)
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
                                         is_main=ctx.is_main, quiet=self.quiet, world_size=ctx.world_size)
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

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        t_start = time.time()
        c = self.config
        if self.resume_dir is None and c.run.resume == "auto":     # reads the folder, writes nothing
            run_dir = Path(c.run.out).expanduser() / c.run.name
            if dist_utils.on_main(lambda: restart.auto_resume(run_dir, c.to_dict()), self.ctx):
                self.resume_dir = run_dir
        self.run_dir = self.resume_dir if self.resume_dir is not None else rundir.run_folder(self.config, self.ctx)
        if self.ctx.is_main:      # a folder in use or already holding a run: refused before any work
            rundir.check_available(self.run_dir, self.resume_dir is not None)
        self._build()     # data, model, optimiser first: a start that fails leaves no run folder behind
        lock = rundir.open_run_folder(self.run_dir, self.config, self.resume_dir is not None) if self.ctx.is_main else None
        if lock is not None and self.resume_dir is None:
            for stale in self.run_dir.glob("samples-rank*.jsonl"):   # a fresh run starts its sample logs afresh
                stale.unlink()
            save_init_record(self.init_from, self.run_dir)
        try:
            return self._train_epochs(t_start)
        finally:
            if lock is not None:
                lock.release()

    def _train_epochs(self, t_start: float) -> TrainResult:
        c, ctx = self.config, self.ctx
        self.checkpoints = RunCheckpoints(self.run_dir, c, ctx, self.data, self.fast, self.model, self.optimizer,
                                          self.schedule, self.scaler, self.quiet)
        if self.resume_dir is not None:
            self.state = self.checkpoints.restore()
            if ctx.is_main:
                rundir.write_config(self.run_dir, c)    # the overrides, now that the checkpoint took them
        start_epoch, skip = self.state.epoch, self.state.batch_in_epoch
        model = self.model
        if ctx.distributed and not isinstance(model, dist_utils.TwoTowerModel):
            model = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        example = torch.zeros(2, self.data.cache.channels, c.data.crop, c.data.crop)
        model, failure = self.fast.compile_model(model, example, doing="training")
        self.warnings += [failure] if failure else []
        model.train()

        steps_log = rundir.RunLog(self.run_dir / "steps.jsonl") if ctx.is_main else None
        samples_log = (report.JsonlWriter(self.run_dir / f"samples-rank{ctx.rank}.jsonl")
                       if c.train.log_samples else None)
        self.checkpoints.last_save = time.time()     # periodic checkpoints count from here (after any compile)
        epochs_log = rundir.RunLog(self.run_dir / "epochs.jsonl") if ctx.is_main else None
        if ctx.is_main:
            info(f"training {c.model.name} on {self.data.cache.path} "
                 f"({len(self.data.selection.split(c.data.train_split)):,} images, "
                 f"{self.data.num_classes} classes) for {c.train.epochs} epochs on {ctx.device} x{ctx.world_size} in "
                 f"{self.fast.describe()}; data path {describe_data_path(self.train_loader.data_path)}; "
                 f"run folder {self.run_dir}", self.quiet)
            for note in self.data.notes:
                info(note, self.quiet)
        loop = EpochLoop(c, ctx, self.state, self.train_loader, self.schedule, self.optimizer, self.scaler, self.fast,
                         self.checkpoints, steps_log, samples_log, self.data.num_classes, self.warnings)

        status, epoch = "finished", start_epoch
        with StopFlag(announce="finishing this step and saving a checkpoint") as stop:
            for epoch in range(start_epoch, c.train.epochs):
                self.init_from.at_epoch(epoch, self.quiet)      # train.freeze_epochs: loaded layers frozen or not
                outcome = loop.run(model, epoch, skip, stop)
                skip = 0
                if outcome == "stopped":
                    status = "interrupted"
                    break
                record = self._end_epoch(epoch, outcome)
                if epochs_log is not None:
                    epochs_log.write(record)
                if c.train.max_steps and self.state.step >= c.train.max_steps:
                    status, epoch = "max_steps", epoch + 1
                    break
                if dist_utils.any_rank(stop.requested, ctx):
                    status, epoch = "interrupted", epoch + 1
                    break
            else:
                epoch = c.train.epochs
        for log in (steps_log, epochs_log, samples_log):
            if log is not None:
                log.close()
        if status == "interrupted":
            if ctx.is_main:
                info(f"{stop.name or 'stop'}: checkpoint saved at step {self.state.step}; "
                     f"continue with: alexnet train --resume {self.run_dir}")
            summary = {"status": "interrupted", "step": self.state.step, "run_dir": str(self.run_dir),
                       "signal": stop.name}
            return TrainResult(self.run_dir, summary, unwrap(self.model))
        return self._finish(t_start, status, epoch)

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
        self.checkpoints.save(s, epoch + 1, 0)
        if improved and ctx.is_main:
            rundir.copy_last_to_best(self.run_dir)
        if ctx.is_main:
            val_text = (f" | val top-1 {100 * val['top1_err']:.2f}% top-5 {100 * val['top5_err']:.2f}%" if val else "")
            info(f"epoch {epoch + 1}/{c.train.epochs}: train loss {train_stats['loss']:.4f} "
                 f"err {100 * train_stats['top1_err']:.2f}%{val_text} | lr {train_stats['lr']:.3g} | "
                 f"{record['img_per_s']:.0f} img/s | {train_stats['time']:.0f} s", self.quiet)
        return record

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
                   "warnings": self.warnings, "run_dir": str(self.run_dir), "train_time_s": s.train_time,
                   "code_version": ckpt_io.code_version()}
        epochs = report.read_jsonl(self.run_dir / "epochs.jsonl") if ctx.is_main else []
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
            rundir.write_outputs(self.run_dir, summary, epochs, plots=c.run.plots,
                                 title=f"{c.preset}: {c.model.name} ({self.run_dir.name})")
        return TrainResult(self.run_dir, summary, unwrap(self.model))
