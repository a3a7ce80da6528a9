"""Figure 3: the first-layer kernels as an image grid, one block per tower.

The paper (section 6.1, Figure 3): "96 convolutional kernels of size 11x11x3 learned
by the first convolutional layer on the 224x224x3 input images. The top 48 kernels
were learned on GPU 1 while the bottom 48 kernels were learned on GPU 2." The GPU 1
kernels came out largely colour-agnostic, the GPU 2 kernels largely colour-specific.

Which conv1 kernels belong to which tower: conv1 itself is not split, but conv2 is
a grouped convolution (``groups=2``), so conv1's first half of output channels feeds
tower 1 and the second half tower 2. :func:`tower_count` reads the number of towers
from conv2's ``groups`` (1 for single-tower models such as ``alexnet_owt``).

Each kernel is min-max normalised on its own for display (as in the paper's figure:
the absolute scale differs a lot between kernels). 1-channel kernels are drawn in
grey; kernels with another channel count show their channel mean.

:func:`kernel_smoothness` gives a number for "the trained kernels look different from
the initialisation": the mean correlation between spatially adjacent weights of a
kernel. Independently drawn initial weights give ~0; smooth, oriented, Gabor-like
learned kernels give clearly positive values.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import UserError
from ..models import build_model

BACKGROUND = 255        # white separators between kernels
BLOCK_GAP = 12          # pixels of white between the towers' blocks


def conv_layers(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def conv1_weight(model: nn.Module) -> torch.Tensor:
    """The first convolution's weight, (out_channels, in_channels, kh, kw), float32 on the CPU."""
    convs = conv_layers(model)
    if not convs:
        raise UserError(f"{type(model).__name__} has no convolution layer to show")
    return convs[0].weight.detach().float().cpu()


def tower_count(model: nn.Module) -> int:
    """How many towers conv1's outputs feed: the ``groups`` of the second convolution."""
    convs = conv_layers(model)
    if len(convs) < 2:
        return 1
    groups = convs[1].groups
    return groups if groups > 1 and convs[0].out_channels % groups == 0 else 1


def normalise_kernels(weight: np.ndarray) -> np.ndarray:
    """Each kernel (N, C, k, k) scaled on its own to 0..1 (a constant kernel becomes 0.5)."""
    w = np.asarray(weight, dtype=np.float64)
    flat = w.reshape(len(w), -1)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    span = hi - lo
    out = np.where(span[:, None] > 0, (flat - lo[:, None]) / np.where(span > 0, span, 1)[:, None], 0.5)
    return out.reshape(w.shape)


@dataclass(frozen=True)
class GridLayout:
    """Where every kernel goes: ``towers`` blocks stacked vertically, ``cols`` kernels per row."""

    count: int
    towers: int
    kernel: int
    cols: int
    scale: int
    pad: int = 2
    gap: int = BLOCK_GAP

    @property
    def per_tower(self) -> int:
        return self.count // self.towers

    @property
    def rows_per_tower(self) -> int:
        return math.ceil(self.per_tower / self.cols)

    @property
    def cell(self) -> int:
        return self.kernel * self.scale + self.pad

    @property
    def block_height(self) -> int:
        return self.rows_per_tower * self.cell + self.pad

    @property
    def height(self) -> int:
        return self.towers * self.block_height + (self.towers - 1) * self.gap

    @property
    def width(self) -> int:
        return self.cols * self.cell + self.pad

    def origin(self, index: int) -> tuple[int, int]:
        """Top-left pixel (y, x) of kernel ``index``."""
        tower, j = divmod(index, self.per_tower)
        row, col = divmod(j, self.cols)
        y = tower * (self.block_height + self.gap) + self.pad + row * self.cell
        return y, self.pad + col * self.cell


def layout_for(count: int, towers: int, kernel: int, cols: int = 16, scale: int | None = None) -> GridLayout:
    if towers < 1 or count % towers:
        raise UserError(f"{count} kernels cannot be split into {towers} towers")
    per_tower = count // towers
    cols = max(1, min(cols, per_tower))
    scale = scale or max(1, 44 // kernel)       # about 44 px per kernel: 4x for 11x11, 8x for 5x5
    return GridLayout(count, towers, kernel, cols, scale)


def filter_grid(weight: torch.Tensor | np.ndarray, towers: int = 1, cols: int = 16,
                scale: int | None = None) -> tuple[np.ndarray, GridLayout]:
    """The kernels as one uint8 image: (H, W, 3) for RGB kernels, (H, W) otherwise."""
    w = weight.numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight)
    if w.ndim != 4 or w.shape[2] != w.shape[3]:
        raise UserError(f"expected square conv kernels (N, C, k, k), got shape {tuple(w.shape)}")
    n, c, k, _ = w.shape
    if c not in (1, 3):
        w = w.mean(axis=1, keepdims=True)      # no natural colour mapping: show the channel mean
        c = 1
    layout = layout_for(n, towers, k, cols, scale)
    norm = (normalise_kernels(w) * 255).round().astype(np.uint8)   # (N, C, k, k)
    shape = (layout.height, layout.width) + ((3,) if c == 3 else ())
    canvas = np.full(shape, BACKGROUND, dtype=np.uint8)
    size = k * layout.scale
    for i in range(n):
        tile = norm[i].transpose(1, 2, 0)                          # k, k, C
        tile = tile.repeat(layout.scale, axis=0).repeat(layout.scale, axis=1)
        y, x = layout.origin(i)
        canvas[y:y + size, x:x + size] = tile if c == 3 else tile[..., 0]
    return canvas, layout


