"""Predictions for image files: the top-5 classes with names and probabilities.

Each image goes through the same path as the training data (``prepare``'s decode:
short side to S, central S x S square; then the centre crop, the training mean and
input scale), using the statistics stored in the checkpoint. An unreadable image
yields one line naming the file and the problem; the others are still predicted.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..data.preprocess import InputSpec, to_network_input
from ..errors import UserError


def preprocess(images: list[np.ndarray], info: dict, views: str = "center") -> torch.Tensor:
    """uint8 (S,S,C) squares -> the network input of the checkpoint ``info`` describes (its InputSpec)."""
    return to_network_input(np.stack(images), input_spec_of(info), views)


def input_spec_of(info: dict) -> InputSpec:
    """The checkpoint's input description; UserError when it has none (a partial import, say)."""
    if info.get("input_spec") is None:
        raise UserError(f"{info['path']}: the checkpoint does not say how its input is prepared; it cannot predict")
    return info["input_spec"]


def read_square(path: str | os.PathLike, size: int, channels: int) -> np.ndarray:
    """Decode one file like ``prepare`` does; UserError naming the file when it cannot be read."""
    from ..data.decode import BadImage, decode_square
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not an image") from None
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        image, _warning = decode_square(data, size, channels, name=str(path))
    except BadImage as exc:
        if channels != 1 or "colour" not in str(exc):
            raise UserError(f"{path}: {exc}") from None
        # A colour photo for a grayscale model: decode in RGB, then take the luma (PIL's "L" weights).
        try:
            rgb, _warning = decode_square(data, size, 3, name=str(path))
        except BadImage as exc2:
            raise UserError(f"{path}: {exc2}") from None
        from PIL import Image
        image = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("L"))[:, :, None]
    return image


@torch.no_grad()
def predict(checkpoint: str | os.PathLike, images: list[str | os.PathLike], *, topk: int = 5,
            views: str = "center", device: str | None = None, batch_size: int = 32) -> list[dict]:
    """One result per image, in order: ``{"path", "top": [{"class", "name", "prob"}, ...]}``
    or ``{"path", "error"}`` for an image that could not be read."""
    from ..checkpoint import load_model
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, info = load_model(checkpoint, device=dev)
    classes = info["classes"] or [str(i) for i in range(info["num_classes"])]
    names = info.get("class_names") or classes
    size = info["cache_size"] or info["input_size"]
    results: list[dict] = []
    pending: list[tuple[int, np.ndarray]] = []

    def flush():
        if not pending:
            return
        x = preprocess([a for _, a in pending], info, views).to(dev)
        n_views = 10 if views == "ten" else 1
        from .evaluate import view_average
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
            pending.append((len(results) - 1, read_square(path, size, info["in_channels"])))
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
