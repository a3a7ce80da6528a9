"""The run folders under a folder, as a table; what differs between runs; their curves in one plot.

    runs = find_runs("runs")                 # a RunInfo for every run folder below, by name
    print(format_runs_table(runs))
    differing_settings(runs)                 # {"optim.lr": ["0.01", "0.02"], ...}
    plot_comparison(runs, "compare.png")

Everything is read from what a run leaves in its folder (alexnet.train.rundir): a run folder
is a folder with ``config.json``; its model and data come from there, its epochs and best
validation error from ``epochs.jsonl``, and its status from the lock, ``summary.json`` and
the header of ``last.safetensors`` (alexnet.checkpoint.read_meta, no tensor read):

* ``running``: a process holds the folder's lock (alexnet.train.rundir.RunFolder.lock_holder);
* ``finished``: ``summary.json`` says the run ended (all its epochs, or ``train.max_steps``)
  and no later checkpoint was written since (a resume that went on would have);
* ``interrupted``: stopped by a signal (SIGINT, SIGTERM): the trainer saved a checkpoint and wrote
  ``summary.json`` with that status (``--resume`` continues it);
* ``crashed``: none of these - the process died (a kill, an error, a lost node) before it could
  finish or save a stop; ``--resume`` continues it from its last checkpoint, if it wrote one.

"Best" is the epoch of lowest validation top-1 error - the one ``best.safetensors`` holds -
with that epoch's top-5 error.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import checkpoint as ckpt_io
from .. import report
from ..errors import UserError
from ..options import output_file
from . import rundir

MAX_DEPTH = 4        # how deep below DIR run folders are looked for (experiments nest theirs)
STATUSES = ("running", "finished", "interrupted", "crashed")


@dataclass
class RunInfo:
    """One run folder as the table shows it."""

    path: Path
    name: str
    model: str
    data: str
    epochs_done: int
    epochs: int
    best_top1_err: float | None
    best_top5_err: float | None
    best_epoch: int | None
    status: str
    holder: str | None = None           # who holds the lock while it runs
    config: dict = field(default_factory=dict, repr=False)
    records: list[dict] = field(default_factory=list, repr=False)    # epochs.jsonl

    def to_dict(self) -> dict:
        return {"path": str(self.path), "name": self.name, "model": self.model, "data": self.data,
                "epochs_done": self.epochs_done, "epochs": self.epochs, "best_val_top1_err": self.best_top1_err,
                "best_val_top5_err": self.best_top5_err, "best_epoch": self.best_epoch, "status": self.status,
                "holder": self.holder}


def is_run_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def run_status(run_dir: Path) -> tuple[str, str | None]:
    """(status, lock holder) of a run folder: running, finished, interrupted or crashed (module docstring)."""
    holder = rundir.RunFolder(run_dir).lock_holder()
    if holder is not None:
        return "running", holder
    meta = ckpt_io.read_meta(run_dir / rundir.LAST)
    summary = _read_json(run_dir / "summary.json")
    ended_at = summary.get("steps", summary.get("step")) or 0     # a finished run's steps, a stopped one's step
    current = meta is None or (meta.get("step") or 0) <= ended_at      # no checkpoint written after it
    if summary.get("status") in ("finished", "max_steps") and current:
        return "finished", None
    if summary.get("status") == "interrupted" and current or meta is not None and meta.get("status") == "interrupted":
        return "interrupted", None
    return "crashed", None


def best_epoch(records: list[dict]) -> tuple[float | None, float | None, int | None]:
    """(top-1, top-5, epoch) of the epoch with the lowest validation top-1 error (the first such)."""
    validated = [r for r in records if r.get("val_top1_err") is not None]
    if not validated:
        return None, None, None
    best = min(validated, key=lambda r: r["val_top1_err"])
    return best["val_top1_err"], best.get("val_top5_err"), best.get("epoch")


def _data_name(config: dict) -> str:
    data = config.get("data") or {}
    for value in (data.get("cache"), data.get("name"), data.get("source")):    # the cache is what it read
        if value:
            return os.path.basename(str(value).rstrip("/")) or str(value)
    return config.get("preset") or "-"


def read_run(run_dir: str | os.PathLike, name: str | None = None) -> RunInfo:
    """The table's row for one run folder (UserError when it is not one)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    if not is_run_folder(run_dir):
        raise UserError(f"{run_dir}: not a run folder (no config.json)")
    config = _read_json(run_dir / "config.json")
    records = report.read_jsonl(run_dir / "epochs.jsonl")
    top1, top5, epoch = best_epoch(records)
    status, holder = run_status(run_dir)
    return RunInfo(path=run_dir, name=name or run_dir.name, model=(config.get("model") or {}).get("name", "-"),
                   data=_data_name(config), epochs_done=max((int(r.get("epoch", 0)) for r in records), default=0),
                   epochs=int((config.get("train") or {}).get("epochs", 0)), best_top1_err=top1, best_top5_err=top5,
                   best_epoch=epoch, status=status, holder=holder, config=config, records=records)


