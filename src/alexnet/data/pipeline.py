"""Which data path runs, chosen in one place: :func:`build_loader`.

The host loader (:mod:`alexnet.data.loader`: crops cut on the CPU, the arithmetic on the
device) or the device loader (:mod:`alexnet.data.device_pipeline`: whole uint8 squares to
the device, crops, flips, colour noise, mean and scale there, JPEGs decoded by nvJPEG on
CUDA); both draw through one function and compute through one transform, and give
identical tensors for the same seed (tests/test_device_pipeline.py). ``data.path``
chooses: "auto" (the host path on a CPU, the device path on CUDA), "host" or "device"
(on any device). A training run prints the path in its first lines.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from .cache import Cache, open_cache
from .device_pipeline import DeviceLoader, choose_data_path, torchvision_available
from .loader import Loader
from .preprocess import InputSpec


def default_crop(size: int) -> int:
    """The paper's 224 from 256; for other stored sizes the same 7/8 ratio (e.g. 28 from 32)."""
    return 224 if size >= 256 else max(1, round(size * 224 / 256))


def build_loader(cache, split: str = "train", batch_size: int = 128, train: bool = True, crop: int | None = None,
                 seed: int = 0, rank: int = 0, world_size: int = 1, workers: int = 0, device="cpu",
                 flip: bool = True, pca_std: float = 0.1, mean: str = "image", views: str = "center",
                 drop_last: bool = False, channels_last: bool = False, pin_memory: bool | None = None,
                 prefetch: int = 2, with_index: bool = False, input_spec: InputSpec | None = None,
                 data_path: str = "auto") -> Loader:
    """The paper's input pipeline over a prepared cache (object or path). See the module doc.

    train=True: random ``crop`` x ``crop`` patches, horizontal flips (``flip``), PCA colour
    noise with alpha ~ N(0, ``pca_std``), shuffled per epoch. train=False: ``views`` "center"
    (one centre crop) or "ten" (the paper's 10 views: rows i*10..i*10+9 are image i's views).
    ``mean``: "image" (the paper's per-pixel mean), "channel" or "none".
    ``with_index=True`` yields (x, y, dataset indices) so predictions can be tied to files.
    ``input_spec``: how to turn the images into network input (a checkpoint's or the
    trainer's :class:`~alexnet.data.preprocess.InputSpec`: crop, mean, scale); it overrides
    ``crop`` and ``mean``, and its stored side must be the cache's. Default: the cache's own
    statistics with ``mean`` and no input scale.
    ``data_path``: the ``data.path`` setting, "auto" (the host loader on a CPU, the device
    path on CUDA), "host" or "device", or a key of
    :data:`~alexnet.data.device_pipeline.DATA_PATHS` (resolved by
    :func:`~alexnet.data.device_pipeline.choose_data_path`).
    """
    if not isinstance(cache, Cache):
        cache = open_cache(cache)
    if input_spec is not None:
        if (input_spec.size, input_spec.channels) != (cache.size, cache.channels):
            raise UserError(f"{cache.path}: images stored at {cache.size} px with {cache.channels} channel(s), but the "
                            f"model takes {input_spec.size} px with {input_spec.channels}; prepare the data with "
                            f"--size {input_spec.size}")
        crop, mean = input_spec.crop, input_spec.mean
    if crop is None:
        crop = default_crop(cache.size)
    if not 1 <= crop <= cache.size:
        raise UserError(f"crop {crop}: must be between 1 and the cache's image size {cache.size}")
    if batch_size < 1:
        raise UserError(f"batch size {batch_size}: must be at least 1")
    if mean not in ("image", "channel", "none"):
        raise UserError(f"mean {mean!r}: choose 'image', 'channel' or 'none'")
    if views not in ("center", "centre", "ten"):
        raise UserError(f"views {views!r}: choose 'center' or 'ten'")
    if not (world_size >= 1 and 0 <= rank < world_size):
        raise UserError(f"rank {rank} / world size {world_size}: need 0 <= rank < world_size")
    if workers < 0:
        raise UserError(f"workers {workers}: must be >= 0")
    if pca_std < 0:
        raise UserError(f"pca_std {pca_std}: must be >= 0")
    # (torchvision is imported, slowly, only where nvJPEG could be used)
    nvjpeg = torch.device(device).type == "cuda" and cache.storage == "jpeg" and torchvision_available()
    data_path = choose_data_path(device, cache.storage, nvjpeg, data_path)
    kwargs = dict(batch_size=batch_size, train=train, crop=crop, seed=seed, rank=rank, world_size=world_size,
                  workers=workers, device=device, flip=flip, pca_std=pca_std, mean=mean,
                  views="center" if views == "centre" else views, drop_last=drop_last,
                  channels_last=channels_last, pin_memory=pin_memory, prefetch=prefetch, with_index=with_index,
                  input_spec=input_spec)
    if data_path != "host":
        return DeviceLoader(cache, split, data_path=data_path, **kwargs)
    return Loader(cache, split, **kwargs)
