"""A run's checkpoints: what ``last.safetensors`` holds, how it is written, how a resume restores it.

    checkpoints = RunCheckpoints(run_dir, config, ctx, data, fast, model, optimizer, schedule, scaler)
    state = checkpoints.restore()          # a resume: weights, optimiser, schedule, scaler, RNG, TrainState
    checkpoints.save(state, epoch, batch_in_epoch)

A checkpoint holds everything a resume needs to replay the run exactly: the model and
optimiser tensors, the schedule and gradient-scaler state, every rank's random generators
(gathered to rank 0, which alone writes), the run's :class:`~alexnet.train.state.TrainState`,
and what eval, predict and features need to feed the model (the cache's statistics and the
:class:`~alexnet.data.preprocess.InputSpec`). The file format is alexnet.checkpoint's; which
file a restart continues from, periodic copies and their pruning are alexnet.train.restart's;
the run folder's lock, ``best`` and logs are alexnet.train.rundir's.

A checkpoint is never written from weights that are not finite, so ``last.safetensors``
keeps the last good state of a run that diverged.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import checkpoint as ckpt_io
from .. import report
from ..console import info, warn
from ..data.loader import derive_seed
from ..errors import UserError
from ..fastpath import FastPath
from . import distributed as dist_utils
from . import restart, rundir
from .config import Config
from .rundir import LAST
from .run_data import RunData
from .schedule import LRSchedule
from .state import TrainState


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (the ones a checkpoint saves)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def unwrap(model: nn.Module) -> nn.Module:
    """The model under torch.compile's and DistributedDataParallel's wrappers: the weights to save."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


class RunCheckpoints:
    """``last.safetensors`` of one run folder, written from and restored into the run's model,
    optimiser, schedule and gradient scaler (the objects the trainer built)."""

    def __init__(self, run_dir: Path, config: Config, ctx: dist_utils.DistContext, data: RunData, fast: FastPath,
                 model: nn.Module, optimizer: torch.optim.Optimizer, schedule: LRSchedule, scaler, quiet: bool):
        self.run_dir, self.config, self.ctx, self.data, self.fast = run_dir, config, ctx, data, fast
        self.model, self.optimizer, self.schedule, self.scaler, self.quiet = model, optimizer, schedule, scaler, quiet
        self.saved_step: int | None = None     # the step last.safetensors holds (None: no checkpoint yet)
        self.last_save = time.time()           # when it was written (the clock of periodic checkpoints)

    @property
    def periodic(self) -> bool:
        """Checkpoints also every N steps or M minutes: each one is then kept as step-<STEP> too."""
        return bool(self.config.train.checkpoint_every_steps or self.config.train.checkpoint_every_minutes)

    def _meta(self, state: TrainState, status: str) -> dict:
        c, cache = self.config, self.data.cache
        return {
            "model": {"name": c.model.name, "num_classes": self.data.num_classes, "in_channels": cache.channels,
                      "kwargs": c.model.kwargs},
            "classes": list(cache.classes), "class_names": list(getattr(cache, "class_names", cache.classes)),
            "data": {"cache": str(cache.path), **self.data.input_spec.checkpoint_fields()[0]},
            **state.to_meta(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "world_size": self.ctx.world_size, "fast_path": self.fast.to_dict(),
            "config": c.to_dict(), "status": status,
        }

    def save(self, state: TrainState, epoch: int, batch_in_epoch: int, status: str = "running") -> None:
        """Write last.safetensors (rank 0), with every rank's random state gathered first; with periodic
        checkpoints, keep a copy as step-<STEP>.safetensors and prune the older ones (alexnet.train.restart).

        Never weights that are not finite (every rank holds the same weights, so every rank
        refuses together): last.safetensors keeps the last good state."""
        if not all(bool(torch.isfinite(p).all()) for p in unwrap(self.model).parameters()):
            raise UserError(f"training diverged: the weights are not finite at step {state.step}, not saved; "
                            f"{self.kept()}; lower --optim.lr or add --schedule.warmup_epochs 1")
        state.epoch, state.batch_in_epoch = epoch, batch_in_epoch
        state.samples_in_epoch = batch_in_epoch * self.config.train.batch_size
        rng = dist_utils.all_gather_objects(ckpt_io.capture_rng(), self.ctx)
        if self.ctx.is_main:
            m = unwrap(self.model)
            weights = m.grouped_state_dict() if isinstance(m, dist_utils.TwoTowerModel) else m.state_dict()
            # The cache's statistics, with the mean the input spec subtracts (a fine-tuned run's may be its
            # checkpoint's: data.stats_from), so that load_model feeds the model as it was trained.
            spec_stats = self.data.input_spec.checkpoint_fields()[1]
            stats = {f"stats.{k}": torch.from_numpy(np.ascontiguousarray(v))
                     for k, v in {**self.data.cache.stats, **spec_stats}.items()}
            ckpt_io.save_checkpoint(self.run_dir / LAST, model=weights, optimizer=self.optimizer,
                                    meta=self._meta(state, status), rng=dict(enumerate(rng)), extra_tensors=stats)
            if self.periodic and status == "running":
                restart.keep_copy(self.run_dir, state.step, self.config.train.keep_checkpoints)
        self.last_save = time.time()
        self.saved_step = state.step
        dist_utils.barrier(self.ctx)

    def kept(self) -> str:
        """What a run that stops now leaves behind, for its error line."""
        return (f"{self.run_dir / LAST} keeps step {self.saved_step}" if self.saved_step is not None
                else "no checkpoint was written")

    def _choose(self) -> ckpt_io.Checkpoint:
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
            seed_everything(derive_seed(self.config.train.seed, int(ck.meta["step"]), self.ctx.rank))

    def restore(self) -> TrainState:
        """Load the checkpoint a resume continues from into the run's objects and return its state;
        the run folder's logs are cut back to it (rank 0)."""
        c, ctx = self.config, self.ctx
        ck = self._choose()
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
        self._restore_rng(ck)
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
            rundir.truncate_logs(self.run_dir, s.step, s.epoch)
            for log in self.run_dir.glob("samples-rank*.jsonl"):
                report.truncate_jsonl(log, lambda r: r.get("step", 0) <= s.step)
            if saved_world != ctx.world_size:
                info(f"resuming a run of {saved_world} processes on {ctx.world_size}: same global batch, the "
                     f"epoch continues after its first {s.samples_in_epoch} images", self.quiet)
            if s.batch_in_epoch == 0 and s.best_epoch == s.epoch and not rundir.best_holds(self.run_dir, s.epoch):
                rundir.copy_last_to_best(self.run_dir)   # a crash came between writing last and copying it to best
            restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)   # set by torchrun
            info(f"resuming {self.run_dir} at epoch {s.epoch + 1}, step {s.step}"
                 + (f" (batch {s.batch_in_epoch} of the epoch)" if s.batch_in_epoch else "")
                 + (f" after torchrun restart {restarts}" if restarts else ""), self.quiet)
        return s
