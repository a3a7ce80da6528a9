"""The training loop: the paper's recipe (section 5), resumable, observable, data-parallel.

    result = train(load_config("cifar10", ["--train.epochs", "3"]))
    result.run_dir, result.summary["test"]["top1_err"]

One call does everything a run needs, in this order: join the process group (when
launched by torchrun), take the run-folder lock, build the data cache if it does not
exist yet, build the model, optimiser (parameter groups by role) and schedule, restore
the last checkpoint when resuming, then per epoch: train (progress bar, per-step JSON
lines, stall detection), validate, adjust the lr (the paper's plateau rule), write
``last.safetensors`` and, on a new best validation error, ``best.safetensors``. At the
end: the test split (centre or ten views), plots, ``summary.json`` and ``report.md``.

Exactness of resume. Every random generator (torch, numpy, python; every rank's) is
saved with the step; the data order and augmentation are functions of
(seed, epoch, batch) in the loader, so a resumed run replays the same batches. On a
CPU the result is bit-identical to an uninterrupted run (tests/test_checkpoint_resume.py).

Signals. SIGINT and SIGTERM set a flag; the current step finishes, a checkpoint is
written and the process exits with a line saying how to resume (status 130/143). A
second Ctrl-C interrupts immediately.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import report
from ..errors import UserError
from ..locations import expand_source
from .. import checkpoint as ckpt_io
from . import distributed as dist_utils
from .config import Config, _merge, load_config, parse_overrides, to_toml, validate
from .schedule import LRSchedule, build_optimizer

LAST, BEST = "last.safetensors", "best.safetensors"


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict
    model: nn.Module | None = field(default=None, repr=False)

    @property
    def interrupted(self) -> bool:
        return self.summary.get("status") == "interrupted"


def warn(message: str) -> None:
    sys.stderr.write(f"alexnet: warning: {message}\n")
    sys.stderr.flush()


def info(message: str, quiet: bool = False) -> None:
    if not quiet:
        sys.stderr.write(f"alexnet: {message}\n")
        sys.stderr.flush()


# ----------------------------------------------------------------------------- run folder

class RunLock:
    """An exclusive POSIX lock (``lockf``) on RUN/.lock: a second run on the same folder refuses to start.

    The kernel releases the lock when the process dies, so a killed run never leaves a
    stale lock behind. ``lockf``, not ``flock``: a ``flock`` is shared with forked
    children (DataLoader workers), which outlive a ``kill -9`` of the trainer by seconds
    and kept the folder "in use by" a dead process (tests/reliability/test_crash.py).
    """

    def __init__(self, run_dir: Path):
        import fcntl
        self.path = run_dir / ".lock"
        self._file = open(self.path, "a+")
        try:
            fcntl.lockf(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise UserError(f"{run_dir}: run folder is in use by {holder}; wait for it or choose another --run.name") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"process {os.getpid()} on {os.uname().nodename}")
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()


class StopFlag:
    """SIGINT/SIGTERM -> finish the step, save, exit. A second SIGINT interrupts at once."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self):
        if threading_main():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        name = signal.Signals(signum).name
        sys.stderr.write(f"\nalexnet: {name} received: finishing this step and saving a checkpoint "
                         f"(Ctrl-C again to stop at once)\n")

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def threading_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


# ----------------------------------------------------------------------------- data

def derived_cache(cache, limits: dict[str, int] | None = None, stats: dict | None = None, seed: int = 0):
    """Transitional: :meth:`Cache.subset` plus :meth:`Cache.with_stats`."""
    derived = cache.subset(limits, seed=seed)
    return derived if stats is None else derived.with_stats(stats)


