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

from ..errors import UserError


def preprocess(images: list[np.ndarray], info: dict, views: str = "center") -> torch.Tensor:
    """uint8 (S,S,C) squares -> the network input, exactly as the evaluation loader builds it."""
    from ..data import augment
    from ..train.loop import apply_input_scale
    batch = torch.from_numpy(np.stack(images))
    n, size, crop = len(images), batch.shape[1], info["input_size"]
    if views == "ten":
        top, left, flips = augment.ten_view_params(n, size, crop)
        source = torch.arange(n).repeat_interleave(10)
    else:
        top, left, flips = augment.center_params(n, size, crop)
        source = None
    # gather_crops / crop_mean_image return NHWC; to_network_input takes NCHW.
    crops = augment.gather_crops(batch, top, left, flips, crop, source=source).permute(0, 3, 1, 2)
    stats = info["stats"]
    if info["mean"] == "image":
        mean = augment.crop_mean_image(torch.from_numpy(stats["mean_image"]).float(), top, left, flips, crop)
        x = augment.to_network_input(crops, mean_crops=mean.permute(0, 3, 1, 2))
    elif info["mean"] == "channel":
        x = augment.to_network_input(crops, channel_mean=torch.from_numpy(stats["channel_mean"]).float())
    else:
        x = augment.to_network_input(crops)
    return apply_input_scale(x, info.get("input_scale"))


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