def kernel_smoothness(weight: torch.Tensor | np.ndarray) -> float:
    """Mean correlation of horizontally and vertically adjacent weights within each kernel.

    Per kernel and channel the mean is removed; the statistic is
    sum(w[i] w[i+1]) / sum(w[i]^2) over all adjacent pairs (both directions), averaged
    over kernels. i.i.d. initial weights give ~0 (+-1/sqrt(pairs)); a learned
    edge or Gabor filter is smooth at the pixel scale and gives a large positive value.
    """
    w = np.asarray(weight.numpy() if isinstance(weight, torch.Tensor) else weight, dtype=np.float64)
    if w.shape[-1] < 2:
        return 0.0
    w = w - w.mean(axis=(2, 3), keepdims=True)
    horizontal = (w[..., :, :-1] * w[..., :, 1:]).sum(axis=(1, 2, 3))
    vertical = (w[..., :-1, :] * w[..., 1:, :]).sum(axis=(1, 2, 3))
    h_norm = (w[..., :, :-1] ** 2).sum(axis=(1, 2, 3)) + (w[..., :, 1:] ** 2).sum(axis=(1, 2, 3))
    v_norm = (w[..., :-1, :] ** 2).sum(axis=(1, 2, 3)) + (w[..., 1:, :] ** 2).sum(axis=(1, 2, 3))
    denom = 0.5 * (h_norm + v_norm)
    per_kernel = np.where(denom > 0, (horizontal + vertical) / np.where(denom > 0, denom, 1), 0.0)
    return float(per_kernel.mean())


def weight_correlation(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Cosine similarity of two weight tensors (1 = unchanged direction, ~0 = unrelated)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else 0.0


def draw_filters(model: nn.Module, out: str | os.PathLike, cols: int = 16, scale: int | None = None) -> dict:
    """Write the grid PNG of ``model``'s conv1 and return what it shows (geometry, statistics)."""

    weight = conv1_weight(model)
    towers = tower_count(model)
    image, layout = filter_grid(weight, towers, cols, scale)
    out = Path(out)
    if out.parent and not out.parent.is_dir():
        raise UserError(f"{out}: folder {out.parent} does not exist")
    try:
        Image.fromarray(image).save(out)
    except OSError as exc:
        raise UserError(f"{out}: cannot write image ({exc})") from None
    return {
        "png": str(out), "kernels": int(weight.shape[0]), "channels": int(weight.shape[1]),
        "kernel_size": int(weight.shape[2]), "towers": towers, "cols": layout.cols,
        "rows_per_tower": layout.rows_per_tower, "scale": layout.scale,
        "width": layout.width, "height": layout.height, "smoothness": kernel_smoothness(weight),
    }


def initial_conv1(name: str, num_classes: int, in_channels: int, kwargs: dict, seed: int) -> torch.Tensor:
    """conv1 as the training run initialised it: the train loop seeds torch with ``train.seed``
    right before ``build_model``, so building the same model after the same seed re-creates it."""

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return conv1_weight(build_model(name, num_classes=num_classes, in_channels=in_channels, **kwargs))
    finally:
        torch.random.set_rng_state(state)


def change_statistics(trained: torch.Tensor, init: torch.Tensor) -> dict:
    """How conv1 differs from its initialisation, in numbers.

    * ``smoothness`` / ``smoothness_at_init``: :func:`kernel_smoothness` of the kernels.
    * ``update_smoothness``: the same statistic for what training added (trained - init).
      Gradients of the first layer are correlations of the error signal with image
      patches, and natural images are smooth, so the learned change is smooth
      (~0.7 after a few dozen steps on CIFAR-10) long before the kernels themselves
      look like edges, whereas the difference of two random initialisations gives ~0.
    * ``correlation_with_init``: cosine similarity (1 = unchanged).
    * ``relative_change``: ||trained - init|| / ||init||.
    """
    delta = trained - init
    norm0 = float(init.norm())
    return {
        "smoothness": kernel_smoothness(trained), "smoothness_at_init": kernel_smoothness(init),
        "update_smoothness": kernel_smoothness(delta), "correlation_with_init": weight_correlation(trained, init),
        "relative_change": float(delta.norm()) / norm0 if norm0 else None,
    }
