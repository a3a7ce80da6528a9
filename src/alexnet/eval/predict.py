"""Predictions for image files: the top-5 classes with names and probabilities.

Each image goes through the one input path (:mod:`alexnet.data.preprocess`): ``prepare``'s
decode (short side to S, central S x S square), then the checkpoint's InputSpec (centre
crop or ten views, the training mean and input scale stored in the checkpoint). An unreadable image
yields one line naming the file and the problem; the others are still predicted.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..checkpoint import load_model
from ..data.preprocess import input_spec_of, read_square, to_network_input
from ..errors import UserError
from ..options import warn_once
from ..runtime import default_device
from .metrics import view_average


def preprocess(images: list[np.ndarray], info: dict, views: str = "center") -> torch.Tensor:
    """uint8 (S,S,C) squares -> the network input of the checkpoint ``info`` describes (its InputSpec)."""
    return to_network_input(np.stack(images), input_spec_of(info), views)


@torch.no_grad()
def predict(checkpoint: str | os.PathLike, images: list[str | os.PathLike], *, topk: int = 5,
            views: str = "center", device: str | None = None, batch_size: int = 32) -> list[dict]:
    """One result per image, in order: ``{"path", "top": [{"class", "name", "prob"}, ...]}``
    or ``{"path", "error"}`` for an image that could not be read."""
    dev = default_device(device)
    model, info = load_model(checkpoint, device=dev)
    if info["not_loaded"]:
        warn_once(f"{info['path']}: {', '.join(info['not_loaded'])} hold their initialisation, not trained weights "
                  f"(an imported partial checkpoint, for features and fine-tuning): these predictions mean nothing")
    spec = input_spec_of(info)
    classes = info["classes"] or [str(i) for i in range(info["num_classes"])]
    names = info.get("class_names") or classes
    results: list[dict] = []
    pending: list[tuple[int, np.ndarray]] = []

    def flush():
        if not pending:
            return
        x = to_network_input(np.stack([a for _, a in pending]), spec, views, device=dev)
        n_views = 10 if views == "ten" else 1
        probs = view_average(model(x), n_views).cpu()
        k = min(topk, probs.shape[1])
        values, indices = probs.topk(k, dim=1)
        for (slot, _), vals, idx in zip(pending, values, indices):
            results[slot]["top"] = [{"class": classes[int(i)], "name": names[int(i)], "prob": float(v)}
                                    for v, i in zip(vals, idx)]
        pending.clear()

    for path in images:
        results.append({"path": str(path)})
        try:
            pending.append((len(results) - 1, read_square(path, spec.size, spec.channels)))
        except UserError as exc:
            results[-1]["error"] = str(exc)
        if len(pending) >= batch_size:
            flush()
    flush()
    return results


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
