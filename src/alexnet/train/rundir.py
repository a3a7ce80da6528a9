"""The run folder: its name, its lock, its two checkpoints and its logs.

    RUN/.lock             held while a run trains in RUN (a second run refuses to start)
    RUN/config.toml       the resolved configuration (config.json: the same as JSON)
    RUN/last.safetensors  written at every epoch end and on a graceful stop
    RUN/best.safetensors  a copy of last at each new best validation error
    RUN/steps.jsonl, RUN/epochs.jsonl   the logs (alexnet.report)
    RUN/epochs.csv, curves.png, summary.json, report.md   written when the run ends

A fresh run needs a folder without a checkpoint (``last``, ``best`` or a periodic
``step-*.safetensors``; else: resume it, from the newest valid one); it starts
the logs afresh even when an earlier, checkpoint-less attempt left some behind. A
resumed run keeps only the log records up to its checkpoint and writes the rest again.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from pathlib import Path

from .. import checkpoint as ckpt_io
from .. import report
from ..console import info
from ..errors import UserError
from . import distributed as dist_utils
from .config import Config, to_toml

LAST, BEST = "last.safetensors", "best.safetensors"
STEP_GLOB = "step-*.safetensors"      # the periodic checkpoints kept beside last (alexnet.train.restart)
LOGS = ("steps.jsonl", "epochs.jsonl")


class RunLock:
    """An exclusive POSIX lock (``lockf``) on RUN/.lock: a second run on the same folder refuses to start.

    The kernel releases the lock when the process dies, so a killed run never leaves a
    stale lock behind. ``lockf``, not ``flock``: a ``flock`` is shared with forked
    children (DataLoader workers), which outlive a ``kill -9`` of the trainer by seconds
    and kept the folder "in use by" a dead process (tests/reliability/test_crash.py).
    """

    def __init__(self, run_dir: Path):
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


def run_folder(config: Config, ctx: dist_utils.DistContext) -> Path:
    """RUN.OUT/RUN.NAME, the name defaulting to <preset or data>-<yyyymmdd-hhmmss> (Config.label); every
    rank gets rank 0's."""
    name = config.run.name or f"{config.label()}-{time.strftime('%Y%m%d-%H%M%S')}"
    name = dist_utils.broadcast_object(name, ctx)
    return Path(config.run.out).expanduser() / name


