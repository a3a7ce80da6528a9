"""Evaluation of trained checkpoints: centre crop or the paper's ten views, single models or ensembles.

The paper (section 4.1): "At test time, the network makes a prediction by extracting
five 224x224 patches (the four corner patches and the center patch) as well as their
horizontal reflections (hence ten patches in all), and averaging the predictions
made by the network's softmax layer on the ten patches." Ensembles (section 6)
average the predictions of several CNNs: "Averaging the predictions of five similar
CNNs gives an error rate of 16.4%". Both are averages of softmax probabilities;
:func:`view_average` and :func:`evaluate` compute exactly that.

Each checkpoint is fed the way it was trained: its InputSpec (crop size, mean mode, input
scale and the *training* data statistics stored in the checkpoint, not those of the
evaluated cache). A ``--data`` argument becomes a cache by the one rule of
:mod:`alexnet.data.resolve`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .. import report
from ..checkpoint import load_model
from ..console import progress as progress_bar
from ..data import build_loader
from ..data.resolve import resolve_cache
from ..errors import UserError
from ..options import warn_once
from ..runtime import default_device
from ..data.preprocess import input_spec_of
from .metrics import ClassificationMeter, view_average
from .prediction_file import check_prediction_path, write_predictions


def pick_split(cache, split: str | None) -> str:
    if split:
        cache.split(split)    # UserError naming the splits that exist
        return split
    for name in ("test", "val"):
        if name in cache.splits and cache.labelled(name):   # ILSVRC's test set has no labels
            return name
    raise UserError(f"{cache.path}: no test or val split (has: {', '.join(cache.splits)}); choose one with --split")


@torch.no_grad()
def predict_split(model, info: dict, cache, split: str, *, views: str = "center", batch_size: int = 100,
                  device: str | torch.device = "cpu", workers: int = 2, limit: int = 0,
                  progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities (N, C) for every image of ``split`` (views averaged) and the labels (N,).

    The images are fed as the checkpoint's InputSpec says (its crop, mean and scale, from
    the *training* statistics it stores), not from the evaluated cache's statistics.
    """
    spec = input_spec_of(info)
    if cache.channels != spec.channels:
        raise UserError(f"{cache.path}: {cache.channels}-channel images, but {info['path']} expects {spec.channels}")
    data = cache.subset({split: limit})
    if limit:
        workers = 0     # worker processes re-open the whole cache from its path
    n_views = 10 if views == "ten" else 1
    loader = build_loader(data, split, batch_size=max(1, batch_size // n_views), train=False, seed=0, rank=0,
                          world_size=1, workers=workers, device=device, views=views, input_spec=spec)
    probs, labels = [], []
    bar = progress_bar(len(loader), f"{Path(info['path']).name} {views}", "batch", disable=not progress)
    for x, y in loader:
        probs.append(view_average(model(x), n_views).cpu())
        labels.append(y.cpu())
        bar.update(1)
    bar.close()
    return torch.cat(probs), torch.cat(labels)


def evaluate(checkpoints: str | os.PathLike | list, data: str | os.PathLike, *, views: str = "center",
             split: str | None = None, batch_size: int = 100, device: str | None = None, workers: int = 2,
             limit: int = 0, out: str | os.PathLike | None = None, plots: bool = True,
             progress: bool = False, predictions: str | os.PathLike | None = None) -> dict:
    """Top-1/top-5 error, per-class accuracy and confusion matrix of one checkpoint or an ensemble.

    ``checkpoints``: a path (or run folder) or a list of them; several = an ensemble whose
    softmax outputs are averaged. ``data``: a cache folder or a source (prepared on first use).
    Writes ``metrics.json``, ``per_class.csv`` and ``confusion.png`` into ``out`` when given, and
    each image's top 5 into the file ``predictions`` (:mod:`.prediction_file`). A split without
    labels (the ILSVRC-2012 test set) has no metrics: it needs ``predictions``.
    """
    if views not in ("center", "ten"):
        raise UserError(f"--views {views!r}: choose center or ten")
    paths = [checkpoints] if isinstance(checkpoints, (str, os.PathLike)) else list(checkpoints)
    if not paths:
        raise UserError("no checkpoint given")
    dev = default_device(device)
    loaded = [load_model(p, device=dev) for p in paths]
    classes = loaded[0][1]["classes"]
    for _, info in loaded[1:]:
        if info["classes"] != classes:
            raise UserError(f"{info['path']}: its classes differ from {loaded[0][1]['path']}'s; an ensemble needs the same classes")
    cache = resolve_cache(data, input_spec_of(loaded[0][1]).size, quiet=not progress)
    if list(cache.classes) != list(classes):
        raise UserError(f"{cache.path}: classes differ from the checkpoint's ({len(cache.classes)} vs {len(classes)}); "
                        f"evaluate on data with the same class list")
    split = pick_split(cache, split)
    if predictions is not None:
        predictions = check_prediction_path(predictions, cache)
        if limit:
            raise UserError("-o with --limit: a prediction file covers the whole split; leave out --limit")
    elif not cache.labelled(split):
        raise UserError(f"{cache.path}: split '{split}' has no labels, so no error rates; give -o FILE to write "
                        f"its predictions")
    labelled = cache.labelled(split)
    total, labels, members = None, None, []
    for model, info in loaded:
        probs, y = predict_split(model, info, cache, split, views=views, batch_size=batch_size, device=dev,
                                 workers=workers, limit=limit, progress=progress)
        if labelled:
            member = ClassificationMeter(len(classes))
            member.update(probs, y)
            members.append({"checkpoint": info["path"], **member.result()})
        if labels is not None and not torch.equal(labels, y):
            raise RuntimeError("loader returned a different order for two checkpoints")
        total, labels = (probs if total is None else total + probs), y
    probs = total / len(loaded)
    if predictions is not None:
        write_predictions(predictions, probs, labels if labelled else None, cache.split(split).files, cache)
        if not labelled:
            return {"split": split, "views": views, "cache": str(cache.path), "count": len(probs),
                    "checkpoints": [i["path"] for _, i in loaded], "predictions": str(predictions)}
    meter = ClassificationMeter(len(classes))
    nll = float(torch.nn.functional.nll_loss(torch.log(probs.clamp_min(1e-12)), labels, reduction="sum"))
    meter.update(probs, labels, nll)
    names = getattr(cache, "class_names", classes)
    result = {"split": split, "views": views, "cache": str(cache.path), "checkpoints": [i["path"] for _, i in loaded],
              **meter.result(), "accuracy": 1 - meter.result()["top1_err"],
              "per_class_accuracy": dict(zip(classes, meter.per_class_accuracy())),
              "confusion": meter.confusion.tolist(), "class_names": list(names)}
    if len(loaded) > 1:
        result["members"] = members
    if predictions is not None:
        result["predictions"] = str(predictions)
    if out == "auto":      # beside the first checkpoint: eval-<split>-<views>[-ensemble]
        first = Path(paths[0])
        folder = first if first.is_dir() else first.parent
        out = folder / (f"eval-{split}-{views}" + ("-ensemble" if len(loaded) > 1 else ""))
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        _warn_if_replacing(out / "metrics.json", result)
        report.write_json(out / "metrics.json", result)
        report.write_csv(out / "per_class.csv", [
            {"class": c, "name": n, "images": int(meter.confusion[i].sum()), "accuracy": a}
            for i, (c, n, a) in enumerate(zip(classes, names, meter.per_class_accuracy()))])
        if plots:
            title = f"{split}, {views} view{'s' if views == 'ten' else ''}: top-1 error {100 * result['top1_err']:.2f}%"
            report.plot_confusion(meter.confusion.numpy(), list(names), out / "confusion.png", title=title)
        result["out"] = str(out)
    return result


def _warn_if_replacing(path: Path, result: dict) -> None:
    """An earlier evaluation of other data (another cache, split, subset or checkpoint) in the same
    folder is replaced: say so once, naming what it was."""
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    keys = ("cache", "split", "views", "count", "checkpoints")
    differ = [k for k in keys if before.get(k) != result.get(k)]
    if differ:
        warn_once(f"{path} held an evaluation of other data ({', '.join(f'{k} {before.get(k)!r}' for k in differ)}); "
                  f"it is replaced (give --out-dir to keep both)")


def format_result(result: dict, max_classes: int = 20) -> str:
    if "top1_err" not in result:      # a split without labels: its predictions only
        return (f"{', '.join(result['checkpoints'])} on {result['cache']} [{result['split']}, {result['count']:,} "
                f"images without labels, {result['views']} view{'s' if result['views'] == 'ten' else ''}]\n"
                f"wrote {result['predictions']}")
    lines = []
    for m in result.get("members", []):
        lines.append(f"  member {m['checkpoint']}: top-1 error {100 * m['top1_err']:.2f}%, top-5 error {100 * m['top5_err']:.2f}%")
    kind = f"ensemble of {len(result['checkpoints'])}" if len(result["checkpoints"]) > 1 else result["checkpoints"][0]
    lines.append(f"{kind} on {result['cache']} [{result['split']}, {result['count']:,} images, {result['views']} "
                 f"view{'s' if result['views'] == 'ten' else ''}]")
    lines.append(f"top-1 error {100 * result['top1_err']:.2f}%  top-5 error {100 * result['top5_err']:.2f}%  "
                 f"(accuracy {100 * result['accuracy']:.2f}%)")
    per_class = list(zip(result["class_names"], result["per_class_accuracy"].values()))
    if len(per_class) <= max_classes:
        lines.append("per-class accuracy: " + ", ".join(
            f"{n} {'-' if a is None else f'{100 * a:.1f}%'}" for n, a in per_class))
    else:
        ranked = sorted((a, n) for n, a in per_class if a is not None)
        lines.append("worst classes: " + ", ".join(f"{n} {100 * a:.1f}%" for a, n in ranked[:5]))
    if result.get("out"):
        lines.append(f"wrote {result['out']}/metrics.json, per_class.csv, confusion.png")
    if result.get("predictions"):
        lines.append(f"wrote {result['predictions']}")
    return "\n".join(lines)
