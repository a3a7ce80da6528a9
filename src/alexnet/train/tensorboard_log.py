"""TensorBoard event files of a training run: its logged records as scalars, conv1 as an image.

    note = attach(logs, run_dir, config, model, start_step, resuming)

:func:`attach` subscribes to the run's logs (alexnet.train.rundir.RunLogs, the one place
records are emitted) so that every record written to ``steps.jsonl`` or ``epochs.jsonl``
also goes, as it is, to an event file in the run folder, where ``tensorboard --logdir RUNS``
finds it (one run per folder):

* ``step/<key>`` for each number of a ``steps.jsonl`` record (loss, window_loss, lr,
  img_per_s), at the record's optimiser step;
* ``epoch/<key>`` for each number of an ``epochs.jsonl`` record (train_loss, train_top1_err,
  val_loss, val_top1_err, val_top5_err, lr, img_per_s, times), at the step the epoch ended -
  one x axis for both, so a resume can cut both back at once;
* ``conv1/kernels``: the first layer's kernels as one image (alexnet.models.kernels, the grid
  of Figure 3) at the start of a fresh run, every :func:`kernel_every` epochs and after the
  last epoch.

The values are the JSONL log's, so the two never disagree (tests/test_viewer_tensorboard.py
reads the events back with TensorBoard's own reader). A resumed run opens its event file
with ``purge_step`` = the checkpoint's step + 1: TensorBoard discards what an earlier
attempt logged after that step (the JSONL logs are cut back to the same step), so a crash
and a resume never show a step twice. A fresh run removes event files an attempt without
a checkpoint left behind, as it does its logs.

TensorBoard is a view: it is on by default (``run.tensorboard = true``) where the
``tensorboard`` package is installed (the README's set-up installs it) and says in one line
where it is not; an event write that fails turns it off for the rest of the run with one
warning, never ending the run. Only rank 0 writes (the trainer calls :func:`attach` there).
Each record is flushed as it is written, as the JSONL logs are, so a killed run keeps
what it logged.
"""

from __future__ import annotations

import threading
from pathlib import Path

from torch import nn

from ..console import first_line, info, warn
from ..models.kernels import kernel_grid
from .config import Config

EVENT_GLOB = "events.out.tfevents.*"


def kernel_every(epochs: int) -> int:
    """Every how many epochs conv1 is drawn: about ten images over a run (and one after the last epoch)."""
    return max(1, round(epochs / 10))


def _numbers(record: dict):
    """(key, value) for every finite number of a record but its x axis (step, epoch); JSONL has null
    where a value was not finite, so TensorBoard gets nothing there either."""
    for key, value in record.items():
        if key in ("step", "epoch") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if value == value and abs(value) != float("inf"):
            yield key, value


def _quiet_writer_threads() -> None:
    """TensorBoard writes from a thread of its own; a write that fails there (a full disk) is kept for
    the next write from the run, which reports it in one line (:meth:`TensorBoardLog._write`), and also
    re-raised in the thread, which Python prints as a traceback. This drops that second report, for
    TensorBoard's threads only; every other thread's exceptions reach the hook as before."""
    previous = threading.excepthook
    if getattr(previous, "tensorboard_threads_quiet", False):
        return

    def hook(args):
        if args.thread is not None and type(args.thread).__module__.startswith("tensorboard."):
            return
        previous(args)

    hook.tensorboard_threads_quiet = True
    threading.excepthook = hook


class TensorBoardLog:
    """One run's event file: :meth:`on_step` and :meth:`on_epoch` take the JSONL records as written."""

    def __init__(self, writer, model: nn.Module, epochs: int, run_dir: Path):
        self.writer, self.model, self.epochs, self.run_dir = writer, model, epochs, run_dir

    @classmethod
    def open(cls, run_dir: Path, config: Config, model: nn.Module, start_step: int, resuming: bool,
             quiet: bool = False) -> "TensorBoardLog | None":
        """The run's event file, or None (turned off, or the tensorboard package missing: one line)."""
        if not config.run.tensorboard:
            return None
        try:
            # Lazy: importing TensorBoard costs about a second that runs without events never pay.
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            info("TensorBoard events off: the tensorboard package is not installed "
                 "(pip install tensorboard; --run.tensorboard false silences this line)", quiet)
            return None
        if not resuming:
            for stale in run_dir.glob(EVENT_GLOB):     # left by an attempt that wrote no checkpoint
                stale.unlink()
        _quiet_writer_threads()
        try:
            writer = SummaryWriter(log_dir=str(run_dir), purge_step=start_step + 1 if resuming else None)
        except Exception as exc:     # a view of the run: no reason to stop it
            warn(f"{run_dir}: cannot write TensorBoard events ({first_line(exc)}); going on without them")
            return None
        log = cls(writer, model, config.train.epochs, run_dir)
        if not resuming:
            log._kernels(0)
        return log

    def on_step(self, record: dict) -> None:
        self._write(lambda w: [w.add_scalar(f"step/{k}", v, record["step"]) for k, v in _numbers(record)])

    def on_epoch(self, record: dict) -> None:
        self._write(lambda w: [w.add_scalar(f"epoch/{k}", v, record["step"]) for k, v in _numbers(record)])
        epoch = record["epoch"]
        if epoch % kernel_every(self.epochs) == 0 or epoch >= self.epochs:
            self._kernels(record["step"])

    def _kernels(self, step: int) -> None:
        image = kernel_grid(self.model)
        self._write(lambda w: w.add_image("conv1/kernels", image, step, dataformats="HWC" if image.ndim == 3 else "HW"))

    def _write(self, add) -> None:
        if self.writer is None:
            return
        try:
            add(self.writer)
            self.writer.flush()
        except Exception as exc:     # a full disk, a vanished folder: the run itself goes on
            warn(f"{self.run_dir}: TensorBoard events could not be written ({first_line(exc)}); "
                 f"turned off for the rest of this run")
            self.close()

    def close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            try:
                writer.close()
            except Exception:
                pass         # reported by _write, or nothing left to lose


def attach(logs, run_dir: Path, config: Config, model: nn.Module, start_step: int, resuming: bool,
           quiet: bool = False) -> str:
    """Send the run's step and epoch records (``logs``: alexnet.train.rundir.RunLogs) to TensorBoard
    too; returns the end of the run's first status line saying where the events are and how to open
    them ("" when events are off). ``start_step``: the step the run starts or resumes at."""
    events = TensorBoardLog.open(run_dir, config, model, start_step, resuming, quiet)
    if events is None:
        return ""
    logs.subscribe(lambda kind, record: (events.on_step if kind == "step" else events.on_epoch)(record),
                   close=events.close)
    return f"; TensorBoard events in the run folder (watch: tensorboard --logdir {run_dir.parent})"
