"""Does the network overfit without dropout, or without crops and flips? (paper, section 4)

Section 4.1: "Without this scheme [random crops and flips], our network suffers from substantial
overfitting". Section 4.2: "Without dropout, our network exhibits substantial overfitting."
Overfitting shows in the curves, not in one final number: the training error falls far below
the validation error, and the validation error stops falling and turns back up. This module
reads the per-epoch log (``epochs.jsonl``) of each ablation run trained with validation after
every epoch (``alexnet experiment ablations --val-every 1``) and measures, per run:

* the final validation error and the final training error, and their gap (val - train);
* the epoch of the lowest validation error, and how far the error rose after it by the end;
  the validation error "turns up" at that epoch when it ends at least ``TURN_UP`` (2 points) above it;
* the same for the validation loss (the mean cross-entropy, in nats): the loss of a network
  that grows confident on its training images turns up earlier and more clearly than its
  error, which only counts the images whose top class changes.

The training error is the one the trainer logs: the running error over the epoch's batches
as they were trained on, with dropout active and the arm's augmentation, so for the arms that
keep dropout or augmentation it is higher than the error of the same network evaluated on its
training images, and their gap is smaller than the true one.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

from ..report import read_jsonl
from .common import mean_std
from ..report import save_figure

# Validation error that ends 2 points above its lowest value has turned up: twice the binomial
# standard error of a ~45% error measured on 2,000 images (1.1 points), so that the noise of one
# evaluation does not count as a turn.
TURN_UP = 0.02


def run_curves(run_dir: str | os.PathLike) -> dict:
    """Per-epoch training and validation top-1 error of one run (epochs without validation left out)."""
    rows = [r for r in read_jsonl(Path(run_dir) / "epochs.jsonl") if r.get("val_top1_err") is not None]
    return {"epochs": [r["epoch"] for r in rows], "train_err": [r["train_top1_err"] for r in rows],
            "val_err": [r["val_top1_err"] for r in rows], "val_loss": [r.get("val_loss") for r in rows]}


def overfitting_measures(curves: dict, turn_up: float = TURN_UP) -> dict:
    """Final errors, their gap, the epoch of the lowest validation error and the rise after it."""
    epochs, train, val = curves["epochs"], curves["train_err"], curves["val_err"]
    loss = [x for x in curves.get("val_loss", []) if x is not None]
    if not val:
        return {"final_val_err": None, "final_train_err": None, "gap": None, "best_val_err": None,
                "best_val_epoch": None, "rise_after_best": None, "turns_up_at": None,
                "best_val_loss_epoch": None, "val_loss_rise": None}
    best = min(range(len(val)), key=lambda i: (val[i], i))
    rise = val[-1] - val[best]
    lowest = min(range(len(loss)), key=lambda i: (loss[i], i)) if len(loss) == len(val) else None
    return {"final_val_err": val[-1], "final_train_err": train[-1], "gap": val[-1] - train[-1],
            "best_val_err": val[best], "best_val_epoch": epochs[best], "rise_after_best": rise,
            "turns_up_at": epochs[best] if rise >= turn_up else None,
            "best_val_loss_epoch": None if lowest is None else epochs[lowest],
            "val_loss_rise": None if lowest is None else loss[-1] - loss[lowest]}


def summarise_overfitting(runs: list[dict]) -> list[dict]:
    """One row per arm (in the order first seen): mean and spread over seeds of each measure, in % points."""
    arms: dict[str, list[dict]] = {}
    for r in runs:
        arms.setdefault(r["arm"], []).append(r)
    rows = []
    for arm, rs in arms.items():
        row = {"arm": arm, "seeds": len(rs)}
        for key in ("final_val_err", "final_train_err", "gap", "best_val_err", "rise_after_best"):
            values = [100 * r[key] for r in rs if r.get(key) is not None]
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(values)
        row["best_val_epochs"] = [r.get("best_val_epoch") for r in rs]
        row["turns_up_at"] = [r.get("turns_up_at") for r in rs]
        row["val_loss_rise_mean"], row["val_loss_rise_std"] = mean_std(
            [r["val_loss_rise"] for r in rs if r.get("val_loss_rise") is not None])    # nats, not points
        row["best_val_loss_epochs"] = [r.get("best_val_loss_epoch") for r in rs]
        rows.append(row)
    return rows


def _fmt(mean, std) -> str:
    return "-" if mean is None else f"{mean:.2f}" + ("" if std is None else f" ± {std:.2f}")


def overfitting_markdown(rows: list[dict], header: str = "") -> str:
    lines = [header, ""] if header else []
    lines += ["| arm | seeds | final val err (%) | final train err (%) | gap val - train | lowest val err (%) "
              "| at epoch (per seed) | rise after it | val error turns up at (per seed) "
              "| lowest val loss at epoch (per seed) | val loss rise after it (nats) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        turns = ", ".join("no" if t is None else str(t) for t in r["turns_up_at"])
        lines.append(f"| {r['arm']} | {r['seeds']} | {_fmt(r['final_val_err_mean'], r['final_val_err_std'])} | "
                     f"{_fmt(r['final_train_err_mean'], r['final_train_err_std'])} | "
                     f"{_fmt(r['gap_mean'], r['gap_std'])} | {_fmt(r['best_val_err_mean'], r['best_val_err_std'])} | "
                     f"{', '.join(str(e) for e in r['best_val_epochs'])} | "
                     f"{_fmt(r['rise_after_best_mean'], r['rise_after_best_std'])} | {turns} | "
                     f"{', '.join('-' if e is None else str(e) for e in r.get('best_val_loss_epochs', []))} | "
                     f"{_fmt(r.get('val_loss_rise_mean'), r.get('val_loss_rise_std'))} |")
    return "\n".join(lines) + "\n"


def plot_overfitting(runs: list[dict], out: str | os.PathLike, title: str) -> Path:
    """Left: training (dashed) and validation (solid) error per epoch; right: the validation loss.
    One colour per arm, one line per seed."""
    import matplotlib   # lazy: ~0.5 s of start-up that only the figure needs
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_loss) = plt.subplots(1, 2, figsize=(10.8, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    colours = {}
    for r in runs:
        colour = colours.setdefault(r["arm"], f"C{len(colours)}")
        c = r["curves"]
        first = r["seed"] == min(x["seed"] for x in runs if x["arm"] == r["arm"])
        ax.plot(c["epochs"], [100 * e for e in c["val_err"]], "-", color=colour, lw=1.6,
                label=f"{r['arm']}: validation" if first else None)
        ax.plot(c["epochs"], [100 * e for e in c["train_err"]], "--", color=colour, lw=1.0,
                label=f"{r['arm']}: training (running)" if first else None)
        points = [(e, x) for e, x in zip(c["epochs"], c.get("val_loss", []), strict=False) if x is not None]
        if points:
            ax_loss.plot(*zip(*points, strict=True), "-", color=colour, lw=1.2, label=r["arm"] if first else None)
    ax.set(xlabel="epoch", ylabel="top-1 error (%)", ylim=(0, 100))
    ax_loss.set(xlabel="epoch", ylabel="validation loss (cross-entropy, nats)")
    fig.suptitle("\n".join(textwrap.fill(line, 140) for line in title.splitlines()), fontsize=8)
    ax.legend(fontsize=7, ncol=2)
    ax_loss.legend(fontsize=7)
    for a in (ax, ax_loss):
        a.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out)
