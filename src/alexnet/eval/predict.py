"""Predictions for image files and folders: the top classes with names and probabilities.

    results = predict("runs/NAME", ["photos/", "cat.jpg"], topk=5, progress=True)
    write_predictions_csv(results, "predictions.csv", topk=5)

Each image goes through the one input path (:mod:`alexnet.data.preprocess`): ``prepare``'s
decode (short side to S, central S x S square), then the checkpoint's InputSpec (centre
crop or ten views, the training mean and input scale stored in the checkpoint), in batches
of ``batch_size`` images. A folder stands for the image files in it and below it (by
extension, sorted by path); its other files are counted in one line, not predicted.
An unreadable image yields a result naming the file and the problem; the others are still
predicted. :class:`Predictor` is the loaded model that all of it (and ``alexnet serve``) uses.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .. import report
from ..checkpoint import load_model
from ..console import info, progress as progress_bar
from ..data.decode import IMAGE_EXTENSIONS
from ..data.preprocess import input_spec_of, read_square, square_from_bytes, to_network_input
from ..errors import UserError
from ..options import output_file, warn_once
from ..runtime import default_device
from .metrics import view_average


def preprocess(images: list[np.ndarray], info: dict, views: str = "center") -> torch.Tensor:
    """uint8 (S,S,C) squares -> the network input of the checkpoint ``info`` describes (its InputSpec)."""
    return to_network_input(np.stack(images), input_spec_of(info), views)


class Predictor:
    """A checkpoint loaded once, ready to classify: files or bytes -> uint8 squares -> top classes."""

    def __init__(self, checkpoint: str | os.PathLike, *, device: str | None = None, views: str = "center"):
        self.device = default_device(device)
        self.model, self.info = load_model(checkpoint, device=self.device)
        if self.info["not_loaded"]:
            warn_once(f"{self.info['path']}: {', '.join(self.info['not_loaded'])} hold their initialisation, not "
                      f"trained weights (an imported partial checkpoint, for features and fine-tuning): these "
                      f"predictions mean nothing")
        self.spec = input_spec_of(self.info)
        self.views = views
        self.classes = self.info["classes"] or [str(i) for i in range(self.info["num_classes"])]
        self.names = self.info.get("class_names") or self.classes

    def read(self, path: str | os.PathLike) -> np.ndarray:
        """An image file -> the square this model is fed (UserError naming the file)."""
        return read_square(path, self.spec.size, self.spec.channels)

    def decode(self, data: bytes, name: str) -> np.ndarray:
        """An image's bytes (an upload) -> the square this model is fed (UserError starting with ``name``)."""
        return square_from_bytes(data, self.spec.size, self.spec.channels, name)

    @torch.no_grad()
    def top(self, squares: list[np.ndarray], k: int = 5) -> list[list[dict]]:
        """For each square, its ``k`` most probable classes: ``{"index", "class", "name", "prob"}``,
        most probable first (softmax, averaged over the views)."""
        x = to_network_input(np.stack(squares), self.spec, self.views, device=self.device)
        probs = view_average(self.model(x), 10 if self.views == "ten" else 1).float().cpu()
        values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
        return [[{"index": int(i), "class": self.classes[int(i)], "name": self.names[int(i)], "prob": float(v)}
                 for v, i in zip(vals, idx, strict=True)] for vals, idx in zip(values, indices, strict=True)]


def expand_images(items: list[str | os.PathLike], quiet: bool = False) -> list[str]:
    """Files as given; a folder -> its image files (by extension, at any depth, sorted by path). A
    folder's other files (and hidden ones) are counted in one line each, not predicted; a folder
    without any image stays in the list, so that predicting it reports it."""
    files: list[str] = []
    for item in items:
        folder = Path(item)
        if not folder.is_dir():
            files.append(str(item))
            continue
        images, others = [], []
        for parent, dirs, names in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                path = os.path.join(parent, name)
                is_image = os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not name.startswith(".")
                (images if is_image else others).append(path)
        if others:
            shown = ", ".join(os.path.relpath(p, folder) for p in others[:3]) + (", ..." if len(others) > 3 else "")
            info(f"{folder}: {len(others)} file(s) not predicted, not images by their extension ({shown})", quiet)
        files += images if images else [str(item)]
    return files


def predict(checkpoint: str | os.PathLike, images: list[str | os.PathLike], *, topk: int = 5,
            views: str = "center", device: str | None = None, batch_size: int = 32,
            progress: bool = False) -> list[dict]:
    """One result per image, in order (folders expanded, :func:`expand_images`):
    ``{"path", "top": [{"index", "class", "name", "prob"}, ...]}``, or ``{"path", "error"}`` for an
    image that could not be read. ``progress``: a bar over the images (on a terminal)."""
    if topk < 1 or batch_size < 1:
        raise UserError(f"predict: topk and batch_size must be at least 1 (got {topk}, {batch_size})")
    predictor = Predictor(checkpoint, device=device, views=views)
    files = expand_images(images, quiet=not progress)
    results: list[dict] = []
    pending: list[tuple[int, np.ndarray]] = []
    bar = progress_bar(len(files), "predict", "img", disable=not progress)

    def flush():
        if pending:
            for (slot, _), top in zip(pending, predictor.top([a for _, a in pending], topk), strict=True):
                results[slot]["top"] = top
            bar.update(len(pending))
            pending.clear()

    for path in files:
        results.append({"path": str(path)})
        try:
            if os.path.isdir(path):     # expand_images kept a folder without images, to say so here
                raise UserError(f"{path}: no image files in this folder (looked for "
                                f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
            pending.append((len(results) - 1, predictor.read(path)))
        except UserError as exc:
            results[-1]["error"] = str(exc)
            bar.update(1)
        if len(pending) >= batch_size:
            flush()
    flush()
    bar.close()
    return results


def write_predictions_csv(results: list[dict], path: str | os.PathLike, topk: int) -> Path:
    """One row per image: ``path``, then ``class_R``, ``name_R``, ``prob_R`` for R = 1..topk (most probable
    first), then ``error`` (empty for a predicted image; the reason, with no classes, for one that could
    not be read). Written atomically: a failed write leaves no partial file."""
    path = output_file(path)
    columns = ["path"] + [f"{what}_{r}" for r in range(1, topk + 1) for what in ("class", "name", "prob")] + ["error"]
    rows = []
    for r in results:
        row = dict.fromkeys(columns, "") | {"path": r["path"], "error": r.get("error", "")}
        for rank, t in enumerate(r.get("top", [])[:topk], 1):
            row |= {f"class_{rank}": t["class"], f"name_{rank}": t["name"], f"prob_{rank}": f"{t['prob']:.6f}"}
        rows.append(row)
    report.write_csv(path, rows, columns=columns)
    return path


def format_predictions(results: list[dict]) -> str:
    lines = []
    for r in results:
        if "error" in r:
            continue
        lines.append(r["path"])
        for rank, t in enumerate(r["top"], 1):
            label = t["name"] if t["name"] == t["class"] else f"{t['name']} ({t['class']})"
            lines.append(f"  {rank}. {100 * t['prob']:6.2f}%  {label}")
    return "\n".join(lines)
