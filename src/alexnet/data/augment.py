"""The paper's augmentation and test-time views, on whole uint8 batches.

Krizhevsky et al. 2012, Section 4.1:

* "extracting random 224x224 patches (and their horizontal reflections) from the
  256x256 images" -> :func:`random_crop_params` + :func:`gather_crops`, one indexing
  op for the whole batch (no per-image Python loop).
* "At test time, the network makes a prediction by extracting five 224x224 patches
  (the four corner patches and the center patch) as well as their horizontal
  reflections (hence ten patches in all), and averaging the predictions"
  -> :func:`ten_view_params` (views ordered: top-left, top-right, bottom-left,
  bottom-right, centre, then the same five mirrored).
* PCA colour noise: "To each training image, we add multiples of the found principal
  components, with magnitudes proportional to the corresponding eigenvalues times a
  random variable drawn from a Gaussian with mean zero and standard deviation 0.1",
  i.e. ``I_xy += [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T`` -> :func:`pca_offsets`.
* Section 2: "subtracting the mean activity over the training set from each pixel":
  the mean *image*, cropped at the same offsets and flipped like the batch
  (:class:`MeanCropper`); the arithmetic that applies it, with the colour offsets and the
  input scale, is :class:`alexnet.data.preprocess.InputTransform`.

Pixel scale of the PCA noise. The cache stores 0..255 values, and its ``eigval`` are
eigenvalues of the covariance of those values (0..255^2 units). The paper's formula adds
``alpha_i * lambda_i`` along ``p_i`` with alpha ~ N(0, 0.1): it multiplies by an
*eigenvalue* (a variance), so its size depends on the pixel scale it is written in
(scaling pixels by k scales the added colour by k^2, not k). It is only a small
perturbation when pixels are in 0..1: on ILSVRC, lambda_1 ~ 0.15 in 0..1 units gives
an offset of std ~0.015 (~4 levels of 255), while literally in 0..255 units it would be
~1500 levels. So we apply the paper's formula with pixels in 0..1 (lambda/255^2) and
express the result in 0..255 units:

    offset_255 = 255 * P @ (alpha * eigval_255 / 255^2) = P @ (alpha * eigval_255) / 255

and its per-channel standard deviation is ``std(alpha) * sqrt(sum_i (P_ci * lambda_i)^2) / 255``.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.lib.stride_tricks import as_strided

VIEW_NAMES = ("top-left", "top-right", "bottom-left", "bottom-right", "centre",
              "top-left mirrored", "top-right mirrored", "bottom-left mirrored",
              "bottom-right mirrored", "centre mirrored")


def random_crop_params(n: int, size: int, crop: int, generator: torch.Generator, flip: bool = True):
    """Per-image crop offsets (top, left) uniform in [0, size-crop] and flip flags (p = 1/2).

    The flip draws are consumed even with ``flip=False``, so switching flips off (an
    ablation) leaves every other random choice of the run unchanged.
    """
    top = torch.randint(0, size - crop + 1, (n,), generator=generator)
    left = torch.randint(0, size - crop + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return top, left, (flips if flip else torch.zeros(n, dtype=torch.bool))


def center_params(n: int, size: int, crop: int):
    offset = (size - crop) // 2
    top = torch.full((n,), offset, dtype=torch.int64)
    return top, top.clone(), torch.zeros(n, dtype=torch.bool)


def ten_view_params(n: int, size: int, crop: int):
    """Offsets and flips for the paper's 10 views; image i's views are rows i*10 .. i*10+9."""
    far, mid = size - crop, (size - crop) // 2
    top = torch.tensor([0, 0, far, far, mid] * 2, dtype=torch.int64)
    left = torch.tensor([0, far, 0, far, mid] * 2, dtype=torch.int64)
    flips = torch.tensor([False] * 5 + [True] * 5)
    return top.repeat(n), left.repeat(n), flips.repeat(n)


def view_params(n: int, size: int, crop: int, views: str = "center"):
    """(top, left, flips, source) of the centre crop or the paper's ten views of ``n`` images.

    ``source`` maps each output row to its image (None for the centre crop: row i is image i;
    for the ten views rows i*10 .. i*10+9 are image i's).
    """
    if views == "ten":
        top, left, flips = ten_view_params(n, size, crop)
        return top, left, flips, torch.arange(n).repeat_interleave(10)
    if views != "center":
        raise ValueError(f"views {views!r}: 'center' or 'ten'")
    top, left, flips = center_params(n, size, crop)
    return top, left, flips, None


def _crop_index(top: torch.Tensor, left: torch.Tensor, flips: torch.Tensor, crop: int):
    """Row (B,crop,1) and column (B,1,crop) indices; a mirrored crop reads its columns backwards."""
    steps = torch.arange(crop, device=top.device)
    rows = (top[:, None] + steps)[:, :, None]
    cols = torch.where(flips[:, None], left[:, None] + (crop - 1 - steps), left[:, None] + steps)[:, None, :]
    return rows, cols


def gather_crops(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flips: torch.Tensor,
                 crop: int, source: torch.Tensor | None = None) -> torch.Tensor:
    """Crop (and mirror) every image of an NHWC batch at its own offset: (B, crop, crop, C).

    ``source`` maps output rows to input images (the 10 views read each image ten
    times); default: row i reads image i. One advanced-indexing op for the batch, on any
    device: the device loader and :func:`alexnet.data.preprocess.to_network_input` use it;
    the host loader uses the faster :func:`crop_batch` (tests check the two agree exactly).
    """
    rows, cols = _crop_index(top.to(images.device), left.to(images.device), flips.to(images.device), crop)
    if source is None:
        source = torch.arange(len(top), device=images.device)
    return images[source.to(images.device)[:, None, None], rows, cols]


def crop_mean_image(mean_image: torch.Tensor, top, left, flips, crop: int) -> torch.Tensor:
    """The mean image (S,S,C) cut at each batch row's offsets and flips: (B, crop, crop, C).

    Plain reference for :class:`MeanCropper` (what every input path uses; tests compare the two).
    """
    rows, cols = _crop_index(top.to(mean_image.device), left.to(mean_image.device), flips.to(mean_image.device), crop)
    return mean_image[rows, cols]


# -- the fast paths -----------------------------------------------------------------------
#
# A crop of image b at (top, left) is a strided block of the flat NHWC array starting at
# element b*S*S*C + top*S*C + left*C. A view whose first axis steps one element at a time
# (``as_strided``) has *every* such block as one row, so cutting a whole batch of crops is a
# single fancy-indexing read of exactly the crop pixels (numpy copies them with tight inner
# loops; no per-image Python, no full-image copy, straight out of the memory map). Choosing
# the strides (1, 1, S*C, C) makes the result NCHW directly.

def _block_view(flat: np.ndarray, size: int, channels: int, crop: int) -> np.ndarray:
    """(starts, C, crop, crop) view of a flat NHWC buffer: row k = the crop starting at element k."""
    step = flat.strides[0]
    starts = flat.size - ((crop - 1) * size * channels + (crop - 1) * channels + channels) + 1
    return as_strided(flat, shape=(max(starts, 0), channels, crop, crop),
                      strides=(step, step, size * channels * step, channels * step), writeable=False)


def crop_batch(images: np.ndarray, rows: np.ndarray, top: np.ndarray, left: np.ndarray, flips: np.ndarray,
               crop: int) -> torch.Tensor:
    """uint8 NCHW crops (B, C, crop, crop) of ``images[rows]`` (an (N,S,S,C) array or memmap).

    Same result as :func:`gather_crops` (followed by NHWC -> NCHW), which tests check.
    """
    n, size, _, channels = images.shape
    flat = images.reshape(-1)
    starts = (np.asarray(rows, dtype=np.int64) * (size * size * channels)
              + np.asarray(top, dtype=np.int64) * (size * channels) + np.asarray(left, dtype=np.int64) * channels)
    out = torch.from_numpy(_block_view(flat, size, channels, crop)[starts])
    flips = torch.as_tensor(np.asarray(flips, dtype=bool))
    if bool(flips.any()):
        if bool(flips.all()):
            out = out.flip(3)
        else:
            first = int(torch.argmax(flips.to(torch.uint8)))
            if bool(flips[first:].all()):      # training batches are ordered unflipped-then-flipped
                out[first:] = out[first:].flip(3)
            else:
                out[flips] = out[flips].flip(3)
    return out


class MeanCropper:
    """The mean image cut at each row's (top, left, flip), NCHW float32, on the mean's device.

    Keeps the mean image and its mirror image side by side so one strided gather serves
    flipped and unflipped rows (a mirrored crop of the mean = a crop of the mirrored mean
    at left' = S - crop - left). On CPU numpy's gather is used (faster than torch's
    advanced indexing there); elsewhere torch's.
    """

    def __init__(self, mean_image: torch.Tensor, crop: int):
        size, _, channels = mean_image.shape
        chw = mean_image.permute(2, 0, 1).contiguous()
        self.both = torch.cat([chw.reshape(-1), chw.flip(2).reshape(-1)])
        self.size, self.channels, self.crop = size, channels, crop
        plane = size * size
        starts = self.both.numel() - ((channels - 1) * plane + (crop - 1) * size + crop) + 1
        self.shape, self.strides = (starts, channels, crop, crop), (1, plane, size, 1)
        if self.both.device.type == "cpu":
            arr = self.both.numpy()
            step = arr.strides[0]
            self._view_np = as_strided(arr, shape=self.shape, strides=tuple(s * step for s in self.strides), writeable=False)
        else:
            self._view = self.both.as_strided(self.shape, self.strides)

    def __call__(self, top: torch.Tensor, left: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        size, crop = self.size, self.crop
        offset = size * size * self.channels
        start = torch.where(flips, offset + top * size + (size - crop - left), top * size + left)
        if self.both.device.type == "cpu":
            return torch.from_numpy(self._view_np[start.numpy()])
        return self._view[start.to(self.both.device)]


def pca_offsets(alpha: torch.Tensor, eigval: torch.Tensor, eigvec: torch.Tensor) -> torch.Tensor:
    """Per-image colour offsets in 0..255 units: ``P @ (alpha * lambda) / 255`` (see module doc).

    alpha (B,C) ~ N(0, std); eigval (C,) in 0..255^2 units; eigvec (C,C), columns = p_i.
    """
    return ((alpha * (eigval / 255.0))[:, :, None] * eigvec.T[None]).sum(dim=1)  # (no BLAS call for a 3x3)
