"""The first convolution's kernels as one image: the grid Figure 3 of the paper shows.

What every view of conv1 draws with - ``alexnet filters`` (Figure 3), ``alexnet towers``,
the TensorBoard image of a training run and ``alexnet serve``'s page: the kernels, each
min-max normalised on its own (the absolute scale differs a lot between kernels), tiled
16 to a row and magnified to about 44 pixels, one block per tower. Which conv1 kernels
belong to which tower: conv1 itself is not split, but conv2 is a grouped convolution
(``groups=2``), so conv1's first half of output channels feeds tower 1 and the second half
tower 2; :func:`tower_count` reads it from conv2's ``groups``. 1-channel kernels are drawn
in grey; kernels with another channel count show their channel mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import UserError

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


def kernel_grid(model: nn.Module, cols: int = 16, scale: int | None = None) -> np.ndarray:
    """``model``'s conv1 as one uint8 image, (H, W, 3) or (H, W): :func:`filter_grid` with its towers."""
    image, _layout = filter_grid(conv1_weight(model), tower_count(model), cols, scale)
    return image
