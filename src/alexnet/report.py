"""What a run leaves behind for people and for programs.

In a run folder:

* ``steps.jsonl`` - one JSON object per logged optimiser step (loss, lr, images/s).
* ``epochs.jsonl`` - one per epoch (train loss and error, validation top-1/top-5 error, lr, time).
* ``epochs.csv`` - the same table for spreadsheets.
* ``curves.png`` - loss, top-1/top-5 error and learning rate against epochs.
* ``summary.json`` - the final numbers, the config name, wall time, machine.
* ``report.md`` - a short human report that links the above.

Only rank 0 of a distributed run writes (the training loop guarantees it).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .files import atomic_write, atomic_write_with


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every line stays parseable."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class JsonlWriter:
    """Append-only JSON lines, flushed per record so a killed run keeps everything logged."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(_clean(record)) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue          # a line torn by a hard kill: the records before it stand
    return records


def truncate_jsonl(path: str | os.PathLike, keep: callable) -> None:
    """Rewrite a log keeping only records for which ``keep(record)`` holds (used on resume)."""
    path = Path(path)
    records = [r for r in read_jsonl(path) if keep(r)]
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in records), what="log")


def write_csv(path: str | os.PathLike, records: Iterable[dict], columns: list[str] | None = None) -> None:
    """``records`` as CSV, atomically: ``columns`` in that order (default: every key, in first-seen order)."""
    records = list(records)
    keys: list[str] = list(columns or [])
    for r in records if columns is None else ():
        keys += [k for k in r if k not in keys]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=keys)
    writer.writeheader()
    for r in records:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
    atomic_write(path, text.getvalue(), what="table")


def write_json(path: str | os.PathLike, data: dict) -> None:
    atomic_write(path, json.dumps(_clean(data), indent=2) + "\n", what="JSON file")


def save_figure(fig, out: str | os.PathLike, *, dpi: int = 110, **savefig) -> Path:
    """Write a matplotlib figure to ``out`` (format from its suffix, else PNG) by the atomic
    rule of :mod:`alexnet.files`, and close the figure: the one place a plot reaches the disk."""
    import matplotlib.pyplot as plt   # lazy: see plot_curves
    out = Path(out)
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in fig.canvas.get_supported_filetypes():
        fmt = "png"                   # what the name says otherwise; matplotlib would refuse the name
    try:
        atomic_write_with(out, lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt, **savefig), what="the plot")
    finally:
        plt.close(fig)
    return out


def plot_curves(epochs: list[dict], out: str | os.PathLike, title: str = "", steps: list[dict] | None = None) -> Path:
    """Three panels against epochs: loss (train, val), top-1/top-5 error (train, val), lr (log).

    With ``steps`` (the per-step records) the loss panel also shows the per-step loss and
    the lr panel the lr at every logged step (schedules that change within an epoch)."""
    import matplotlib   # lazy: matplotlib costs ~0.5 s of start-up that runs without plots never pay
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key):
        xs = [r["epoch"] for r in epochs if r.get(key) is not None]
        ys = [r[key] for r in epochs if r.get(key) is not None]
        return xs, ys

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    if steps:
        ax.plot([r["epoch"] for r in steps], [r.get("window_loss", r.get("loss")) for r in steps], lw=0.8,
                alpha=0.5, label="train (per logged step)")
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        xs, ys = series(key)
        if xs:
            ax.plot(xs, ys, marker="o", ms=3, label=label)
    ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax.legend()
    ax = axes[1]
    for key, label, style in (("train_top1_err", "train top-1", "--"), ("val_top1_err", "val top-1", "-"),
                              ("val_top5_err", "val top-5", ":")):
        xs, ys = series(key)
        if xs:
            ax.plot(xs, [100 * y for y in ys], style, marker="o", ms=3, label=label)
    ax.set(xlabel="epoch", ylabel="error (%)", title="top-1 / top-5 error")
    ax.legend()
    ax = axes[2]
    xs, ys = series("lr")
    if steps:
        xs, ys = [r["epoch"] for r in steps], [r["lr"] for r in steps]
    if xs:
        ax.plot(xs, ys, marker="o", ms=3)
        if min(ys) > 0:
            ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out)


def plot_confusion(matrix, classes: list[str], out: str | os.PathLike, title: str = "confusion matrix") -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted)."""
    import matplotlib   # lazy: see plot_curves
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, dtype=np.float64)
    norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    size = min(14, 3 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 40:
        ax.set_xticks(range(n), [c[:18] for c in classes], rotation=90, fontsize=8)
        ax.set_yticks(range(n), [c[:18] for c in classes], fontsize=8)
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    if m[i, j]:
                        ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center", fontsize=7,
                                color="white" if norm[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    fig.tight_layout()
    return save_figure(fig, out)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def write_report(run_dir: str | os.PathLike, summary: dict, epochs: list[dict]) -> Path:
    """``report.md``: what was trained, how it went, where the files are."""
    run_dir = Path(run_dir)
    s = summary
    lines = [
        f"# Run `{run_dir.name}`",
        "",
        f"- preset: `{s.get('preset')}`; model: `{s.get('model')}` {s.get('model_kwargs') or ''}",
        f"- data: `{s.get('cache')}` ({s.get('train_images')} training images, {s.get('num_classes')} classes)",
        f"- {s.get('epochs_done')} epochs, {s.get('steps')} steps, batch {s.get('batch_size')}, "
        f"{s.get('world_size', 1)} process(es), precision {s.get('precision')}",
        f"- wall time: {s.get('wall_time_s', 0) / 60:.1f} min (training {s.get('train_time_s', 0) / 60:.1f} min)",
        f"- status: {s.get('status')}",
        "",
        "| split | top-1 error | top-5 error | accuracy |",
        "| --- | --- | --- | --- |",
    ]
    for split in ("val", "test"):
        r = s.get(split) or {}
        if r:
            acc = None if r.get("top1_err") is None else 1 - r["top1_err"]
            lines.append(f"| {split} ({r.get('views', 'center')}) | {_pct(r.get('top1_err'))} | "
                         f"{_pct(r.get('top5_err'))} | {_pct(acc)} |")
    if s.get("best_val_top1_err") is not None:
        lines.append(f"\nBest validation top-1 error {_pct(s['best_val_top1_err'])} at epoch {s.get('best_epoch')}.")
    if s.get("warnings"):
        lines += ["", "Warnings:", *[f"- {w}" for w in s["warnings"]]]
    if epochs:
        lines += ["", "| epoch | train loss | train top-1 err | val top-1 err | val top-5 err | lr | time (s) |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in epochs:
            loss = r.get("train_loss")
            lines.append(f"| {r['epoch']} | {'-' if loss is None else f'{loss:.4f}'} | {_pct(r.get('train_top1_err'))} | "
                         f"{_pct(r.get('val_top1_err'))} | {_pct(r.get('val_top5_err'))} | {r.get('lr', 0):.3g} | "
                         f"{r.get('epoch_time_s', 0):.0f} |")
    lines += ["", "Files: `curves.png` (plots), `epochs.jsonl` / `epochs.csv`, `steps.jsonl`, `summary.json`, "
              "`config.toml` (resolved config), `best.safetensors`, `last.safetensors`.", ""]
    return atomic_write(run_dir / "report.md", "\n".join(lines), what="the run report")
