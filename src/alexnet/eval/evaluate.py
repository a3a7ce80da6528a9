"""Evaluation of trained checkpoints: centre crop or the paper's ten views, single models or ensembles.

The paper (section 4.1): "At test time, the network makes a prediction by extracting
five 224x224 patches (the four corner patches and the center patch) as well as their
horizontal reflections (hence ten patches in all), and averaging the predictions
made by the network's softmax layer on the ten patches." Ensembles (section 6)
average the predictions of several CNNs: "Averaging the predictions of five similar
CNNs gives an error rate of 16.4%". Both are averages of softmax probabilities;
:func:`view_average` and :func:`evaluate` compute exactly that.

Each checkpoint is fed the way it was trained: its own crop size, mean mode and the
*training* data statistics stored in the checkpoint (not those of the evaluated cache).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import UserError
from .metrics import ClassificationMeter


def view_average(logits: torch.Tensor, views: int) -> torch.Tensor:
    """Softmax over classes, then the mean over each image's ``views`` consecutive rows: (B, C)."""
    probs = torch.softmax(logits.float(), dim=1)
    if views == 1:
        return probs
    return probs.view(-1, views, probs.shape[1]).mean(dim=1)


def resolve_data(data: str | os.PathLike, size: int, quiet: bool = False):
    """A cache folder as is; anything else is a source, prepared once into $ALEXNET_CACHE at ``size``."""
    from ..data import open_cache, prepare
    path = Path(os.path.expanduser(str(data)))
    if (path / "meta.json").is_file():
        return open_cache(path)
    root = Path(os.environ.get("ALEXNET_CACHE") or Path.home() / ".cache" / "alexnet")
    name = path.name
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    out = root / f"{name or 'data'}-{size}"
    if not (out / "meta.json").is_file():
        import sys
        from ..data.sources import SHORTHANDS
        if str(data) not in SHORTHANDS and not path.exists():
            raise UserError(f"{data}: no such file or directory (neither a cache nor a dataset source)")
        if not quiet:
            sys.stderr.write(f"alexnet: preparing {data} -> {out} (once; later runs reuse it)\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        prepare(str(data), out, size=size, quiet=quiet)
    return open_cache(out)


def pick_split(cache, split: str | None) -> str:
    if split:
        cache.split(split)    # UserError naming the splits that exist
        return split
    for name in ("test", "val"):
        if name in cache.splits:
            return name
    raise UserError(f"{cache.path}: no test or val split (has: {', '.join(cache.splits)}); choose one with --split")


@torch.no_grad()
def predict_split(model, info: dict, cache, split: str, *, views: str = "center", batch_size: int = 100,
                  device: str | torch.device = "cpu", workers: int = 2, limit: int = 0,
                  progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities (N, C) for every image of ``split`` (views averaged) and the labels (N,)."""
    from ..data import build_loader
    from ..train.loop import apply_input_scale, derived_cache
    if info["cache_size"] and cache.size != info["cache_size"]:
        raise UserError(f"{cache.path}: images stored at {cache.size} px, but {info['path']} was trained on "
                        f"{info['cache_size']} px images; prepare the data with --size {info['cache_size']}")
    if cache.channels != info["in_channels"]:
        raise UserError(f"{cache.path}: {cache.channels}-channel images, but {info['path']} expects {info['in_channels']}")
    data = derived_cache(cache, {split: limit}, stats=info["stats"] or cache.stats)
    if limit:
        workers = 0
    n_views = 10 if views == "ten" else 1
    loader = build_loader(data, split, batch_size=max(1, batch_size // n_views), train=False,
                          crop=info["input_size"], seed=0, rank=0, world_size=1, workers=workers,
                          device=device, mean=info["mean"], views=views)
    probs, labels = [], []
    bar = None
    if progress:
        import sys
        from tqdm import tqdm
        bar = tqdm(total=len(loader), desc=f"{Path(info['path']).name} {views}", unit="batch", file=sys.stderr,
                   disable=not sys.stderr.isatty())
    for x, y in loader:
        x = apply_input_scale(x, info.get("input_scale"))
        probs.append(view_average(model(x), n_views).cpu())
        labels.append(y.cpu())
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return torch.cat(probs), torch.cat(labels)


def evaluate(checkpoints: str | os.PathLike | list, data: str | os.PathLike, *, views: str = "center",
             split: str | None = None, batch_size: int = 100, device: str | None = None, workers: int = 2,
             limit: int = 0, out: str | os.PathLike | None = None, plots: bool = True,
             progress: bool = False) -> dict:
    """Top-1/top-5 error, per-class accuracy and confusion matrix of one checkpoint or an ensemble.

    ``checkpoints``: a path (or run folder) or a list of them; several = an ensemble whose
    softmax outputs are averaged. ``data``: a cache folder or a source (prepared on first use).
    Writes ``metrics.json``, ``per_class.csv`` and ``confusion.png`` into ``out`` when given.
    """
    from .. import report
    from ..checkpoint import load_model
    if views not in ("center", "ten"):
        raise UserError(f"--views {views!r}: choose center or ten")
    paths = [checkpoints] if isinstance(checkpoints, (str, os.PathLike)) else list(checkpoints)
    if not paths:
        raise UserError("no checkpoint given")
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loaded = [load_model(p, device=dev) for p in paths]
    classes = loaded[0][1]["classes"]
    for _, info in loaded[1:]:
        if info["classes"] != classes:
            raise UserError(f"{info['path']}: its classes differ from {loaded[0][1]['path']}'s; an ensemble needs the same classes")
    cache = resolve_data(data, loaded[0][1]["cache_size"] or 256, quiet=not progress)
    if list(cache.classes) != list(classes):
        raise UserError(f"{cache.path}: classes differ from the checkpoint's ({len(cache.classes)} vs {len(classes)}); "
                        f"evaluate on data with the same class list")
    split = pick_split(cache, split)
    total, labels, members = None, None, []
    for model, info in loaded:
        probs, y = predict_split(model, info, cache, split, views=views, batch_size=batch_size, device=dev,
                                 workers=workers, limit=limit, progress=progress)
        member = ClassificationMeter(len(classes))
        member.update(probs, y)
        members.append({"checkpoint": info["path"], **member.result()})
        if labels is not None and not torch.equal(labels, y):
            raise RuntimeError("loader returned a different order for two checkpoints")
        total, labels = (probs if total is None else total + probs), y
    probs = total / len(loaded)
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
    if out == "auto":      # beside the first checkpoint: eval-<split>-<views>[-ensemble]
        first = Path(paths[0])
        folder = first if first.is_dir() else first.parent
        out = folder / (f"eval-{split}-{views}" + ("-ensemble" if len(loaded) > 1 else ""))
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        report.write_json(out / "metrics.json", result)
        report.write_csv(out / "per_class.csv", [
            {"class": c, "name": n, "images": int(meter.confusion[i].sum()), "accuracy": a}
            for i, (c, n, a) in enumerate(zip(classes, names, meter.per_class_accuracy()))])
        if plots:
            title = f"{split}, {views} view{'s' if views == 'ten' else ''}: top-1 error {100 * result['top1_err']:.2f}%"
            report.plot_confusion(meter.confusion.numpy(), list(names), out / "confusion.png", title=title)
        result["out"] = str(out)
    return result


def format_result(result: dict, max_classes: int = 20) -> str:
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
    return "\n".join(lines)
