"""The run folder: every file in it is named, written, kept and found here, and nowhere else.

    RUN/.lock                 held while a run trains in RUN (a second run refuses to start)
    RUN/config.toml           the resolved configuration (config.json: the same as JSON)
    RUN/last.safetensors      written at every epoch end, on a graceful stop and every periodic checkpoint
    RUN/best.safetensors      a copy of last at each new best validation error
    RUN/step-<STEP>.safetensors   periodic checkpoints: the newest train.keep_checkpoints of them
    RUN/steps.jsonl, RUN/epochs.jsonl, RUN/samples-rank<R>.jsonl   the logs (:class:`RunLogs`)
    RUN/epochs.csv, curves.png, summary.json, report.md   written when the run ends
                          (summary.json alone, with status "interrupted", when a signal stops it)

    folder = RunFolder(run_dir)
    folder.check_available(resuming)      # before any work: in use? the right state?
    lock = folder.open(config, resuming)  # create, lock, write the config (rank 0)
    folder.save_checkpoint(tensors..., step=s, periodic=True)
    ck, note = folder.choose_checkpoint() # what a resume continues from

A fresh run needs a folder without a checkpoint (``last``, ``best`` or a periodic step
file; else: resume it, from the newest valid one); it starts the logs afresh even when
an earlier, checkpoint-less attempt left some behind. A resumed run keeps only the log
records up to its checkpoint and writes the rest again.

Restarts. Cluster schedulers and ``torchrun --max-restarts N`` restart a failed job with
the same command. With a fixed ``run.name`` and ``run.resume = "auto"`` that command
continues the run (:meth:`RunFolder.auto_resume`): it resumes when RUN holds a checkpoint
(``last``, or when that is missing or corrupt the newest valid step file or ``best``),
starts the run when it holds none, and refuses (one line naming the key) a checkpoint
written with settings a resume may not change (:func:`alexnet.train.config.check_resumable`).
This follows Caffe's snapshots and Lightning's periodic checkpoints with ``save_top_k``
pruning; the paper says nothing about checkpointing.

Periodic checkpoints. With ``train.checkpoint_every_steps`` N or
``train.checkpoint_every_minutes`` M, ``last`` is also written every N optimiser steps / M
minutes mid-epoch, and every checkpoint (periodic or at an epoch end) is kept as
``step-<STEP>.safetensors`` beside it, the newest ``train.keep_checkpoints`` of them (older
ones are deleted; ``last`` and ``best`` always stay). When ``last`` is missing or unreadable
(truncated, checksum mismatch), a resume falls back to the newest valid one of those and
``best``, and says so in one line.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Callable

from .. import checkpoint as ckpt_io
from .. import report
from ..console import info
from ..errors import UserError
from .. import files
from ..files import FileLock, atomic_copy, atomic_write
from . import distributed as dist_utils
from .config import Config, check_resumable, to_toml

LAST, BEST = "last.safetensors", "best.safetensors"
STEP_FILE = re.compile(r"^step-(\d+)\.safetensors$")
LOGS = ("steps.jsonl", "epochs.jsonl")


def run_folder(config: Config, ctx: dist_utils.DistContext) -> Path:
    """RUN.OUT/RUN.NAME, the name defaulting to <preset or data>-<yyyymmdd-hhmmss> (Config.label); every
    rank gets rank 0's."""
    name = config.run.name or f"{config.label()}-{time.strftime('%Y%m%d-%H%M%S')}"
    name = dist_utils.broadcast_object(name, ctx)
    return Path(config.run.out).expanduser() / name


def guarded(path: Path, write):
    """``write()``, with a failing write (full disk, quota, read-only folder) as one line naming ``path``."""
    try:
        return write()
    except (OSError, UserError) as exc:     # UserError: an atomic write (alexnet.files) said which file
        kept = f"; {LAST} is intact" if (path.parent / LAST).is_file() else ""
        said = str(exc) if isinstance(exc, UserError) else f"{path}: cannot write ({exc.strerror or exc})"
        raise UserError(f"{said}{kept}") from None


