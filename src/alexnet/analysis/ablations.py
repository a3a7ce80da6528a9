"""What each of the paper's tricks is worth: the baseline and one change at a time.

The paper's claims (ILSVRC, 224 px, 90 epochs), each reproduced here as one arm:

=============  ==============================================  =========================================
arm            change                                           the paper says (error *increase* without)
=============  ==============================================  =========================================
no_lrn         no local response normalisation                  top-1 +1.4%, top-5 +1.2% (section 3.3)
pool_2x2       non-overlapping 2x2/2 pooling instead of 3x3/2   top-1 +0.4%, top-5 +0.3% (section 3.4)
no_dropout     dropout 0 in fc6/fc7                             "substantial overfitting" (section 4.2)
no_pca         no PCA colour noise                              top-1 "over 1%" (section 4.1)
no_crop_flip   no random crops, no flips                        "substantial overfitting" (section 4.1)
tanh           tanh instead of ReLU                             trains ~6x slower (Figure 1)
no_conv3       the middle layer conv3 removed                   top-1 "about 2%" (section 7)
one_gpu        one tower, half the kernels in conv1-conv4       top-1 +1.7%, top-5 +1.2% (section 3.2)
               (conv5 and fc6-fc8 at full width)
=============  ==============================================  =========================================

Every arm is the same :func:`alexnet.train.train` call on the same data, model and
budget (epochs, subset, schedule, batch) with exactly one switch changed: a model
constructor argument (``model.kwargs``) or a data-augmentation setting. At least two
seeds per arm; the table reports mean and sample standard deviation of the test
top-1/top-5 error and the difference to the baseline beside the paper's number.
"no crop/flip" trains and tests on the whole stored image (crop = stored size).

Runs are resumable: each (arm, seed) is a run folder ``OUT/runs/<arm>-s<seed>``. A
finished run (its ``summary.json``) is re-used; an interrupted one is resumed from
its ``last.safetensors``; a folder made with different settings is refused rather
than mixed into the table.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..data import open_cache
from ..errors import UserError
from ..files import atomic_write
from ..report import save_figure, write_csv, write_json
from ..train import train
from ..train.config import load_config
from . import overfitting
from .common import mean_std, read_settings, reusable


@dataclass(frozen=True)
class Arm:
    name: str
    change: str
    model_kwargs: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    paper_top1: float | None = None      # the paper's error increase without the trick, in % points
    paper_top5: float | None = None
    paper_claim: str = ""


ARMS: tuple[Arm, ...] = (
    Arm("baseline", "the paper's recipe (scaled to this dataset)", paper_claim="-"),
    Arm("no_lrn", "no local response normalisation", {"lrn": False}, {}, 1.4, 1.2,
        "LRN reduces top-1/top-5 error by 1.4%/1.2% (sec. 3.3)"),
    Arm("pool_2x2", "non-overlapping 2x2/2 max pooling", {"pool": [2, 2]}, {}, 0.4, 0.3,
        "overlapping pooling reduces top-1/top-5 error by 0.4%/0.3% (sec. 3.4)"),
    Arm("no_dropout", "no dropout", {"dropout": 0.0}, {}, None, None,
        "without dropout: substantial overfitting (sec. 4.2)"),
    Arm("no_pca", "no PCA colour noise", {}, {"pca_std": 0.0}, 1.0, None,
        "PCA colour noise reduces top-1 error by over 1% (sec. 4.1)"),
    Arm("no_crop_flip", "no random crops or flips (whole image)", {}, {"flip": False, "crop": "full"}, None, None,
        "without crops/flips: substantial overfitting (sec. 4.1)"),
    Arm("tanh", "tanh instead of ReLU", {"activation": "tanh"}, {}, None, None,
        "tanh networks train ~6x slower (Figure 1)"),
    Arm("no_conv3", "middle conv layer (conv3) removed", {"drop_conv": "conv3"}, {}, 2.0, None,
        "removing any middle conv layer costs about 2% top-1 (sec. 7)"),
    # Section 3.2 compares the two-GPU net with a one-GPU net of half the kernels; its footnote keeps
    # conv5 and the FC layers at full width so that the parameter counts match (AlexNet(one_gpu=True)).
    Arm("one_gpu", "one tower, half the kernels in conv1-conv4 (conv5, fc at full width)", {"one_gpu": True}, {},
        1.7, 1.2, "two GPUs reduce top-1/top-5 error by 1.7%/1.2% vs a one-GPU net with half the kernels (sec. 3.2)"),
)
ARM_NAMES = tuple(a.name for a in ARMS)


@dataclass
class Budget:
    """What every arm gets; identical across arms so that only the switch differs."""

    epochs: int = 6
    train_subset: int = 10000
    val_subset: int = 0                 # all 10,000 CIFAR-10 test images: 1 image = 0.01%
    max_steps: int = 0
    batch_size: int = 128
    test_views: str = "center"
    val_every: int = 0                  # validate only after the last epoch (the one-cycle lr needs no val)

    @classmethod
    def quick(cls) -> "Budget":
        """Seconds per run: for tests and smoke checks only (the numbers mean nothing)."""
        return cls(epochs=1, train_subset=256, val_subset=100, max_steps=2, batch_size=32, val_every=1)


def arm_overrides(arm: Arm, seed: int, budget: Budget, cache, preset_crop: int) -> dict:
    """The config overrides of one run: the budget, the seed and the arm's single switch."""
    data = {"cache": str(Path(cache.path).resolve()), "size": cache.size, "crop": min(preset_crop, cache.size),
            "train_subset": budget.train_subset, "val_subset": budget.val_subset}
    for key, value in arm.data.items():
        data[key] = cache.size if value == "full" else value
    return {
        "data": data,
        "model": {"kwargs": dict(arm.model_kwargs)},
        "train": {"epochs": budget.epochs, "seed": seed, "max_steps": budget.max_steps,
                  "batch_size": budget.batch_size, "test_views": budget.test_views, "val_every": budget.val_every},
    }