def find_runs(root: str | os.PathLike) -> list[RunInfo]:
    """Every run folder at or below ``root`` (at most :data:`MAX_DEPTH` levels), named by its path
    relative to ``root``, sorted by name. UserError when ``root`` is not a folder."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder of runs")
    if is_run_folder(root):
        return [read_run(root)]
    found: list[RunInfo] = []

    def walk(folder: Path, depth: int) -> None:
        try:
            entries = sorted((e for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)
        except OSError:
            return       # unreadable: nothing to list there
        for entry in entries:
            path = Path(entry.path)
            if is_run_folder(path):
                found.append(read_run(path, str(path.relative_to(root))))
            elif depth < MAX_DEPTH:
                walk(path, depth + 1)

    walk(root, 1)
    return sorted(found, key=lambda r: r.name)


def resolve_runs(names: list[str], root: str | os.PathLike) -> list[RunInfo]:
    """Runs given as folders, or as names of folders under ``root``."""
    runs = []
    for name in names:
        path = Path(name)
        if not path.is_dir() and (Path(root) / name).is_dir():
            path = Path(root) / name
        runs.append(read_run(path, name))
    return runs


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def format_runs_table(runs: list[RunInfo]) -> str:
    """A plain-text table: name, model, data, epochs done/total, best val top-1/top-5 (epoch), status."""
    header = ("run", "model", "data", "epochs", "best val top-1", "top-5", "at epoch", "status")
    rows = [(r.name, r.model, r.data, f"{r.epochs_done}/{r.epochs}", _percent(r.best_top1_err),
             _percent(r.best_top5_err), "-" if r.best_epoch is None else str(r.best_epoch), r.status) for r in runs]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    right = {3, 4, 5, 6}       # numbers line up on the right

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def settings_as_text(config: dict, prefix: str = "") -> dict[str, str]:
    """``{"optim": {"lr": 0.01}}`` -> ``{"optim.lr": "0.01"}`` (values as JSON text, comparable)."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(settings_as_text(value, name + "."))
        else:
            flat[name] = json.dumps(value) if not isinstance(value, str) else value
    return flat


def differing_settings(runs: list[RunInfo]) -> dict[str, list[str]]:
    """The settings whose values are not the same in every run (``-`` where a run lacks the key),
    in config order; the run's own name (run.name) is left out."""
    flats = [settings_as_text(r.config) for r in runs]
    keys: list[str] = []
    for flat in flats:
        keys += [k for k in flat if k not in keys]
    differ = {}
    for key in keys:
        if key == "run.name":
            continue
        values = [flat.get(key, "-") for flat in flats]
        if len(set(values)) > 1:
            differ[key] = values
    return differ


def format_differences(runs: list[RunInfo], differ: dict[str, list[str]]) -> str:
    if not differ:
        return "the runs' settings are the same (apart from their names)"
    header = ["setting", *[r.name for r in runs]]
    rows = [[key, *values] for key, values in differ.items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in [header, ["-" * w for w in widths], *rows])


def _series(records: list[dict], key: str) -> tuple[list, list]:
    """(epochs, values) of the epoch records that have ``key``."""
    kept = [r for r in records if r.get(key) is not None]
    return [r["epoch"] for r in kept], [r[key] for r in kept]


def plot_comparison(runs: list[RunInfo], out: str | os.PathLike) -> Path:
    """One PNG, three panels against epochs, one colour per run: train loss, validation top-1 error
    (solid) and top-5 (dotted), and the learning rate. Written atomically; UserError naming ``out``
    when it cannot be."""
    import matplotlib   # lazy: matplotlib costs ~0.5 s of start-up that the table alone never pays
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = output_file(out)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for i, run in enumerate(runs):
        colour = f"C{i % 10}"
        axes[0].plot(*_series(run.records, "train_loss"), color=colour, marker="o", ms=3, label=run.name)
        xs, ys = _series(run.records, "val_top1_err")
        axes[1].plot(xs, [100 * y for y in ys], color=colour, marker="o", ms=3, label=f"{run.name} top-1")
        xs, ys = _series(run.records, "val_top5_err")
        axes[1].plot(xs, [100 * y for y in ys], ":", color=colour, label=f"{run.name} top-5")
        axes[2].plot(*_series(run.records, "lr"), color=colour, marker="o", ms=3, label=run.name)
    axes[0].set(xlabel="epoch", ylabel="cross-entropy loss", title="train loss")
    axes[1].set(xlabel="epoch", ylabel="error (%)", title="validation top-1 (solid) / top-5 (dotted)")
    axes[2].set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    rates = [np.asarray(line.get_ydata(), dtype=float) for line in axes[2].get_lines()]
    if rates and all(r.size == 0 or r.min() > 0 for r in rates) and any(r.size for r in rates):
        axes[2].set_yscale("log")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)
    fig.suptitle("runs compared: " + ", ".join(r.name for r in runs))
    fig.tight_layout()
    return report.save_figure(fig, out)