def check_available(run_dir: Path, resuming: bool) -> None:
    """Refuse at once, creating nothing, a folder another process holds, or one whose state does
    not suit the run (a fresh run over a finished one, a resume without a checkpoint). The same
    checks run again, under the lock, in :func:`open_run_folder`."""
    lock_path = run_dir / ".lock"
    try:
        f = open(lock_path, "r+") if lock_path.is_file() else None
    except OSError:
        f = None          # unreadable here: open_run_folder says so in one line
    if f is not None:
        with f:
            try:
                fcntl.lockf(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = f.read().strip() or "another process"
                raise UserError(f"{run_dir}: run folder is in use by {holder}; wait for it or choose another "
                                f"--run.name") from None
            fcntl.lockf(f.fileno(), fcntl.LOCK_UN)
    _check_state(run_dir, resuming)


def holds_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint of a run: ``last``, ``best`` or a step file. Any of them
    makes it a run to resume (from the newest valid one), never a folder to start afresh in."""
    return (run_dir / LAST).exists() or (run_dir / BEST).exists() or any(run_dir.glob(STEP_GLOB))


def _check_state(run_dir: Path, resuming: bool) -> None:
    if not resuming and holds_checkpoint(run_dir):
        raise UserError(f"{run_dir}: already holds a run; continue it with --resume {run_dir} "
                        f"or choose another --run.name")
    if resuming and not holds_checkpoint(run_dir):
        raise UserError(f"{run_dir}: no checkpoint to resume from (no {LAST}, {BEST} or {STEP_GLOB})")


def open_run_folder(run_dir: Path, config: Config, resuming: bool) -> RunLock:
    """Create and lock ``run_dir``, check it suits a fresh or resumed run (rank 0 only).

    A fresh run empties logs left by an attempt that never wrote a checkpoint and writes its
    config. A resumed run's config.toml is written back only once the checkpoint has been
    restored (:func:`write_config`): a resume that fails leaves the folder as it was."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir)
    try:
        _check_state(run_dir, resuming)
        if not resuming:
            for name in LOGS:
                (run_dir / name).unlink(missing_ok=True)
            write_config(run_dir, config)
    except BaseException:
        lock.release()
        raise
    return lock


def write_config(run_dir: Path, config: Config) -> None:
    """RUN/config.toml and config.json: the resolved configuration (atomically, so a failed write keeps the old one)."""
    tmp = run_dir / "config.toml.tmp"
    guarded(run_dir / "config.toml", lambda: (tmp.write_text(to_toml(config)), os.replace(tmp, run_dir / "config.toml")))
    guarded(run_dir / "config.json", lambda: report.write_json(run_dir / "config.json", config.to_dict()))


def guarded(path: Path, write):
    """``write()``, with a failing write (full disk, quota, read-only folder) as one line naming ``path``."""
    try:
        return write()
    except OSError as exc:
        path.with_name(path.name + ".tmp").unlink(missing_ok=True)
        kept = f"; {LAST} is intact" if (path.parent / LAST).is_file() else ""
        raise UserError(f"{path}: cannot write ({exc.strerror or exc}){kept}") from None


class RunLog:
    """A JSONL log of the run folder (alexnet.report.JsonlWriter) whose failing write is one line naming it."""

    def __init__(self, path: Path):
        self.path = path
        self._writer = guarded(path, lambda: report.JsonlWriter(path))

    def write(self, record: dict) -> None:
        try:
            guarded(self.path, lambda: self._writer.write(record))
        except UserError:
            self.close()           # drop what could not be written: closing again later must not raise
            raise

    def close(self) -> None:
        try:
            self._writer.close()
        except OSError:
            pass                   # reported by write(); the file is closed all the same


def truncate_logs(run_dir: Path, step: int, epoch: int) -> None:
    """Drop log records written after the checkpoint at ``step`` / ``epoch``: the resumed run writes them again."""
    steps, epochs = run_dir / "steps.jsonl", run_dir / "epochs.jsonl"
    guarded(steps, lambda: report.truncate_jsonl(steps, lambda r: r.get("step", 0) <= step))
    guarded(epochs, lambda: report.truncate_jsonl(epochs, lambda r: r.get("epoch", 0) <= epoch))


def best_holds(run_dir: Path, epoch: int) -> bool:
    """Whether best.safetensors is the checkpoint of ``epoch``."""
    try:
        return ckpt_io.load_checkpoint(run_dir / BEST).meta.get("epoch") == epoch
    except UserError:
        return False


def copy_last_to_best(run_dir: Path) -> None:
    """best <- last, atomically (copy aside, fsync, rename)."""
    tmp = run_dir / (BEST + ".tmp-copy")
    shutil.copyfile(run_dir / LAST, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, run_dir / BEST)


def write_outputs(run_dir: Path, summary: dict, epochs: list[dict], plots: bool, title: str) -> None:
    """The end of a run: epochs.csv, curves.png, summary.json, report.md, and where they are.
    A write that fails is one line naming the file (the checkpoints are written by then)."""
    guarded(run_dir / "epochs.csv", lambda: report.write_csv(run_dir / "epochs.csv", epochs))
    if plots and epochs:
        guarded(run_dir / "curves.png", lambda: report.plot_curves(epochs, run_dir / "curves.png", title=title,
                                                                    steps=report.read_jsonl(run_dir / "steps.jsonl")))
    guarded(run_dir / "summary.json", lambda: report.write_json(run_dir / "summary.json", summary))
    guarded(run_dir / "report.md", lambda: report.write_report(run_dir, summary, epochs))
    test = summary.get("test")
    if test:
        info(f"test ({test['views']}): top-1 error {100 * test['top1_err']:.2f}% "
             f"(accuracy {100 * test['accuracy']:.2f}%), top-5 error {100 * test['top5_err']:.2f}%")
    info(f"done in {summary['wall_time_s'] / 60:.1f} min; report: {run_dir / 'report.md'}; "
         f"plots: {run_dir / 'curves.png'}; checkpoints: {run_dir / LAST}")