def _fingerprint(config) -> dict:
    """The settings that must agree for a run folder to be re-used."""
    d = config.to_dict()
    d.pop("run", None)
    d.pop("preset", None)
    d["train"].pop("device", None)
    d["train"].pop("threads", None)
    d["data"].pop("workers", None)
    return json.loads(json.dumps(d))


def _under(base: dict, top: dict) -> dict:
    """``top`` merged over ``base``, table by table."""
    merged = dict(base)
    for key, value in top.items():
        merged[key] = _under(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def run_arm(arm: Arm, seed: int, budget: Budget, cache, out: Path, *, preset: str, model: str | None,
            quiet: bool, device: str = "", settings: dict | None = None) -> dict:
    """Train (or re-use, or resume) one (arm, seed) run; return its summary. ``settings``: nested
    config overrides for every arm, under the budget and the arm's own switch."""

    base = load_config(preset, settings or None)
    overrides = _under(settings or {}, arm_overrides(arm, seed, budget, cache, base.data.crop))
    if model:
        overrides["model"]["name"] = model
    overrides["run"] = {"out": str(out / "runs"), "name": f"{arm.name}-s{seed}", "progress": not quiet}
    if device:
        overrides["train"]["device"] = device
    config = load_config(preset, overrides)      # model.kwargs merge: the preset's plus the arm's switch
    run_dir = out / "runs" / f"{arm.name}-s{seed}"
    stamp = run_dir / "ablation.json"
    want = _fingerprint(config)
    if reusable(read_settings(stamp), want, run_dir):
        summary_path = run_dir / "summary.json"
        if summary_path.is_file():
            summary = json.loads(summary_path.read_text())
            if summary.get("status") in ("finished", "max_steps") and summary.get("test"):
                return summary
        if (run_dir / "last.safetensors").is_file():
            return train(resume=run_dir, overrides={"run": {"progress": not quiet}}).summary
    atomic_write(stamp, json.dumps(want, indent=1), what="the run's settings")
    result = train(config)
    if result.interrupted:
        raise KeyboardInterrupt
    return result.summary


def summarise_arms(runs: list[dict]) -> list[dict]:
    """One row per arm: mean and spread of top-1/top-5 error (%), change from the baseline, the paper's."""
    by_arm: dict[str, list[dict]] = {}
    for r in runs:
        by_arm.setdefault(r["arm"], []).append(r)
    base = by_arm.get("baseline", [])
    base_top1 = mean_std([100 * r["top1_err"] for r in base])[0]
    base_top5 = mean_std([100 * r["top5_err"] for r in base])[0]
    rows = []
    for arm in ARMS:
        rs = by_arm.get(arm.name)
        if not rs:
            continue
        t1, s1 = mean_std([100 * r["top1_err"] for r in rs])
        t5, s5 = mean_std([100 * r["top5_err"] for r in rs])
        rows.append({
            "arm": arm.name, "change": arm.change, "seeds": len(rs),
            "top1_err_mean": t1, "top1_err_std": s1, "top5_err_mean": t5, "top5_err_std": s5,
            "delta_top1": None if base_top1 is None or arm.name == "baseline" else t1 - base_top1,
            "delta_top5": None if base_top5 is None or arm.name == "baseline" else t5 - base_top5,
            "paper_delta_top1": arm.paper_top1, "paper_delta_top5": arm.paper_top5, "paper_claim": arm.paper_claim,
            "train_time_s_mean": mean_std([r.get("train_time_s") or 0.0 for r in rs])[0],
        })
    return rows


def _fmt(mean, std=None, signed=False) -> str:
    if mean is None:
        return "-"
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return text + (f" ± {std:.2f}" if std is not None else "")


def markdown_table(rows: list[dict], header: str = "") -> str:
    lines = [header, ""] if header else []
    lines += ["| arm | change | seeds | top-1 err (%) | top-5 err (%) | Δ top-1 vs baseline | Δ top-5 | paper |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        paper = r["paper_claim"]
        lines.append(f"| {r['arm']} | {r['change']} | {r['seeds']} | {_fmt(r['top1_err_mean'], r['top1_err_std'])} | "
                     f"{_fmt(r['top5_err_mean'], r['top5_err_std'])} | {_fmt(r['delta_top1'], signed=True)} | "
                     f"{_fmt(r['delta_top5'], signed=True)} | {paper} |")
    return "\n".join(lines) + "\n"


def plot_ablations(rows: list[dict], out: Path, title: str) -> None:
    import matplotlib   # lazy: ~0.5 s of start-up that only the figure needs
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.55 * len(rows) + 1.6))
    ys = list(range(len(rows)))[::-1]
    ax.barh([y + 0.2 for y in ys], [r["top1_err_mean"] for r in rows], height=0.38,
            xerr=[r["top1_err_std"] or 0 for r in rows], label="top-1", color="tab:blue")
    ax.barh([y - 0.2 for y in ys], [r["top5_err_mean"] for r in rows], height=0.38,
            xerr=[r["top5_err_std"] or 0 for r in rows], label="top-5", color="tab:orange")
    ax.set_yticks(ys, [r["arm"] for r in rows])
    ax.set(xlabel="test error (%), mean ± std over seeds", title=title)
    ax.legend()
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out)


