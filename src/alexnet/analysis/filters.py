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
grey; kernels with another channel count show their channel mean. The grid itself is drawn by
:mod:`alexnet.models.kernels` (also used by TensorBoard and ``alexnet serve``).

:func:`kernel_smoothness` gives a number for "the trained kernels look different from
the initialisation": the mean correlation between spatially adjacent weights of a
kernel. Independently drawn initial weights give ~0; smooth, oriented, Gabor-like
learned kernels give clearly positive values.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import UserError
from ..options import output_file
from ..models import build_model
from ..models.kernels import (BACKGROUND, BLOCK_GAP, GridLayout, conv1_weight, conv_layers,  # noqa: F401
                              filter_grid, layout_for, normalise_kernels, tower_count)


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
    out = output_file(out)
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
