"""What a restart finds in a run folder: periodic checkpoints, the newest valid one, ``--resume auto``.

Cluster schedulers and ``torchrun --max-restarts N`` restart a failed job with the same
command. With a fixed ``run.name`` and ``run.resume = "auto"`` (``--resume auto``) that
command continues the run: it resumes when RUN holds ``last.safetensors``, starts the
run when it holds none, and refuses (one line) when the checkpoint was written by a
run with another configuration. This follows Caffe's snapshots (``snapshot`` every N
iterations, ``--snapshot`` to continue) and Lightning's periodic checkpoints with
``save_top_k`` pruning; the paper itself says nothing about checkpointing.

Periodic checkpoints. With ``train.checkpoint_every_steps`` N or
``train.checkpoint_every_minutes`` M, ``last.safetensors`` is also written every N
optimiser steps / M minutes mid-epoch, and every checkpoint (periodic or at an epoch
end) is kept as ``step-<STEP>.safetensors`` beside it, the newest ``train.keep_checkpoints``
of them (older ones are deleted; ``last`` and ``best`` always stay). When ``last`` is
unreadable (truncated, checksum mismatch), a resume falls back to the newest valid one
of those and ``best``, and says so in one line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from .. import checkpoint as ckpt_io
from ..errors import UserError
from .rundir import BEST, LAST

STEP_FILE = re.compile(r"^step-(\d+)\.safetensors$")
# Settings that change how a run is watched or where it runs, never what it computes: a restart
# may differ in these from the run it continues.
HARMLESS = {("run", "progress"), ("run", "plots"), ("run", "resume"), ("run", "out"), ("train", "threads"),
            ("train", "dist_timeout"), ("data", "workers"), ("train", "device")}


def step_path(run_dir: Path, step: int) -> Path:
    return run_dir / f"step-{step:08d}.safetensors"


def step_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """The kept ``step-*.safetensors`` of ``run_dir``, newest (highest step) first."""
    found = []
    for entry in run_dir.iterdir() if run_dir.is_dir() else ():
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


def _differences(saved: dict, current: dict, prefix: tuple = ()) -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        where = (*prefix, key)
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and not (len(where) == 2 and where[-1] == "kwargs"):
            out += _differences(a, b, where)
        elif a != b and where not in HARMLESS:
            out.append(f"{'.'.join(where)} = {a!r} there, {b!r} here")
    return out


def auto_resume(run_dir: Path, config: dict) -> bool:
    """For ``run.resume = "auto"``: True when ``run_dir`` holds a checkpoint of this run (resume it),
    False when it holds none (start it); UserError when it holds another run's."""
    if not (run_dir / LAST).exists():
        return False
    config_file = run_dir / "config.json"
    try:
        saved = ckpt_io.load_checkpoint(run_dir / LAST).meta.get("config")
    except UserError:
        saved = None          # a corrupt last: compare with the config the run folder was started with
    if saved is None and config_file.is_file():
        try:
            saved = json.loads(config_file.read_text())
        except ValueError:
            saved = None
    if saved is None:
        return True
    differences = _differences({k: v for k, v in saved.items() if k != "preset"},
                               {k: v for k, v in config.items() if k != "preset"})
    if differences:
        raise UserError(f"{run_dir}: holds a run with another configuration ({differences[0]}"
                        f"{f' and {len(differences) - 1} more' if len(differences) > 1 else ''}); "
                        f"--resume auto continues only the same run: choose another --run.name")
    return True