def run_ablations(cache_path: str | os.PathLike, out: str | os.PathLike, *, arms: list[str] | None = None,
                  seeds: int = 2, budget: Budget | None = None, preset: str = "cifar10-ablations", model: str | None = None,
                  device: str = "", quiet: bool = False, settings: dict | None = None) -> dict:
    """Every requested arm x seed (re-using finished runs), then the tables and the plot in ``out``.
    ``settings``: nested config overrides that every arm gets (the arms' own switches win)."""

    budget = budget or Budget()
    cache = open_cache(cache_path)
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: must be at least 1")
    chosen = list(arms) if arms else list(ARM_NAMES)
    unknown = [a for a in chosen if a not in ARM_NAMES]
    if unknown:
        raise UserError(f"unknown arm(s) {', '.join(unknown)}; known: {', '.join(ARM_NAMES)}")
    if "baseline" not in chosen:
        chosen.insert(0, "baseline")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    total = len(chosen) * seeds
    done = 0
    for seed in range(seeds):            # seed-major: a partial result already covers every arm
        for arm in (a for a in ARMS if a.name in chosen):
            done += 1
            if not quiet:
                print(f"ablations: [{done}/{total}] {arm.name} seed {seed}", file=sys.stderr, flush=True)
            s = run_arm(arm, seed, budget, cache, out, preset=preset, model=model, quiet=quiet, device=device,
                        settings=settings)
            test = s.get("test") or {}
            runs.append({"arm": arm.name, "seed": seed, "top1_err": test.get("top1_err"), "top5_err": test.get("top5_err"),
                         "views": test.get("views"), "split": test.get("split"), "epochs_done": s.get("epochs_done"),
                         "steps": s.get("steps"), "train_images": s.get("train_images"),
                         "train_time_s": s.get("train_time_s"), "run_dir": s.get("run_dir")})
    runs = [r for r in runs if r["top1_err"] is not None]
    rows = summarise_arms(runs)
    header = (f"Ablations on {cache.path} ({budget.train_subset or 'all'} training images, {budget.epochs} epochs"
              f"{f', at most {budget.max_steps} steps' if budget.max_steps else ''}, {seeds} seed{'s' if seeds > 1 else ''}, preset {preset}, "
              f"test {budget.test_views} view{'s' if budget.test_views == 'ten' else ''} on "
              f"{budget.val_subset or 'all'} images)")
    files = {"csv": out / "ablations.csv", "md": out / "ablations.md", "runs_csv": out / "ablation_runs.csv",
             "json": out / "ablations.json", "png": out / "ablations.png"}
    write_csv(files["csv"], rows)
    write_csv(files["runs_csv"], runs)
    atomic_write(files["md"], markdown_table(rows, "# " + header), what="the ablation table")
    write_json(files["json"], {"budget": budget.__dict__, "seeds": seeds, "preset": preset, "model": model,
                               **({"settings": settings} if settings else {}),
                               "cache": str(cache.path), "rows": rows, "runs": runs})
    plot_ablations(rows, files["png"], "Ablations (one change at a time)")
    if budget.val_every >= 1:
        # Validated during training: the curves say whether, and when, each arm overfits (section 4).
        measured = []
        for r in runs:
            curves = overfitting.run_curves(r["run_dir"])
            measured.append({"arm": r["arm"], "seed": r["seed"], "curves": curves,
                             **overfitting.overfitting_measures(curves)})
        over = overfitting.summarise_overfitting(measured)
        files.update({"overfitting_md": out / "overfitting.md", "overfitting_csv": out / "overfitting.csv",
                      "overfitting_png": out / "overfitting.png"})
        write_csv(files["overfitting_csv"], [{k: v for k, v in m.items() if k != "curves"} for m in measured])
        atomic_write(files["overfitting_md"], overfitting.overfitting_markdown(over, "# Overfitting: " + header),
                     what="the overfitting table")
        overfitting.plot_overfitting(measured, files["overfitting_png"],
                                f"Training and validation error per epoch\n{header}")
    return {"rows": rows, "runs": runs, "files": {k: str(v) for k, v in files.items()}, "header": header}
