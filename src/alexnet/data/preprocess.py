"""How images become network input: one :class:`InputSpec`, one transform, used everywhere.

The paper (section 2): images are down-sampled so that the shorter side is 256, the
central 256x256 patch is kept, and "the mean activity over the training set" is
subtracted from each pixel; the network sees 224x224 crops of that (section 4.1).
An :class:`InputSpec` is that recipe as data:

* ``size``: the stored side S (short side resized to S, central S x S kept: what
  ``alexnet prepare`` stores and what :func:`alexnet.data.decode.decode_square` does to one file);
* ``crop``: the network's input side (the centre crop, or the paper's ten views);
* ``mean``: ``"image"`` (the per-pixel mean image, cropped at the same offsets as the
  image: the paper), ``"channel"`` (one value per channel) or ``"none"``;
* ``mean_image`` (S, S, C) / ``channel_mean`` (C,), on the 0..255 scale;
* ``scale``: per-channel multipliers applied after the mean (None = the paper's raw
  0..255 differences). torchvision's ``Normalize(mean, std)`` on 0..1 inputs is
  ``mean="channel"``, ``channel_mean = 255 * mean``, ``scale = 1 / (255 * std)``.

Channels are RGB (or one grey channel). The spec travels with the weights: a checkpoint
stores it (its ``data`` section plus the ``extra.stats.*`` tensors), and
:func:`alexnet.checkpoint.load_model` gives it back, so predict, eval, features and the
experiments feed a model exactly the way it was trained, without being told.

:class:`InputTransform` is the one arithmetic from uint8 crops to network input: the
host loader and the device loader (with the colour noise while training), predict,
features, neighbors and the experiments (through :func:`to_network_input`, which cuts
the centre crop or the paper's ten views of whole squares first), and the exported graph
(:meth:`InputTransform.centre_constants` and :func:`normalise_`) all run it.
``tests/test_input_path.py`` checks that every path gives identical tensors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from . import augment
from .decode import BadImage, decode_square

MEAN_MODES = ("image", "channel", "none")
VIEWS = ("center", "ten")


@dataclass(frozen=True, eq=False)
class InputSpec:
    size: int
    crop: int
    channels: int = 3
    mean: str = "none"
    mean_image: np.ndarray | None = field(default=None, repr=False)
    channel_mean: np.ndarray | None = field(default=None, repr=False)
    scale: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.mean not in MEAN_MODES:
            raise UserError(f"mean {self.mean!r}: choose one of {', '.join(MEAN_MODES)}")
        if self.crop > self.size:
            raise UserError(f"crop {self.crop} is larger than the stored side {self.size}")
        if self.mean == "image" and (self.mean_image is None or tuple(self.mean_image.shape) != (self.size, self.size, self.channels)):
            shape = None if self.mean_image is None else tuple(self.mean_image.shape)
            raise UserError(f"mean 'image' needs a ({self.size}, {self.size}, {self.channels}) mean image, got {shape}")
        if self.mean == "channel" and (self.channel_mean is None or np.asarray(self.channel_mean).size != self.channels):
            raise UserError(f"mean 'channel' needs {self.channels} channel means")
        if self.scale is not None and len(self.scale) != self.channels:
            raise UserError(f"input scale has {len(self.scale)} values for {self.channels} channels")

    # -- where specs come from ---------------------------------------------------------------
    @classmethod
    def from_stats(cls, stats: dict, *, size: int, crop: int, channels: int, mean: str,
                   scale: str | list[float] | None = None) -> "InputSpec":
        """A spec from a cache's training statistics (``cache.stats``) and the config's choices.

        ``scale``: None (raw differences), ``"std"`` (divide by the training channel std:
        unit-variance inputs for He-initialised variants) or explicit multipliers.
        """
        if mean in ("image", "channel") and not stats:
            raise UserError("no train statistics (the cache has no train split): use mean 'none'")
        if scale == "std":
            scale = [float(1.0 / max(s, 1e-6)) for s in np.asarray(stats["channel_std"]).reshape(-1)]
        elif scale in ("none", ""):
            scale = None
        return cls(size=int(size), crop=int(crop), channels=int(channels), mean=mean,
                   mean_image=np.asarray(stats["mean_image"], np.float32) if mean == "image" else None,
                   channel_mean=np.asarray(stats["channel_mean"], np.float32).reshape(-1) if mean == "channel" else None,
                   scale=tuple(float(v) for v in scale) if scale is not None else None)

    @classmethod
    def from_checkpoint(cls, data: dict, stats: dict) -> "InputSpec":
        """The spec stored by :meth:`checkpoint_fields` (a checkpoint's ``data`` section and stats)."""
        size, crop = data.get("size"), data.get("crop")
        if not size or not crop:
            raise UserError("the checkpoint does not say how its input was prepared (no data.size / data.crop)")
        return cls.from_stats(stats, size=size, crop=crop, channels=data.get("channels", 3),
                              mean=data.get("mean", "none"), scale=data.get("input_scale"))

    def checkpoint_fields(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(the checkpoint's ``data`` section, the statistics arrays to store as ``extra.stats.*``)."""
        data = {"size": self.size, "crop": self.crop, "channels": self.channels, "mean": self.mean,
                "input_scale": list(self.scale) if self.scale is not None else None}
        stats = {}
        if self.mean_image is not None:
            stats["mean_image"] = np.ascontiguousarray(self.mean_image, np.float32)
        if self.channel_mean is not None:
            stats["channel_mean"] = np.ascontiguousarray(self.channel_mean, np.float32)
        return data, stats

    def describe(self) -> str:
        mean = {"image": "minus the mean image", "channel": "minus the channel mean", "none": "no mean"}[self.mean]
        scale = f", times {', '.join(f'{s:.4g}' for s in self.scale)}" if self.scale else ""
        return f"short side {self.size}, centre {self.size}x{self.size}, {self.crop}x{self.crop} crops, {mean}{scale} (0..255 scale)"

    # -- the tensors the arithmetic needs ------------------------------------------------------
    def mean_tensors(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(mean image (S,S,C) float32, channel mean (C,) float32) on ``device``; None where unused."""
        image = torch.as_tensor(self.mean_image, dtype=torch.float32).to(device) if self.mean == "image" else None
        channel = torch.as_tensor(self.channel_mean, dtype=torch.float32).to(device) if self.mean == "channel" else None
        return image, channel

    def scale_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor | None:
        return None if self.scale is None else torch.tensor(self.scale, dtype=torch.float32, device=device)


class InputTransform:
    """uint8 crops -> network input for one :class:`InputSpec` on one device: the one arithmetic.

    ``transform(crops, top, left, flips, alpha=None, out=None)``: ``crops`` uint8 NCHW
    (B, C, crop, crop) on the device; ``top``, ``left``, ``flips`` (B,) where each row was
    cut from its stored square (CPU tensors; the mean image is cut at the same place);
    ``alpha`` (B, C) the PCA colour-noise draws of a training batch (needs ``eigen``, the
    cache's ``(eigval, eigvec)``). Returns float32 NCHW (channels-last when asked), written
    into ``out`` when given (a buffer of the right shape the caller may overwrite).

    The host loader, the device loader, :func:`to_network_input` (predict, features,
    neighbors, the experiments) and the exported graph (:meth:`centre_constants`) all go
    through this class and :func:`normalise_`, so the operations and their order are the
    same everywhere, and so are the results, bit for bit.
    """

    def __init__(self, spec: InputSpec, device: torch.device | str = "cpu", *,
                 eigen: tuple[torch.Tensor, torch.Tensor] | None = None, channels_last: bool = False):
        self.spec = spec
        self.device = torch.device(device)
        mean_image, self.channel_mean = spec.mean_tensors(self.device)
        self.mean_cropper = augment.MeanCropper(mean_image, spec.crop) if mean_image is not None else None
        scale = spec.scale_tensor(self.device)
        self.scale = None if scale is None else scale.view(1, -1, 1, 1)
        self.eigen = eigen
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def shifts(self, top: torch.Tensor, left: torch.Tensor, flips: torch.Tensor,
               alpha: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(what to subtract, what to add) for rows cut at (top, left, flips), broadcastable to NCHW.

        The mean image cut at each row's offsets and mirrored with it, or the channel mean;
        the PCA colour offsets fold into the channel mean (one pass over the batch) and are
        added after the mean image otherwise.
        """
        offsets = None
        if alpha is not None:
            if self.eigen is None:
                raise ValueError("colour-noise draws given to an InputTransform built without eigen")
            # (B, C): tiny, so computed on the host and moved
            offsets = augment.pca_offsets(alpha, *self.eigen).to(self.device)[:, :, None, None]
        if self.mean_cropper is not None:
            return self.mean_cropper(top, left, flips), offsets
        if self.channel_mean is not None:
            mean = self.channel_mean.view(1, -1, 1, 1)
            return (mean if offsets is None else mean - offsets), None
        return None, offsets

    def __call__(self, crops: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flips: torch.Tensor,
                 alpha: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        if out is None:
            out = torch.empty(crops.shape, dtype=torch.float32, device=crops.device, memory_format=self.memory_format)
        # One float conversion for the whole batch, then in-place arithmetic: on a CPU several
        # times faster than a mixed uint8 - float32 operation.
        out.copy_(crops)
        return normalise_(out, *self.shifts(top, left, flips, alpha), self.scale)

    def centre_constants(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(shift (1, C, crop, crop) or (1, C, 1, 1), scale (1, C, 1, 1)) of the centre view, None where
        unused: what the exported graph applies with :func:`normalise_` to centre-crop pixels."""
        top, left, flips, _ = augment.view_params(1, self.spec.size, self.spec.crop, "center")
        shift, _ = self.shifts(top, left, flips)
        return (None if shift is None else shift.contiguous()), self.scale


def normalise_(x: torch.Tensor, shift: Optional[torch.Tensor], add: Optional[torch.Tensor],
               scale: Optional[torch.Tensor]) -> torch.Tensor:
    """``x`` (float32 pixels, 0..255) minus ``shift``, plus ``add``, times ``scale``, in place; returns x.

    The arithmetic of every input path, the exported graph's included (TorchScript compiles
    it, hence the ``Optional`` annotations).
    """
    if shift is not None:
        x.sub_(shift)
    if add is not None:
        x.add_(add)
    if scale is not None:
        x.mul_(scale)
    return x


def to_network_input(squares: torch.Tensor | np.ndarray, spec: InputSpec, views: str = "center",
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (N, S, S, C) squares -> float32 (N * V, C, crop, crop) network input, V = 1 or 10.

    With ``views="ten"``, rows i*10 .. i*10+9 are image i's ten views (the loader's order).
    """
    if views not in VIEWS:
        raise UserError(f"views {views!r}: choose center or ten")
    if isinstance(squares, np.ndarray):
        array = np.asarray(squares)
        # a read-only memory map: torch can only wrap writable memory, so read it into a copy
        batch = torch.from_numpy(array if array.flags.writeable else np.array(array))
    else:
        batch = torch.as_tensor(squares)
    if batch.dtype != torch.uint8 or batch.dim() != 4 or tuple(batch.shape[1:]) != (spec.size, spec.size, spec.channels):
        raise UserError(f"images of shape {tuple(batch.shape)} ({batch.dtype}); this model takes uint8 "
                        f"({spec.size}, {spec.size}, {spec.channels}) squares")
    top, left, flips, source = augment.view_params(len(batch), spec.size, spec.crop, views)
    crops = augment.gather_crops(batch, top, left, flips, spec.crop, source=source).permute(0, 3, 1, 2).to(device)
    return InputTransform(spec, device)(crops, top, left, flips)


def input_spec_of(info: dict) -> InputSpec:
    """The InputSpec of a loaded checkpoint (``load_model``'s info); UserError when it has none."""
    if info.get("input_spec") is None:
        raise UserError(f"{info.get('path')}: the checkpoint does not say how its input is prepared "
                        f"(no stored side and crop); it cannot be fed images")
    return info["input_spec"]


def read_square(path: str | os.PathLike, size: int, channels: int) -> np.ndarray:
    """One image file -> uint8 (S, S, C), decoded exactly as ``prepare`` stores it.

    UserError naming the file when it cannot be read. A colour photo for a grey model is
    decoded in RGB and converted to luma (PIL's "L" weights), as a user would expect.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not an image") from None
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    return square_from_bytes(data, size, channels, str(path))


def square_from_bytes(data: bytes, size: int, channels: int, name: str) -> np.ndarray:
    """An image file's bytes -> uint8 (S, S, C), as :func:`read_square` (an upload, say); UserError
    starting with ``name`` when they are not a readable image."""
    try:
        image, _warning = decode_square(data, size, channels, name=name)
    except BadImage as exc:
        if channels != 1 or "colour" not in str(exc):
            raise UserError(f"{name}: {exc}") from None
        try:
            rgb, _warning = decode_square(data, size, 3, name=name)
        except BadImage as exc2:
            raise UserError(f"{name}: {exc2}") from None
        image = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("L"))[:, :, None]
    return image if image.ndim == 3 else image[..., None]