def ensure_cache(config: Config, ctx: dist_utils.DistContext, quiet: bool = False):
    """Open the config's cache; build it from ``data.source`` with ``prepare`` when missing."""
    from ..data import open_cache
    path = config.cache_dir()
    if ctx.is_main and not (path / "meta.json").is_file():
        if not config.data.source:
            raise UserError(f"{path}: no such cache, and the config names no data.source to build it from")
        from ..data import prepare
        from ..data.sources import SHORTHANDS
        source = expand_source(config.data.source)
        if source not in SHORTHANDS and not os.path.exists(source):
            raise UserError(f"{source}: no such file or directory (data.source, needed to build the cache {path})")
        info(f"preparing {config.data.source} -> {path} (once; later runs reuse it)", quiet)
        path.parent.mkdir(parents=True, exist_ok=True)
        prepare(source, path, size=config.data.size, quiet=quiet)
    dist_utils.barrier(ctx)
    return open_cache(path)


def _make_loader(cache, split: str, config: Config, ctx, *, train: bool, batch_size: int, views: str = "center",
                 workers: int | None = None):
    from ..data import build_loader
    d = config.data
    kwargs = dict(batch_size=batch_size, train=train, crop=d.crop, seed=config.train.seed,
                  rank=ctx.rank, world_size=ctx.world_size, workers=d.workers if workers is None else workers,
                  device=ctx.device,
                  mean=d.mean)
    if train:
        kwargs.update(flip=d.flip, pca_std=d.pca_std)
    else:
        kwargs.update(views=views)
    return build_loader(cache, split, **kwargs)


def input_scale_for(config: Config, cache) -> list[float] | None:
    """Per-channel multipliers applied after mean subtraction (``data.scale = "std"``), or None.

    The paper feeds raw 0..255 values minus the mean, which suits its N(0, 0.01)
    initialisation; He-initialised variants expect unit-variance inputs.
    """
    if config.data.scale != "std":
        return None
    return [float(1.0 / max(s, 1e-6)) for s in np.asarray(cache.stats["channel_std"]).reshape(-1)]


def apply_input_scale(x: torch.Tensor, scale: list[float] | None) -> torch.Tensor:
    if not scale:
        return x
    return x * torch.tensor(scale, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)


# ----------------------------------------------------------------------------- precision

