"""What a restart finds in a run folder: periodic checkpoints, the newest valid one, ``--resume auto``.

Cluster schedulers and ``torchrun --max-restarts N`` restart a failed job with the same
command. With a fixed ``run.name`` and ``run.resume = "auto"`` (``--resume auto``) that
command continues the run: it resumes when RUN holds a checkpoint (``last``, or when that
is missing or corrupt the newest valid step file or ``best``), starts the run when it holds
none, and refuses (one line naming the key) when the checkpoint was written by a run with
settings that a resume may not change - the same rule as ``--resume RUN``
(:func:`alexnet.train.config.check_resumable`). This follows Caffe's snapshots (``snapshot`` every N
iterations, ``--snapshot`` to continue) and Lightning's periodic checkpoints with
``save_top_k`` pruning; the paper itself says nothing about checkpointing.

Periodic checkpoints. With ``train.checkpoint_every_steps`` N or
``train.checkpoint_every_minutes`` M, ``last.safetensors`` is also written every N
optimiser steps / M minutes mid-epoch, and every checkpoint (periodic or at an epoch
end) is kept as ``step-<STEP>.safetensors`` beside it, the newest ``train.keep_checkpoints``
of them (older ones are deleted; ``last`` and ``best`` always stay). When ``last`` is
missing or unreadable (truncated, checksum mismatch), a resume falls back to the newest
valid one of those and ``best``, and says so in one line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from .. import checkpoint as ckpt_io
from ..errors import UserError
from . import rundir
from .config import check_resumable
from .rundir import BEST, LAST

STEP_FILE = re.compile(r"^step-(\d+)\.safetensors$")     # rundir.STEP_GLOB, with the step read out


def step_path(run_dir: Path, step: int) -> Path:
    return run_dir / f"step-{step:08d}.safetensors"


def step_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """The kept ``step-*.safetensors`` of ``run_dir``, newest (highest step) first."""
    found = []
    for entry in run_dir.glob(rundir.STEP_GLOB):
        match = STEP_FILE.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry))
    return sorted(found, reverse=True)


def copy_atomically(src: Path, dst: Path) -> None:
    """dst <- src: copy aside, fsync, rename (a crash leaves the old dst or the new one, never half)."""
    tmp = dst.with_name(dst.name + ".tmp-copy")
    shutil.copyfile(src, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)


def keep_copy(run_dir: Path, step: int, keep: int) -> Path:
    """Keep ``last`` as ``step-<step>`` and delete all but the newest ``keep`` step files (0 = keep all)."""
    path = step_path(run_dir, step)
    copy_atomically(run_dir / LAST, path)
    if keep > 0:
        for _, old in step_checkpoints(run_dir)[keep:]:
            old.unlink(missing_ok=True)
    return path


def choose_checkpoint(run_dir: Path) -> tuple[ckpt_io.Checkpoint, str | None]:
    """The checkpoint a resume continues from, and a one-line note when it is not ``last``.

    ``last`` when it loads and verifies; otherwise the valid one with the highest step among
    the kept step files and ``best``. UserError (naming what is wrong with ``last``) when none is.
    """
    try:
        return ckpt_io.load_checkpoint(run_dir / LAST), None
    except UserError as exc:
        problem = str(exc)
    best = None
    for _, path in step_checkpoints(run_dir):     # newest first: the first valid one is the newest
        try:
            best = ckpt_io.load_checkpoint(path)
            break
        except UserError:
            continue
    if (run_dir / BEST).is_file():
        try:
            candidate = ckpt_io.load_checkpoint(run_dir / BEST)
            if best is None or int(candidate.meta["step"]) > int(best.meta["step"]):
                best = candidate
        except UserError:
            pass
    if best is None:
        raise UserError(f"{problem}; no other valid checkpoint in {run_dir} to resume from")
    note = (f"{problem}; resuming from the newest valid checkpoint instead: {best.path.name} "
            f"(step {best.meta['step']})")
    return best, note


def auto_resume(run_dir: Path, config: dict) -> bool:
    """For ``run.resume = "auto"``: True when ``run_dir`` holds a checkpoint of this run (resume it),
    False when it holds none (start it); UserError (one line) when it holds another run's, or
    checkpoints none of which is valid. Reads only.

    Any checkpoint counts - ``last``, ``best`` or a step file - so a folder whose ``last`` is
    missing (deleted, lost with a node's disk) resumes from the newest valid one that is left
    (:func:`choose_checkpoint`, which says so) and is never started over: a fresh start would
    empty its logs and mix its step files with the old run's. The same run means the rule of
    ``--resume RUN`` (:func:`alexnet.train.config.check_resumable`): the configuration saved in
    that checkpoint, changed only in :data:`~alexnet.train.config.RESUME_CHANGEABLE`."""
    if not rundir.holds_checkpoint(run_dir):
        return False
    try:
        saved = choose_checkpoint(run_dir)[0].meta.get("config")
    except UserError as exc:
        raise UserError(f"{run_dir}: holds checkpoints but none is valid ({exc}); --resume auto will not start "
                        f"the run over them: move the folder aside or choose another --run.name") from None
    if saved is None and (run_dir / "config.json").is_file():   # written by an older version: the folder's config
        try:
            saved = json.loads((run_dir / "config.json").read_text())
        except ValueError:
            saved = None
    if saved is not None:
        check_resumable(saved, config, run_dir,
                        remedy="--resume auto continues only the same run: choose another --run.name for a new one")
    return True