class RunLock:
    """RUN/.lock held (alexnet.files.FileLock: a POSIX record lock the kernel drops when the process
    dies, not inherited by DataLoader workers): a second run on the same folder refuses to start."""

    def __init__(self, run_dir: Path):
        self._lock = FileLock(run_dir / ".lock")
        holder = self._lock.acquire()
        if holder is not None:
            raise UserError(f"{run_dir}: run folder is in use by {holder}; wait for it or choose another --run.name")

    def release(self) -> None:
        self._lock.release()


class RunFolder:
    """One run folder: its state, lock, configuration, checkpoints and outputs (rank 0 writes)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def last(self) -> Path:
        return self.path / LAST

    def step_path(self, step: int) -> Path:
        return self.path / f"step-{step:08d}.safetensors"

    # -- state ----------------------------------------------------------------------------------
    def lock_holder(self) -> str | None:
        """Who holds the folder's lock (``process PID on HOST``) while a run trains in it, else None.
        A probe for another process than the run's own (alexnet.files.lock_holder)."""
        return files.lock_holder(self.path / ".lock")

    def step_checkpoints(self) -> list[tuple[int, Path]]:
        """The kept ``step-*.safetensors``, newest (highest step) first."""
        found = [(int(m.group(1)), p) for p in self.path.glob("step-*.safetensors") if (m := STEP_FILE.match(p.name))]
        return sorted(found, reverse=True)

    def holds_checkpoint(self) -> bool:
        """Whether the folder holds a checkpoint of a run: ``last``, ``best`` or a step file. Any of them
        makes it a run to resume (from the newest valid one), never a folder to start afresh in."""
        return self.last.exists() or (self.path / BEST).exists() or bool(self.step_checkpoints())

    def _check_state(self, resuming: bool) -> None:
        if not resuming and self.holds_checkpoint():
            raise UserError(f"{self.path}: already holds a run; continue it with --resume {self.path} "
                            f"or choose another --run.name")
        if resuming and not self.holds_checkpoint():
            raise UserError(f"{self.path}: no checkpoint to resume from (no {LAST}, {BEST} or step-*.safetensors)")

    def check_available(self, resuming: bool) -> None:
        """Refuse at once, creating nothing, a folder another process holds, or one whose state does
        not suit the run (a fresh run over a finished one, a resume without a checkpoint). The same
        checks run again, under the lock, in :meth:`open`."""
        holder = self.lock_holder()
        if holder is not None:
            raise UserError(f"{self.path}: run folder is in use by {holder}; wait for it or choose another --run.name")
        self._check_state(resuming)

    def open(self, config: Config, resuming: bool) -> RunLock:
        """Create and lock the folder, check it suits a fresh or resumed run (rank 0 only).

        A fresh run empties logs left by an attempt that never wrote a checkpoint and writes its
        config. A resumed run's config.toml is written back only once the checkpoint has been
        restored (:meth:`write_config`): a resume that fails leaves the folder as it was."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = RunLock(self.path)
        try:
            self._check_state(resuming)
            if not resuming:
                for name in LOGS:
                    (self.path / name).unlink(missing_ok=True)
                for stale in self.path.glob("samples-rank*.jsonl"):
                    stale.unlink()
                self.write_config(config)
        except BaseException:
            lock.release()
            raise
        return lock

    def write_config(self, config: Config) -> None:
        """RUN/config.toml and config.json: the resolved configuration (atomically, so a failed write keeps the old one)."""
        toml = self.path / "config.toml"
        guarded(toml, lambda: atomic_write(toml, to_toml(config), what="the run's configuration"))
        guarded(self.path / "config.json", lambda: report.write_json(self.path / "config.json", config.to_dict()))

    # -- checkpoints ------------------------------------------------------------------------------
    def save_checkpoint(self, *, step: int, keep_copy: bool, keep: int, **content) -> None:
        """Write ``last`` (``content``: :func:`alexnet.checkpoint.save_checkpoint`'s arguments); with
        ``keep_copy``, keep it as ``step-<step>`` too and delete all but the newest ``keep`` step files
        (0 = keep all)."""
        ckpt_io.save_checkpoint(self.last, **content)
        if keep_copy:
            atomic_copy(self.last, self.step_path(step), what="checkpoint")
            if keep > 0:
                for _, old in self.step_checkpoints()[keep:]:
                    old.unlink(missing_ok=True)

    def keep_best(self) -> None:
        """best <- last, atomically."""
        atomic_copy(self.last, self.path / BEST, what="checkpoint")

    def best_holds(self, epoch: int) -> bool:
        """Whether best.safetensors is the checkpoint of ``epoch``."""
        try:
            return ckpt_io.load_checkpoint(self.path / BEST).meta.get("epoch") == epoch
        except UserError:
            return False

    def choose_checkpoint(self) -> tuple[ckpt_io.Checkpoint, str | None]:
        """The checkpoint a resume continues from, and a one-line note when it is not ``last``.

        ``last`` when it loads and verifies; otherwise the valid one with the highest step among
        the kept step files and ``best``. UserError (naming what is wrong with ``last``) when none is.
        """
        try:
            return ckpt_io.load_checkpoint(self.last), None
        except UserError as exc:
            problem = str(exc)
        best = None
        for _, path in self.step_checkpoints():     # newest first: the first valid one is the newest
            try:
                best = ckpt_io.load_checkpoint(path)
                break
            except UserError:
                continue
        if (self.path / BEST).is_file():
            try:
                candidate = ckpt_io.load_checkpoint(self.path / BEST)
                if best is None or int(candidate.meta["step"]) > int(best.meta["step"]):
                    best = candidate
            except UserError:
                pass
        if best is None:
            raise UserError(f"{problem}; no other valid checkpoint in {self.path} to resume from")
        return best, (f"{problem}; resuming from the newest valid checkpoint instead: {best.path.name} "
                      f"(step {best.meta['step']})")

    def auto_resume(self, config: dict) -> bool:
        """For ``run.resume = "auto"``: True when the folder holds a checkpoint of this run (resume it),
        False when it holds none (start it); UserError (one line) when it holds another run's, or
        checkpoints none of which is valid. Reads only.

        Any checkpoint counts - ``last``, ``best`` or a step file - so a folder whose ``last`` is
        missing (deleted, lost with a node's disk) resumes from the newest valid one that is left
        and is never started over: a fresh start would empty its logs and mix its step files with
        the old run's. The same run means the rule of ``--resume RUN``
        (:func:`alexnet.train.config.check_resumable`)."""
        if not self.holds_checkpoint():
            return False
        try:
            saved = self.choose_checkpoint()[0].meta.get("config")
        except UserError as exc:
            raise UserError(f"{self.path}: holds checkpoints but none is valid ({exc}); --resume auto will not "
                            f"start the run over them: move the folder aside or choose another --run.name") from None
        if saved is None and (self.path / "config.json").is_file():   # an older version's folder: its config
            try:
                saved = json.loads((self.path / "config.json").read_text())
            except ValueError:
                saved = None
        if saved is not None:
            check_resumable(saved, config, self.path,
                            remedy="--resume auto continues only the same run: choose another --run.name for a new one")
        return True

    def truncate_logs(self, step: int, epoch: int) -> None:
        """Drop log records written after the checkpoint at ``step`` / ``epoch``: the resumed run writes them again."""
        steps, epochs = self.path / "steps.jsonl", self.path / "epochs.jsonl"
        guarded(steps, lambda: report.truncate_jsonl(steps, lambda r: r.get("step", 0) <= step))
        guarded(epochs, lambda: report.truncate_jsonl(epochs, lambda r: r.get("epoch", 0) <= epoch))
        for log in self.path.glob("samples-rank*.jsonl"):
            report.truncate_jsonl(log, lambda r: r.get("step", 0) <= step)

    # -- the end ---------------------------------------------------------------------------------------
    def epoch_records(self) -> list[dict]:
        """epochs.jsonl as records (one per finished epoch)."""
        return report.read_jsonl(self.path / "epochs.jsonl")

    def write_summary(self, summary: dict) -> None:
        """summary.json alone (a run a signal stopped: how ``alexnet runs`` tells it from one that died)."""
        guarded(self.path / "summary.json", lambda: report.write_json(self.path / "summary.json", summary))

    def write_outputs(self, summary: dict, epochs: list[dict], plots: bool, title: str) -> None:
        """epochs.csv, curves.png, summary.json, report.md, and where they are. A write that fails is
        one line naming the file (the checkpoints are written by then)."""
        run_dir = self.path
        guarded(run_dir / "epochs.csv", lambda: report.write_csv(run_dir / "epochs.csv", epochs))
        if plots and epochs:
            guarded(run_dir / "curves.png", lambda: report.plot_curves(
                epochs, run_dir / "curves.png", title=title, steps=report.read_jsonl(run_dir / "steps.jsonl")))
        guarded(run_dir / "summary.json", lambda: report.write_json(run_dir / "summary.json", summary))
        guarded(run_dir / "report.md", lambda: report.write_report(run_dir, summary, epochs))
        test = summary.get("test")
        if test:
            info(f"test ({test['views']}): top-1 error {100 * test['top1_err']:.2f}% "
                 f"(accuracy {100 * test['accuracy']:.2f}%), top-5 error {100 * test['top5_err']:.2f}%")
        info(f"done in {summary['wall_time_s'] / 60:.1f} min; report: {run_dir / 'report.md'}; "
             f"plots: {run_dir / 'curves.png'}; checkpoints: {self.last}")


class RunLogs:
    """The run's records, emitted in one place: ``steps.jsonl`` and ``epochs.jsonl`` (rank 0),
    ``samples-rank<R>.jsonl`` (every rank, with ``train.log_samples``), and every subscriber.

        logs.subscribe(lambda kind, record: ...)     # kind: "step" or "epoch" (rank 0), e.g. a TensorBoard writer

    A write that fails (full disk, quota) is one line naming the file."""

    def __init__(self, folder: RunFolder, rank: int, samples: bool):
        self._files: dict[str, report.JsonlWriter] = {}
        if rank == 0:
            for kind in ("step", "epoch"):
                path = folder.path / f"{kind}s.jsonl"
                self._files[kind] = guarded(path, lambda path=path: report.JsonlWriter(path))
        if samples:
            path = folder.path / f"samples-rank{rank}.jsonl"
            self._files["sample"] = guarded(path, lambda: report.JsonlWriter(path))
        self._subscribers: list[Callable[[str, dict], None]] = []
        self._on_close: list[Callable[[], None]] = []

    def subscribe(self, fn: Callable[[str, dict], None], close: Callable[[], None] | None = None) -> None:
        """``fn(kind, record)`` for every step and epoch record; ``close()`` when the logs close."""
        self._subscribers.append(fn)
        if close is not None:
            self._on_close.append(close)

    def write(self, kind: str, record: dict) -> None:
        """One record of ``kind`` ("step", "epoch" or "sample"), to its file and the subscribers."""
        writer = self._files.get(kind)
        if writer is not None:
            try:
                guarded(writer.path, lambda: writer.write(record))
            except UserError:
                self.close()           # drop what could not be written: closing again later must not raise
                raise
        if kind != "sample" and writer is not None:
            for fn in self._subscribers:
                fn(kind, record)

    def close(self) -> None:
        for writer in self._files.values():
            try:
                writer.close()
            except OSError:
                pass                   # reported by write(); the file is closed all the same
        for close in self._on_close:
            close()
        self._on_close = []