def autocast_context(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise UserError(f"train.precision = 'fp16' needs a CUDA device (this run uses {device}); use bf16 on CPU")


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate_model(model: nn.Module, loader, num_classes: int, device: torch.device, *, views: str = "center",
                   precision: str = "fp32", channels_last: bool = False, input_scale: list[float] | None = None):
    """Top-1/top-5 counts and loss over a loader (centre crop, or the paper's ten views averaged)."""
    from ..eval.metrics import view_average
    from ..eval.metrics import ClassificationMeter
    meter = ClassificationMeter(num_classes)
    was_training = model.training
    model.eval()
    for x, y in loader:
        x = apply_input_scale(x, input_scale)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(precision, device):
            logits = model(x)
        probs = view_average(logits.float(), 10 if views == "ten" else 1)
        loss_sum = float(F.nll_loss(torch.log(probs.clamp_min(1e-12)), y.to(probs.device), reduction="sum"))
        meter.update(probs, y, loss_sum)
    model.train(was_training)
    return meter.all_reduce()


# ----------------------------------------------------------------------------- the trainer

def _seed_everything(seed: int) -> None:
    import random
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def train(config: Config | str | os.PathLike | None = None, *, resume: str | os.PathLike | None = None,
          overrides: dict | list[str] | None = None) -> TrainResult:
    """Train a model as the config says and return the run folder and its summary.

    ``config``: a :class:`Config`, a preset name or TOML path (``None`` = fashion-mnist).
    ``resume``: a run folder to continue from its ``last.safetensors`` (its saved
    ``config.toml`` is used; ``overrides`` may still change e.g. ``train.epochs``).
    """
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.toml").is_file():
            raise UserError(f"{run_dir}: not a run folder (no config.toml); nothing to resume")
        config = load_config(run_dir / "config.toml", overrides)
    elif not isinstance(config, Config):
        config = load_config(config, overrides)
    elif overrides:
        import copy
        config = copy.deepcopy(config)       # the caller's config stays as it was
        _merge(config, overrides if isinstance(overrides, dict) else parse_overrides(overrides), "overrides")
        validate(config)
    ctx = dist_utils.setup(config.train.device, config.train.dist_timeout)
    try:
        trainer = Trainer(config, ctx, Path(resume) if resume is not None else None)
        return trainer.run()
    except Exception as exc:
        if ctx.distributed and dist_utils.is_communication_failure(exc):
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise UserError(f"rank {ctx.rank}: lost contact with the other processes of the job ({first}); "
                            f"stopping. Resume from the last epoch with --resume once all nodes are up") from None
        raise
    finally:
        dist_utils.teardown()


class Trainer:
    def __init__(self, config: Config, ctx: dist_utils.DistContext, resume_dir: Path | None):
        self.config, self.ctx, self.resume_dir = config, ctx, resume_dir
        self.quiet = not config.run.progress or not ctx.is_main
        self.warnings: list[str] = []
        self.lock: RunLock | None = None

    # -- set-up ------------------------------------------------------------------------------
    def _run_dir(self) -> Path:
        if self.resume_dir is not None:
            return self.resume_dir
        c = self.config
        name = c.run.name or f"{c.preset or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
        name = dist_utils.broadcast_object(name, self.ctx)   # every rank agrees on the folder
        return Path(c.run.out).expanduser() / name

    def _prepare_folder(self) -> None:
        self.run_dir = self._run_dir()
        if not self.ctx.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.lock = RunLock(self.run_dir)
        if self.resume_dir is None and (self.run_dir / LAST).exists():
            raise UserError(f"{self.run_dir}: already holds a run; continue it with --resume {self.run_dir} "
                            f"or choose another --run.name")
        if self.resume_dir is not None and not (self.run_dir / LAST).exists():
            raise UserError(f"{self.run_dir}: no checkpoint to resume from (last.safetensors missing)")
        (self.run_dir / "config.toml").write_text(to_toml(self.config))
        report.write_json(self.run_dir / "config.json", self.config.to_dict())

    def _build(self) -> None:
        from ..models import build_model
        c, ctx = self.config, self.ctx
        check_precision(c.train.precision, ctx.device)
        if c.train.threads:
            torch.set_num_threads(c.train.threads)
        cache = ensure_cache(c, ctx, self.quiet)
        self.cache = cache
        limits = {c.data.train_split: c.data.train_subset}
        val_split = c.data.val_split if c.data.val_split in cache.splits else c.data.test_split
        if val_split and val_split not in cache.splits:
            val_split = ""
        if val_split and val_split != c.data.val_split:
            self.notes = [f"the cache has no '{c.data.val_split}' split: validating on '{val_split}'"]
        else:
            self.notes = []
        self.val_split = val_split
        self.test_split = c.data.test_split if c.data.test_split in cache.splits else ""
        if c.data.test_split and not self.test_split and val_split:
            # Like `alexnet eval`: no test split (Imagewoof, ILSVRC) -> the final evaluation, with
            # the configured views, runs on the validation split instead of silently not at all.
            self.test_split = val_split
            self.notes.append(f"the cache has no '{c.data.test_split}' split: the final "
                              f"{c.train.test_views}-view evaluation runs on '{val_split}'")
        for split in (val_split, self.test_split):
            if split:
                limits[split] = c.data.val_subset
        subset = any(limits.values())
        data = derived_cache(cache, limits, seed=c.train.seed) if subset else cache
        self.data = data
        self.workers = 0 if subset else c.data.workers
        self.num_classes = cache.num_classes
        self.input_scale = input_scale_for(c, cache)
        if c.train.batch_size % ctx.world_size:
            raise UserError(f"train.batch_size {c.train.batch_size} is not divisible by {ctx.world_size} processes")
        self.local_batch = c.train.batch_size // ctx.world_size
        self.train_loader = _make_loader(data, c.data.train_split, c, ctx, train=True, batch_size=self.local_batch,
                                         workers=self.workers)
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise UserError(f"{cache.path}: split '{c.data.train_split}' has fewer images than one batch")
        eval_batch = max(1, min(256, self.local_batch * 2))
        self.val_loader = _make_loader(data, val_split, c, ctx, train=False, batch_size=eval_batch,
                                       workers=self.workers) if val_split else None

        # The model: identical initial weights on every rank (same seed), then per-rank streams.
        _seed_everything(c.train.seed)
        model = build_model(c.model.name, num_classes=self.num_classes, in_channels=cache.channels, **c.model.kwargs)
        if c.model.parallel == "towers":
            model = dist_utils.TwoTowerModel(model, tuple(c.model.devices or (str(ctx.device), str(ctx.device))))
        else:
            model = model.to(ctx.device)
        if c.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        lr = c.optim.lr * (c.train.batch_size / 128 if c.optim.scale_lr else 1.0)
        self.optimizer = build_optimizer(model, c.optim, lr)
        self.schedule = LRSchedule(c.schedule, lr, self.steps_per_epoch, c.train.epochs)
        self.scaler = torch.amp.GradScaler(ctx.device.type) if c.train.precision == "fp16" else None
        _seed_everything(c.train.seed + 1_000_003 * ctx.rank)

    def _model_state(self) -> dict:
        m = _unwrap(self.model)
        if isinstance(m, dist_utils.TwoTowerModel):
            return m.grouped_state_dict()
        return m.state_dict()

    def _meta(self, epoch: int, batch_in_epoch: int, status: str) -> dict:
        c = self.config
        return {
            "model": {"name": c.model.name, "num_classes": self.num_classes, "in_channels": self.cache.channels,
                      "kwargs": c.model.kwargs},
            "classes": list(self.cache.classes),
            "class_names": list(getattr(self.cache, "class_names", self.cache.classes)),
            "data": {"cache": str(self.cache.path), "size": self.cache.size, "crop": c.data.crop, "mean": c.data.mean,
                     "channels": self.cache.channels, "input_scale": self.input_scale},
            "epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": self.step,
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "best_val_top1_err": self.best_err if math.isfinite(self.best_err) else None,
            "best_epoch": self.best_epoch, "stall_warned": self.stall_warned,
            "train_time_s": self.train_time, "world_size": self.ctx.world_size, "partial": self.partial,
            "config": c.to_dict(), "status": status,
        }

    def save(self, name: str, epoch: int, batch_in_epoch: int, status: str = "running") -> None:
        """Write a checkpoint (rank 0), with every rank's random state gathered first."""
        rng = dist_utils.all_gather_objects(ckpt_io.capture_rng(), self.ctx)
        if self.ctx.is_main:
            stats = {f"stats.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.cache.stats.items()}
            ckpt_io.save_checkpoint(self.run_dir / name, model=self._model_state(), optimizer=self.optimizer,
                                    meta=self._meta(epoch, batch_in_epoch, status),
                                    rng=dict(enumerate(rng)), extra_tensors=stats)
        dist_utils.barrier(self.ctx)

    def _restore(self) -> tuple[int, int]:
        ck = ckpt_io.load_checkpoint(self.run_dir / LAST)
        c = self.config
        ckpt_io.check_compatible(ck, c.model.name, self.num_classes, self.cache.channels)
        if ck.meta.get("world_size", 1) != self.ctx.world_size:
            raise UserError(f"{ck.path}: saved by {ck.meta.get('world_size')} processes; resume with the same number "
                            f"(this run has {self.ctx.world_size})")
        m = _unwrap(self.model)
        state = ck.model_state
        if isinstance(m, dist_utils.TwoTowerModel):
            raise UserError("resuming a model-parallel run is not supported; restart it without model.parallel")
        m.load_state_dict(state)
        ckpt_io.restore_optimizer(ck, self.optimizer)
        self.schedule.load_state_dict(ck.meta["schedule"])
        if self.scaler is not None and ck.meta.get("scaler"):
            self.scaler.load_state_dict(ck.meta["scaler"])
        ckpt_io.restore_rng_for_rank(ck, self.ctx.rank)
        self.step = int(ck.meta["step"])
        self.best_err = ck.meta["best_val_top1_err"] if ck.meta["best_val_top1_err"] is not None else math.inf
        self.best_epoch = ck.meta.get("best_epoch")
        self.stall_warned = bool(ck.meta.get("stall_warned"))
        self.train_time = float(ck.meta.get("train_time_s", 0.0))
        epoch, batch = int(ck.meta["epoch"]), int(ck.meta["batch_in_epoch"])
        self.partial = ck.meta.get("partial") or {}
        if self.ctx.is_main:
            # Drop log records written after this checkpoint: the resumed run writes them again.
            report.truncate_jsonl(self.run_dir / "steps.jsonl", lambda r: r.get("step", 0) <= self.step)
            report.truncate_jsonl(self.run_dir / "epochs.jsonl", lambda r: r.get("epoch", 0) <= epoch)
            if batch == 0 and self.best_epoch == epoch and not self._best_holds(epoch):
                self._copy_last_to_best()    # a crash came between writing last and copying it to best
            info(f"resuming {self.run_dir} at epoch {epoch + 1}, step {self.step}"
                 + (f" (batch {batch} of the epoch)" if batch else ""), self.quiet)
        return epoch, batch

    def _best_holds(self, epoch: int) -> bool:
        try:
            return ckpt_io.load_checkpoint(self.run_dir / BEST).meta.get("epoch") == epoch
        except UserError:
            return False

    def _copy_last_to_best(self) -> None:
        """best <- last, atomically (copy aside, fsync, rename)."""
        import shutil
        tmp = self.run_dir / (BEST + ".tmp-copy")
        shutil.copyfile(self.run_dir / LAST, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.run_dir / BEST)

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        t_start = time.time()
        self._prepare_folder()
        try:
            return self._run(t_start)
        finally:
            if self.lock is not None:
                self.lock.release()

    def _run(self, t_start: float) -> TrainResult:
        c, ctx = self.config, self.ctx
        self._build()
        self.step, self.best_err, self.best_epoch, self.stall_warned, self.train_time = 0, math.inf, None, False, 0.0
        self.partial = {}     # running sums of an epoch interrupted mid-way (restored on resume)
        start_epoch, skip = 0, 0
        if self.resume_dir is not None:
            start_epoch, skip = self._restore()

        model = self.model
        if ctx.distributed and not isinstance(model, dist_utils.TwoTowerModel):
            from torch.nn.parallel import DistributedDataParallel
            model = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        if c.train.compile:
            model = self._compile(model)
        self.train_model = model

        steps_log = report.JsonlWriter(self.run_dir / "steps.jsonl") if ctx.is_main else None
        epochs_log = report.JsonlWriter(self.run_dir / "epochs.jsonl") if ctx.is_main else None
        if ctx.is_main:
            for note in self.notes:
                info(note, self.quiet)
            info(f"training {c.model.name} on {self.cache.path} ({len(self.data.split(c.data.train_split)):,} images, "
                 f"{self.num_classes} classes) for {c.train.epochs} epochs on {ctx.device} x{ctx.world_size}; "
                 f"run folder {self.run_dir}", self.quiet)

        status, epoch = "finished", start_epoch
        ln_c = math.log(self.num_classes)
        with StopFlag() as stop:
            for epoch in range(start_epoch, c.train.epochs):
                outcome = self._train_epoch(model, epoch, skip, stop, steps_log, ln_c)
                skip = 0
                if outcome == "stopped":
                    status = "interrupted"
                    break
                record = self._end_epoch(epoch, outcome)
                if epochs_log is not None:
                    epochs_log.write(record)
                if c.train.max_steps and self.step >= c.train.max_steps:
                    status = "max_steps"
                    epoch += 1
                    break
                if dist_utils.any_rank(stop.signum is not None, ctx):
                    status = "interrupted"
                    epoch += 1
                    break
            else:
                epoch = c.train.epochs
        for log in (steps_log, epochs_log):
            if log is not None:
                log.close()

        if status == "interrupted":
            if ctx.is_main:
                sig = signal.Signals(stop.signum).name if stop.signum else "stop"
                info(f"{sig}: checkpoint saved at step {self.step}; continue with: alexnet train --resume {self.run_dir}")
            summary = {"status": "interrupted", "step": self.step, "run_dir": str(self.run_dir),
                       "signal": signal.Signals(stop.signum).name if stop.signum else None}
            return TrainResult(self.run_dir, summary, _unwrap(self.model))
        return self._finish(t_start, status, epoch)

    def _compile(self, model: nn.Module) -> nn.Module:
        try:
            compiled = torch.compile(model)
            x = torch.zeros(2, self.cache.channels, self.config.data.crop, self.config.data.crop, device=self.ctx.device)
            with torch.no_grad(), autocast_context(self.config.train.precision, self.ctx.device):
                compiled.eval()(x)
            compiled.train()
            return compiled
        except Exception as exc:   # noqa: BLE001 - any compiler failure means: run eagerly
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            warn(f"torch.compile failed ({first}); training eagerly instead")
            self.warnings.append("torch.compile failed; ran eagerly")
            model.train()
            return model

    def _train_epoch(self, model, epoch: int, skip: int, stop: StopFlag, steps_log, ln_c: float):
        c, ctx = self.config, self.ctx
        loader = self.train_loader
        loader.set_epoch(epoch)
        model.train()
        total = self.steps_per_epoch
        bar = None
        if ctx.is_main and c.run.progress and sys.stderr.isatty():
            from tqdm import tqdm
            bar = tqdm(total=total, initial=skip, desc=f"epoch {epoch + 1}/{c.train.epochs}", unit="batch",
                       leave=True, dynamic_ncols=True, file=sys.stderr)
        p = self.partial if skip else {}
        loss_sum = torch.tensor(p.get("loss_sum", 0.0), dtype=torch.float64, device=ctx.device)
        correct = torch.tensor(int(p.get("correct", 0)), dtype=torch.int64, device=ctx.device)
        seen = int(p.get("seen", 0))
        prior_time = float(p.get("time", 0.0))   # this epoch's training time before an interruption
        window_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
        window_n, window_t = 0, time.time()
        t0 = time.time()
        lr = self.schedule.lr_at(self.step)
        batch_index = -1
        for batch_index, (x, y) in enumerate(loader):
            if batch_index < skip:
                continue           # replay the data order up to where the checkpoint stopped
            lr = self.schedule.apply(self.optimizer, self.step)
            x = apply_input_scale(x, self.input_scale)
            if c.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_context(c.train.precision, ctx.device):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y.to(logits.device))
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            self.step += 1
            n = y.numel()
            seen += n
            loss_d = loss.detach()
            loss_sum += loss_d.double() * n
            correct += (logits.detach().argmax(1) == y.to(logits.device)).sum()
            window_sum += loss_d.double()
            window_n += 1
            last = batch_index + 1 == total
            if window_n >= c.train.log_every or last:
                window_mean = float(window_sum) / window_n     # a sync point on GPUs: once per window
                if not math.isfinite(window_mean):
                    raise UserError(f"training diverged: the loss is {window_mean} at step {self.step} "
                                    f"(lr {lr:.3g}); lower --optim.lr or add --schedule.warmup_epochs 1")
                now = time.time()
                rate = window_n * c.train.batch_size / max(now - window_t, 1e-9)
                if steps_log is not None:
                    steps_log.write({"step": self.step, "epoch": epoch + (batch_index + 1) / total,
                                     "loss": float(loss_d), "window_loss": window_mean, "lr": lr, "img_per_s": rate})
                self._check_stall(window_mean, ln_c)
                window_sum.zero_()
                window_n, window_t = 0, now
            if bar is not None:
                elapsed = max(time.time() - t0 + prior_time, 1e-9)
                bar.set_postfix(loss=f"{float(loss_d):.3f}", lr=f"{lr:.3g}",
                                img_s=f"{seen * ctx.world_size / elapsed:.0f}", refresh=False)
                bar.update(1)
            stopping = dist_utils.any_rank(stop.signum is not None, ctx)
            hit_max = bool(c.train.max_steps) and self.step >= c.train.max_steps
            if stopping and not last:
                cut = time.time() - t0
                self.train_time += cut
                if bar is not None:
                    bar.close()
                self.partial = {"loss_sum": float(loss_sum), "correct": int(correct), "seen": seen,
                                "time": prior_time + cut}
                self.save(LAST, epoch, batch_index + 1, status="interrupted")
                return "stopped"
            if hit_max:
                break
        if bar is not None:
            bar.close()
        elapsed = time.time() - t0
        self.train_time += elapsed
        self.partial = {}
        totals = dist_utils.all_reduce_sum([float(loss_sum), float(correct), float(seen)], ctx)
        return {"loss": totals[0] / max(totals[2], 1), "top1_err": 1 - totals[1] / max(totals[2], 1),
                "images": totals[2], "time": elapsed + prior_time, "lr": lr}

    def _check_stall(self, mean_loss: float, ln_c: float) -> None:
        steps = self.config.train.stall_steps
        if not steps or self.stall_warned or self.step < steps:
            return
        if mean_loss > 0.95 * ln_c:
            self.stall_warned = True
            message = (f"training looks stalled at chance: mean loss {mean_loss:.3f} vs ln C = {ln_c:.3f} after "
                       f"{self.step} steps; remedies: --model.kwargs.init kaiming (He init), "
                       f"a smaller --optim.lr, or --schedule.warmup_epochs 1 (see docs/training.md)")
            self.warnings.append(message)
            if self.ctx.is_main:
                warn(message)
        else:
            self.stall_warned = True    # progress was made: stop checking

    def _end_epoch(self, epoch: int, train_stats: dict) -> dict:
        c, ctx = self.config, self.ctx
        record = {"epoch": epoch + 1, "step": self.step, "train_loss": train_stats["loss"],
                  "train_top1_err": train_stats["top1_err"], "lr": train_stats["lr"],
                  "epoch_time_s": train_stats["time"],
                  "img_per_s": train_stats["images"] / max(train_stats["time"], 1e-9)}
        val = None
        last_epoch = epoch + 1 == c.train.epochs
        due = last_epoch or (c.train.val_every > 0 and (epoch + 1) % c.train.val_every == 0)
        if self.val_loader is not None and due:
            t = time.time()
            meter = evaluate_model(_unwrap(self.model), self.val_loader, self.num_classes, ctx.device,
                                   precision=c.train.precision, channels_last=c.train.channels_last,
                                   input_scale=self.input_scale)
            val = meter.result()
            record.update(val_loss=val["loss"], val_top1_err=val["top1_err"], val_top5_err=val["top5_err"],
                          val_time_s=time.time() - t)
        dropped = self.schedule.epoch_end(val["top1_err"] if val else None)
        if dropped and ctx.is_main:
            info(f"validation error stopped improving: lr divided, now {self.schedule.lr_at(self.step):.3g} "
                 f"(drop {self.schedule.drops} of {c.schedule.max_drops})", self.quiet)
        improved = val is not None and val["top1_err"] < self.best_err
        if improved:
            self.best_err, self.best_epoch = val["top1_err"], epoch + 1
        self.save(LAST, epoch + 1, 0)
        if improved and ctx.is_main:
            self._copy_last_to_best()
        if ctx.is_main:
            val_text = (f" | val top-1 {100 * val['top1_err']:.2f}% top-5 {100 * val['top5_err']:.2f}%" if val else "")
            info(f"epoch {epoch + 1}/{c.train.epochs}: train loss {train_stats['loss']:.4f} "
                 f"err {100 * train_stats['top1_err']:.2f}%{val_text} | lr {train_stats['lr']:.3g} | "
                 f"{record['img_per_s']:.0f} img/s | {train_stats['time']:.0f} s", self.quiet)
        return record

    def _finish(self, t_start: float, status: str, epochs_done: int) -> TrainResult:
        c, ctx = self.config, self.ctx
        summary = {"status": status, "preset": c.preset, "model": c.model.name, "model_kwargs": c.model.kwargs,
                   "cache": str(self.cache.path), "num_classes": self.num_classes,
                   "train_images": len(self.data.split(c.data.train_split)), "epochs_done": epochs_done,
                   "steps": self.step, "batch_size": c.train.batch_size, "world_size": ctx.world_size,
                   "precision": c.train.precision, "best_val_top1_err": None if math.isinf(self.best_err) else self.best_err,
                   "best_epoch": self.best_epoch, "val_split": self.val_split, "notes": self.notes,
                   "warnings": self.warnings, "run_dir": str(self.run_dir), "train_time_s": self.train_time,
                   "code_version": ckpt_io.code_version()}
        epochs = report.read_jsonl(self.run_dir / "epochs.jsonl") if ctx.is_main else []
        if epochs:
            last = epochs[-1]
            if last.get("val_top1_err") is not None:
                summary["val"] = {"split": self.val_split, "views": "center", "top1_err": last["val_top1_err"],
                                  "top5_err": last["val_top5_err"], "loss": last.get("val_loss")}
        if self.test_split:
            loader = _make_loader(self.data, self.test_split, c, ctx, train=False,
                                  batch_size=max(1, min(256, self.local_batch * 2)) // (10 if c.train.test_views == "ten" else 1) or 1,
                                  views=c.train.test_views, workers=self.workers)
            meter = evaluate_model(_unwrap(self.model), loader, self.num_classes, ctx.device,
                                   views=c.train.test_views, precision=c.train.precision,
                                   channels_last=c.train.channels_last, input_scale=self.input_scale)
            summary["test"] = {"split": self.test_split, "views": c.train.test_views, **meter.result()}
            summary["test"]["accuracy"] = 1 - summary["test"]["top1_err"]
        summary["wall_time_s"] = time.time() - t_start
        summary["machine"] = report.machine_description()
        if ctx.is_main:
            report.write_csv(self.run_dir / "epochs.csv", epochs)
            if c.run.plots and epochs:
                report.plot_curves(epochs, self.run_dir / "curves.png",
                                   title=f"{c.preset}: {c.model.name} ({self.run_dir.name})",
                                   steps=report.read_jsonl(self.run_dir / "steps.jsonl"))
            report.write_json(self.run_dir / "summary.json", summary)
            report.write_report(self.run_dir, summary, epochs)
            test = summary.get("test")
            if test:
                info(f"test ({test['views']}): top-1 error {100 * test['top1_err']:.2f}% "
                     f"(accuracy {100 * test['accuracy']:.2f}%), top-5 error {100 * test['top5_err']:.2f}%")
            info(f"done in {summary['wall_time_s'] / 60:.1f} min; report: {self.run_dir / 'report.md'}; "
                 f"plots: {self.run_dir / 'curves.png'}; checkpoints: {self.run_dir / LAST}")
        return TrainResult(self.run_dir, summary, _unwrap(self.model))
