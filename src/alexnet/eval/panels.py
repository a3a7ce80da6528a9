"""Figure 4 (left): images with their five most probable labels as bars.

The paper (Figure 4, left): "Eight ILSVRC-2010 test images and the five labels
considered most probable by our model. The correct label is written under each
image, and the probability assigned to the correct label is also shown with a red
bar (if it happens to be in the top 5)." :func:`prediction_panel` draws exactly
that for any number of images (wrapped into rows of ``per_row``); ``alexnet predict
--panel OUT.png`` calls it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

from ..errors import UserError
from ..report import save_figure

TRUE_COLOUR = "#d62728"     # the paper's red bar
OTHER_COLOUR = "#7f7f7f"


def prediction_panel(images, top5_names=None, top5_probs=None, true_labels=None, out_png=None, *,
                     per_row: int = 4, titles: Sequence[str] | None = None) -> Path:
    """Write the panel PNG and return its path.

    Two call forms:

    * ``prediction_panel(images, top5_names, top5_probs, true_labels, out_png)`` (arrays);
    * ``prediction_panel(results, out_png)`` with the result dicts of
      :func:`alexnet.eval.predict.predict` (``{"path", "top": [{"name"|"class", "prob"}],
      optional "true"}``): the images are read from their paths.

    Args:
        images: H x W x C uint8 arrays (C = 1 or 3), or H x W for grayscale.
        top5_names / top5_probs: per image, the labels and probabilities, most probable first
            (fewer than five is fine for datasets with fewer classes).
        true_labels: per image the correct label, or None where unknown (then nothing is marked).
        per_row: images per row of the figure.
        titles: optional text above each image (e.g. the file name).
    """
    if top5_probs is None and out_png is None and isinstance(top5_names, (str, os.PathLike)):
        return panel_from_predictions(images, top5_names, per_row=per_row)
    if out_png is None:
        raise TypeError("prediction_panel needs images, top5_names, top5_probs, true_labels and out_png")
    import matplotlib   # lazy: ~0.5 s of start-up that only the figure needs
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    if n == 0:
        raise UserError("prediction panel: no images to draw")
    true_labels = list(true_labels) if true_labels is not None else [None] * n
    if not (len(top5_names) == len(top5_probs) == len(true_labels) == n):
        raise ValueError("images, top5_names, top5_probs and true_labels must have the same length")
    per_row = max(1, min(per_row, n))
    rows = -(-n // per_row)
    fig = plt.figure(figsize=(2.9 * per_row, 4.1 * rows))
    grid = fig.add_gridspec(rows * 2, per_row, height_ratios=[2.2, 1.3] * rows, hspace=0.3, wspace=0.55)
    for i in range(n):
        r, c = divmod(i, per_row)
        ax = fig.add_subplot(grid[2 * r, c])
        img = np.asarray(images[i])
        if img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        truth = true_labels[i]
        if titles is not None:
            ax.set_title(str(titles[i])[:28], fontsize=8)
        if truth is not None:
            ax.set_xlabel(str(truth)[:28], fontsize=9, fontweight="bold")
        bars = fig.add_subplot(grid[2 * r + 1, c])
        names = [str(s) for s in top5_names[i]]
        probs = [float(p) for p in top5_probs[i]]
        ys = np.arange(len(names))
        colours = [TRUE_COLOUR if truth is not None and name == str(truth) else OTHER_COLOUR for name in names]
        bars.barh(ys, probs, color=colours, height=0.7)
        bars.set_yticks(ys, [s[:22] for s in names], fontsize=7)
        bars.invert_yaxis()                       # most probable on top, as in the paper
        bars.set_xlim(0, 1)
        bars.tick_params(axis="x", labelsize=6)
        for spine in ("top", "right"):
            bars.spines[spine].set_visible(False)
    return save_figure(fig, out_png, dpi=100, bbox_inches="tight")


def panel_from_predictions(results: Sequence[dict], out_png: str | os.PathLike, per_row: int = 4) -> Path:
    """The panel for ``alexnet predict`` results: each image read from its path (display only)."""

    images, names, probs, truth, titles = [], [], [], [], []
    for r in results:
        try:
            with Image.open(r["path"]) as im:
                im = ImageOps.exif_transpose(im).convert("RGB")
                im.thumbnail((256, 256))
                images.append(np.asarray(im))
        except (OSError, ValueError) as exc:
            raise UserError(f"{r['path']}: cannot draw ({exc})") from None
        top = r.get("top") or []
        names.append([t.get("name") or t.get("class") for t in top])
        probs.append([t["prob"] for t in top])
        truth.append(r.get("true"))
        titles.append(Path(str(r["path"])).name)
    return prediction_panel(images, names, probs, truth, out_png, per_row=per_row, titles=titles)
