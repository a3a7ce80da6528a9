"""The training loop: the paper's recipe (section 5), resumable, observable, data-parallel.

    result = train(load_config("cifar10", ["--train.epochs", "3"]))
    result.run_dir, result.summary["test"]["top1_err"]

One call does everything a run needs, in this order: check the configuration (the
model's options included), join the process group (when launched by torchrun), build
the data cache if it does not exist yet, build the model, optimiser (parameter groups by
role) and schedule, choose the fast path (alexnet.fastpath: precision, memory format,
compilation) - so that a start that fails leaves no run folder - then take the run-folder
lock (alexnet.train.rundir), restore the last checkpoint when resuming, then per epoch: train
(progress bar, per-step JSON lines, stall detection), validate, adjust the lr (the
paper's plateau rule), write ``last.safetensors`` and, on a new best validation error,
``best.safetensors``. At the end: the test split (centre or ten views), plots,
``summary.json`` and ``report.md``.

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
:class:`TrainState`), though not bit for bit. Periodic checkpoints, the fallback from a corrupt
``last`` and ``run.resume = "auto"``: alexnet.train.restart.

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
import datetime
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
from .. import report
from ..console import first_line, info, progress, warn
from ..data import build_loader, open_cache
from ..data.device_pipeline import describe_data_path
from ..data.loader import derive_seed
from ..data.preprocess import InputSpec
from ..data.resolve import ensure_prepared, is_cache
from ..errors import UserError
from ..eval.metrics import evaluate_loader
from ..fastpath import choose_fast_path
from ..models import build_model
from ..runtime import machine_description
from ..signals import StopFlag
from . import distributed as dist_utils
from . import restart, rundir
from .config import Config, _merge, check_launch, load_config, parse_overrides, resume_config, validate
from .init_from import apply_init_from, save_record as save_init_record
from .rundir import LAST
from .schedule import LRSchedule, build_optimizer
from .state import EpochSums, TrainState


# Seconds rank 0 waits before preparing a missing cache: tests make a small prepare outlast the
# collective timeout with it (tests/test_train_safety.py); 0 otherwise.
PREPARE_DELAY_S = float(os.environ.get("ALEXNET_TEST_PREPARE_DELAY_S", "0"))


@dataclass
class TrainResult:
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


def open_training_cache(config: Config, ctx: dist_utils.DistContext, quiet: bool = False):
    """The config's cache, prepared from ``data.source`` first when it does not exist (rank 0 only;
    the other ranks wait, then open it). The rule is :mod:`alexnet.data.resolve`'s.

    A prepare can take hours, far longer than a collective may wait for a dead rank
    (train.dist_timeout): the other ranks wait in a barrier of a gloo group of their own,
    whose deadline is train.prepare_timeout. A rank 0 that dies meanwhile closes its
    connections (and torchrun stops the job), so they do not wait out that deadline."""
    group = (dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=config.train.prepare_timeout))
             if ctx.distributed else None)
    try:
        if ctx.is_main:
            if not is_cache(config.cache_dir()):
                time.sleep(PREPARE_DELAY_S)
            ensure_prepared(config.data.source, config.data.size, name=config.data.name or None,
                            cache=config.data.cache or None, quiet=quiet, what="data.source")
        if group is not None:
            dist.barrier(group=group)
    finally:
        if group is not None:
            dist.destroy_process_group(group)
    return open_cache(config.cache_dir())


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _step_flags(loss: torch.Tensor, flags: list[bool], ctx: dist_utils.DistContext) -> list[bool]:
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


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


class Trainer:
    def __init__(self, config: Config, ctx: dist_utils.DistContext, resume_dir: Path | None):
        self.config, self.ctx, self.resume_dir = config, ctx, resume_dir
        self.quiet = not config.run.progress or not ctx.is_main
        self.warnings: list[str] = []
        self.state = TrainState()
        self.saved_step: int | None = None     # the step last.safetensors holds (None: no checkpoint yet)

    # -- set-up ------------------------------------------------------------------------------
    def _build(self) -> None:
        c, ctx = self.config, self.ctx
        self.fast = choose_fast_path(ctx.device, c.train.precision, c.train.channels_last, c.train.compile,
                                     what="train.precision")
        if c.train.threads:
            torch.set_num_threads(c.train.threads)
        self.cache = cache = open_training_cache(c, ctx, self.quiet)
        self._choose_splits(cache)
        limits = {c.data.train_split: c.data.train_subset}
        limits.update({split: c.data.val_subset for split in (self.val_split, self.test_split) if split})
        subset = any(limits.values())
        self.data = cache.subset(limits, seed=c.train.seed) if subset else cache
        self.workers = 0 if subset else c.data.workers
        self.num_classes = cache.num_classes
        # How images become network input: stored with every checkpoint, so that eval, predict
        # and features feed the model exactly this way.
        self.input_spec = InputSpec.from_stats(cache.stats, size=cache.size, crop=c.data.crop, channels=cache.channels,
                                               mean=c.data.mean, scale=c.data.scale)
        if c.train.batch_size % ctx.world_size:
            raise UserError(f"train.batch_size {c.train.batch_size} is not divisible by {ctx.world_size} processes")
        self.local_batch = c.train.batch_size // ctx.world_size
        self.train_loader = self._loader(c.data.train_split, train=True, batch_size=self.local_batch)
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise UserError(f"{cache.path}: split '{c.data.train_split}' has fewer images than one batch")
        self.val_loader = self._loader(self.val_split, train=False,
                                       batch_size=max(1, min(256, self.local_batch * 2))) if self.val_split else None

        # The model: identical initial weights on every rank (same seed), then per-rank streams.
        _seed_everything(c.train.seed)
        model = build_model(c.model.name, num_classes=self.num_classes, in_channels=cache.channels, **c.model.kwargs)
        # Fine-tuning: layers matching train.init_from by name and shape (a fresh run; a resume rebuilds
        # only which were loaded, for the same frozen set and parameter groups).
        self.init_from = apply_init_from(model, c, run_dir=self.resume_dir,
                                         resuming=self.resume_dir is not None, input_spec=self.input_spec,
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
        _seed_everything(c.train.seed + 1_000_003 * ctx.rank)

    def _choose_splits(self, cache) -> None:
        c = self.config
        val_split = c.data.val_split if c.data.val_split in cache.splits else c.data.test_split
        if val_split and val_split not in cache.splits:
            val_split = ""
        self.notes = ([f"the cache has no '{c.data.val_split}' split: validating on '{val_split}'"]
                      if val_split and val_split != c.data.val_split else [])
        self.val_split = val_split
        self.test_split = c.data.test_split if c.data.test_split in cache.splits else ""
        if c.data.test_split and not self.test_split and val_split:
            # Like `alexnet eval`: no test split (Imagewoof, ILSVRC) -> the final evaluation, with
            # the configured views, runs on the validation split instead of silently not at all.
            self.test_split = val_split
            self.notes.append(f"the cache has no '{c.data.test_split}' split: the final "
                              f"{c.train.test_views}-view evaluation runs on '{val_split}'")

    def _loader(self, split: str, *, train: bool, batch_size: int, views: str = "center"):
        c, ctx = self.config, self.ctx
        extra = dict(flip=c.data.flip, pca_std=c.data.pca_std) if train else dict(views=views)
        return build_loader(self.data, split, batch_size=batch_size, train=train, seed=c.train.seed, rank=ctx.rank,
                            world_size=ctx.world_size, workers=self.workers, device=ctx.device,
                            input_spec=self.input_spec, with_index=train and c.train.log_samples, **extra)

    # -- checkpoints -----------------------------------------------------------------------------
    def _meta(self, status: str) -> dict:
        c, cache = self.config, self.cache
        return {
            "model": {"name": c.model.name, "num_classes": self.num_classes, "in_channels": cache.channels,
                      "kwargs": c.model.kwargs},
            "classes": list(cache.classes), "class_names": list(getattr(cache, "class_names", cache.classes)),
            "data": {"cache": str(cache.path), **self.input_spec.checkpoint_fields()[0]},
            **self.state.to_meta(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "world_size": self.ctx.world_size, "fast_path": self.fast.to_dict(),
            "config": c.to_dict(), "status": status,
        }

    @property
    def periodic(self) -> bool:
        """Checkpoints also every N steps or M minutes: each one is then kept as step-<STEP> too."""
        return bool(self.config.train.checkpoint_every_steps or self.config.train.checkpoint_every_minutes)

    def save(self, epoch: int, batch_in_epoch: int, status: str = "running") -> None:
        """Write last.safetensors (rank 0), with every rank's random state gathered first; with periodic
        checkpoints, keep a copy as step-<STEP>.safetensors and prune the older ones (alexnet.train.restart).

        Never weights that are not finite (every rank holds the same weights, so every rank
        refuses together): last.safetensors keeps the last good state."""
        if not all(bool(torch.isfinite(p).all()) for p in _unwrap(self.model).parameters()):
            raise UserError(f"training diverged: the weights are not finite at step {self.state.step}, not saved; "
                            f"{self._kept()}; lower --optim.lr or add --schedule.warmup_epochs 1")
        self.state.epoch, self.state.batch_in_epoch = epoch, batch_in_epoch
        self.state.samples_in_epoch = batch_in_epoch * self.config.train.batch_size
        rng = dist_utils.all_gather_objects(ckpt_io.capture_rng(), self.ctx)
        if self.ctx.is_main:
            m = _unwrap(self.model)
            weights = m.grouped_state_dict() if isinstance(m, dist_utils.TwoTowerModel) else m.state_dict()
            stats = {f"stats.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.cache.stats.items()}
            ckpt_io.save_checkpoint(self.run_dir / LAST, model=weights, optimizer=self.optimizer,
                                    meta=self._meta(status), rng=dict(enumerate(rng)), extra_tensors=stats)
            if self.periodic and status == "running":
                restart.keep_copy(self.run_dir, self.state.step, self.config.train.keep_checkpoints)
        self.last_save = time.time()
        self.saved_step = self.state.step
        dist_utils.barrier(self.ctx)

    def _kept(self) -> str:
        return (f"{self.run_dir / LAST} keeps step {self.saved_step}" if self.saved_step is not None
                else "no checkpoint was written")

    def _choose_checkpoint(self) -> ckpt_io.Checkpoint:
        """``last`` or, when it is corrupt, the newest valid kept checkpoint: rank 0 chooses (and says
        so), every rank loads the same file."""
        chosen = {}

        def choose():
            ck, note = restart.choose_checkpoint(self.run_dir)
            if note:
                warn(note)
                restart.copy_atomically(ck.path, self.run_dir / LAST)  # a later restart finds a valid last
            chosen["ck"] = ck
            return str(ck.path)

        path = dist_utils.on_main(choose, self.ctx)
        return chosen["ck"] if "ck" in chosen else ckpt_io.load_checkpoint(path)

    def _restore_rng(self, ck: ckpt_io.Checkpoint) -> None:
        """Every rank's random state; on another number of processes, a rank the checkpoint has no
        state for starts streams derived from (seed, step, rank), the same on every resume."""
        if ck.meta.get("world_size", 1) == self.ctx.world_size or str(self.ctx.rank) in ck.meta.get("rng", {}):
            ckpt_io.restore_rng_for_rank(ck, self.ctx.rank)
        else:
            _seed_everything(derive_seed(self.config.train.seed, int(ck.meta["step"]), self.ctx.rank))

    def _restore(self) -> None:
        ck = self._choose_checkpoint()
        ckpt_io.check_compatible(ck, self.config.model.name, self.num_classes, self.cache.channels)
        saved_world = int(ck.meta.get("world_size", 1))
        saved_batch = (ck.meta.get("config") or {}).get("train", {}).get("batch_size", self.config.train.batch_size)
        if saved_world != self.ctx.world_size and saved_batch != self.config.train.batch_size:
            raise UserError(f"{ck.path}: saved by {saved_world} processes with global batch {saved_batch}; on "
                            f"{self.ctx.world_size} processes resume with the same global batch "
                            f"(--train.batch_size {saved_batch})")
        m = _unwrap(self.model)
        if isinstance(m, dist_utils.TwoTowerModel):
            raise UserError("resuming a model-parallel run is not supported; restart it without model.parallel")
        m.load_state_dict(ck.model_state)
        ckpt_io.restore_optimizer(ck, self.optimizer)
        self.schedule.load_state_dict(ck.meta["schedule"])
        if self.scaler is not None and ck.meta.get("scaler"):
            self.scaler.load_state_dict(ck.meta["scaler"])
        self._restore_rng(ck)
        s = self.state = TrainState.from_meta(ck.meta)
        if s.samples_in_epoch < 0:           # written before the count existed: batches of the same global batch
            s.samples_in_epoch = s.batch_in_epoch * saved_batch
        if s.samples_in_epoch % self.config.train.batch_size:
            raise UserError(f"{ck.path}: stopped after {s.samples_in_epoch} images of epoch {s.epoch + 1}, not a "
                            f"multiple of train.batch_size {self.config.train.batch_size}; resume with "
                            f"--train.batch_size {saved_batch}")
        s.batch_in_epoch = s.samples_in_epoch // self.config.train.batch_size
        self.saved_step = s.step
        if self.ctx.is_main:
            rundir.truncate_logs(self.run_dir, s.step, s.epoch)
            for log in self.run_dir.glob("samples-rank*.jsonl"):
                report.truncate_jsonl(log, lambda r: r.get("step", 0) <= s.step)
            if saved_world != self.ctx.world_size:
                info(f"resuming a run of {saved_world} processes on {self.ctx.world_size}: same global batch, the "
                     f"epoch continues after its first {s.samples_in_epoch} images", self.quiet)
            if s.batch_in_epoch == 0 and s.best_epoch == s.epoch and not rundir.best_holds(self.run_dir, s.epoch):
                rundir.copy_last_to_best(self.run_dir)   # a crash came between writing last and copying it to best
            restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)   # set by torchrun
            info(f"resuming {self.run_dir} at epoch {s.epoch + 1}, step {s.step}"
                 + (f" (batch {s.batch_in_epoch} of the epoch)" if s.batch_in_epoch else "")
                 + (f" after torchrun restart {restarts}" if restarts else ""), self.quiet)

    # -- the loop --------------------------------------------------------------------------------
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
        if self.resume_dir is not None:
            self._restore()
            if ctx.is_main:
                rundir.write_config(self.run_dir, c)    # the overrides, now that the checkpoint took them
        start_epoch, skip = self.state.epoch, self.state.batch_in_epoch
        model = self.model
        if ctx.distributed and not isinstance(model, dist_utils.TwoTowerModel):
            model = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        example = torch.zeros(2, self.cache.channels, c.data.crop, c.data.crop)
        model, failure = self.fast.compile_model(model, example, doing="training")
        self.warnings += [failure] if failure else []
        model.train()

        steps_log = rundir.RunLog(self.run_dir / "steps.jsonl") if ctx.is_main else None
        self.samples_log = (report.JsonlWriter(self.run_dir / f"samples-rank{ctx.rank}.jsonl")
                            if c.train.log_samples else None)
        self.last_save = time.time()
        epochs_log = rundir.RunLog(self.run_dir / "epochs.jsonl") if ctx.is_main else None
        if ctx.is_main:
            info(f"training {c.model.name} on {self.cache.path} ({len(self.data.split(c.data.train_split)):,} images, "
                 f"{self.num_classes} classes) for {c.train.epochs} epochs on {ctx.device} x{ctx.world_size} in "
                 f"{self.fast.describe()}; data path {describe_data_path(self.train_loader.data_path)}; "
                 f"run folder {self.run_dir}", self.quiet)
            for note in self.notes:
                info(note, self.quiet)

        status, epoch = "finished", start_epoch
        with StopFlag(announce="finishing this step and saving a checkpoint") as stop:
            for epoch in range(start_epoch, c.train.epochs):
                outcome = self._train_epoch(model, epoch, skip, stop, steps_log)
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
        for log in (steps_log, epochs_log, self.samples_log):
            if log is not None:
                log.close()
        if status == "interrupted":
            if ctx.is_main:
                info(f"{stop.name or 'stop'}: checkpoint saved at step {self.state.step}; "
                     f"continue with: alexnet train --resume {self.run_dir}")
            summary = {"status": "interrupted", "step": self.state.step, "run_dir": str(self.run_dir),
                       "signal": stop.name}
            return TrainResult(self.run_dir, summary, _unwrap(self.model))
        return self._finish(t_start, status, epoch)

    def _train_epoch(self, model, epoch: int, skip: int, stop: StopFlag, steps_log):
        c, ctx, s, fast = self.config, self.ctx, self.state, self.fast
        loader = self.train_loader
        loader.set_epoch(epoch)
        model.train()
        total = self.steps_per_epoch
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
            diverged, stopping, minutes_due = _step_flags(
                loss_d, [stop.requested, bool(every_s) and time.time() - self.last_save >= every_s], ctx)
            if diverged:    # before any log or checkpoint of this step: never save the weights it made
                raise UserError(f"training diverged: the loss is not finite at step {s.step} (lr {lr:.3g}); "
                                f"{self._kept()}; lower --optim.lr or add --schedule.warmup_epochs 1")
            sums.add(loss_d, logits.detach(), y.to(logits.device))
            window_sum += loss_d.double()
            window_n += 1
            last = batch_index + 1 == total
            if window_n >= c.train.log_every or last:
                window_mean = float(window_sum) / window_n     # a sync point on GPUs: once per window
                now = time.time()
                rate = window_n * c.train.batch_size / max(now - window_t, 1e-9)
                if steps_log is not None:
                    steps_log.write({"step": s.step, "epoch": epoch + (batch_index + 1) / total,
                                     "loss": float(loss_d), "window_loss": window_mean, "lr": lr, "img_per_s": rate})
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
                self.save(epoch, batch_index + 1, status="interrupted")
                return "stopped"
            if not last and (minutes_due or (every_steps and s.step % every_steps == 0)):
                # A periodic checkpoint mid-epoch: the state as a stop here would save it, then back to
                # the running epoch (its time and sums are counted at the epoch end as usual).
                cut = time.time() - t0
                s.train_time, train_time = s.train_time + cut, s.train_time
                s.partial = sums.to_partial(cut, lambda v: dist_utils.all_reduce_sum(v, ctx))
                self.save(epoch, batch_index + 1)
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
        steps, s = self.config.train.stall_steps, self.state
        if not steps or s.stall_warned or s.step < steps:
            return
        s.stall_warned = True    # decided either way: stop checking
        ln_c = math.log(self.num_classes)
        if mean_loss > 0.95 * ln_c:
            message = (f"training looks stalled at chance: mean loss {mean_loss:.3f} vs ln C = {ln_c:.3f} after "
                       f"{s.step} steps; remedies: --model.kwargs.init kaiming (He init), "
                       f"a smaller --optim.lr, or --schedule.warmup_epochs 1 (see docs/training.md)")
            self.warnings.append(message)
            if self.ctx.is_main:
                warn(message)

    def _end_epoch(self, epoch: int, train_stats: dict) -> dict:
        c, ctx, s = self.config, self.ctx, self.state
        record = {"epoch": epoch + 1, "step": s.step, "train_loss": train_stats["loss"],
                  "train_top1_err": train_stats["top1_err"], "lr": train_stats["lr"],
                  "epoch_time_s": train_stats["time"],
                  "img_per_s": train_stats["images"] / max(train_stats["time"], 1e-9)}
        val = None
        due = epoch + 1 == c.train.epochs or (c.train.val_every > 0 and (epoch + 1) % c.train.val_every == 0)
        if self.val_loader is not None and due:
            t = time.time()
            val = evaluate_loader(_unwrap(self.model), self.val_loader, self.num_classes, fast=self.fast).result()
            record.update(val_loss=val["loss"], val_top1_err=val["top1_err"], val_top5_err=val["top5_err"],
                          val_time_s=time.time() - t)
        if self.schedule.epoch_end(val["top1_err"] if val else None) and ctx.is_main:
            info(f"validation error stopped improving: lr divided, now {self.schedule.lr_at(s.step):.3g} "
                 f"(drop {self.schedule.drops} of {c.schedule.max_drops})", self.quiet)
        improved = s.improve(val["top1_err"] if val else None, epoch + 1)
        self.save(epoch + 1, 0)
        if improved and ctx.is_main:
            rundir.copy_last_to_best(self.run_dir)
        if ctx.is_main:
            val_text = (f" | val top-1 {100 * val['top1_err']:.2f}% top-5 {100 * val['top5_err']:.2f}%" if val else "")
            info(f"epoch {epoch + 1}/{c.train.epochs}: train loss {train_stats['loss']:.4f} "
                 f"err {100 * train_stats['top1_err']:.2f}%{val_text} | lr {train_stats['lr']:.3g} | "
                 f"{record['img_per_s']:.0f} img/s | {train_stats['time']:.0f} s", self.quiet)
        return record

    def _finish(self, t_start: float, status: str, epochs_done: int) -> TrainResult:
        c, ctx, s = self.config, self.ctx, self.state
        summary = {"status": status, "preset": c.preset, "model": c.model.name, "model_kwargs": c.model.kwargs,
                   "cache": str(self.cache.path), "num_classes": self.num_classes,
                   "train_images": len(self.data.split(c.data.train_split)), "epochs_done": epochs_done,
                   "steps": s.step, "batch_size": c.train.batch_size, "world_size": ctx.world_size,
                   "precision": self.fast.precision, "fast_path": self.fast.to_dict(),
                   "best_val_top1_err": None if math.isinf(s.best_err) else s.best_err,
                   "best_epoch": s.best_epoch, "val_split": self.val_split, "notes": self.notes,
                   "warnings": self.warnings, "run_dir": str(self.run_dir), "train_time_s": s.train_time,
                   "code_version": ckpt_io.code_version()}
        epochs = report.read_jsonl(self.run_dir / "epochs.jsonl") if ctx.is_main else []
        if epochs and epochs[-1].get("val_top1_err") is not None:
            last = epochs[-1]
            summary["val"] = {"split": self.val_split, "views": "center", "top1_err": last["val_top1_err"],
                              "top5_err": last["val_top5_err"], "loss": last.get("val_loss")}
        if self.test_split:
            views = c.train.test_views
            loader = self._loader(self.test_split, train=False, views=views,
                                  batch_size=max(1, min(256, self.local_batch * 2)) // (10 if views == "ten" else 1) or 1)
            meter = evaluate_loader(_unwrap(self.model), loader, self.num_classes, views=views, fast=self.fast)
            summary["test"] = {"split": self.test_split, "views": views, **meter.result()}
            summary["test"]["accuracy"] = 1 - summary["test"]["top1_err"]
        summary["wall_time_s"] = time.time() - t_start
        summary["machine"] = machine_description()
        if ctx.is_main:
            rundir.write_outputs(self.run_dir, summary, epochs, plots=c.run.plots,
                                 title=f"{c.preset}: {c.model.name} ({self.run_dir.name})")
        return TrainResult(self.run_dir, summary, _unwrap(self.model))
