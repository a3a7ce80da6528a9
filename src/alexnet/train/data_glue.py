"""Transitional data glue of the training loop: the cache it trains on, its loaders, input scaling.

Moved here unchanged from the old ``train/loop.py``; ``alexnet.data.resolve`` (a ``--data``
argument -> a cache, one rule) and ``alexnet.data.preprocess`` (uint8 images -> network
input, one function) replace this module.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..console import info
from ..data import build_loader, open_cache, prepare
from ..data.sources import SHORTHANDS
from ..errors import UserError
from ..locations import expand_source
from . import distributed as dist_utils
from .config import Config


def derived_cache(cache, limits: dict[str, int] | None = None, stats: dict | None = None, seed: int = 0):
    """Transitional: :meth:`Cache.subset` plus :meth:`Cache.with_stats`."""
    derived = cache.subset(limits, seed=seed)
    return derived if stats is None else derived.with_stats(stats)


def ensure_cache(config: Config, ctx: dist_utils.DistContext, quiet: bool = False):
    """Open the config's cache; build it from ``data.source`` with ``prepare`` when missing."""
    path = config.cache_dir()
    if ctx.is_main and not (path / "meta.json").is_file():
        if not config.data.source:
            raise UserError(f"{path}: no such cache, and the config names no data.source to build it from")
        source = expand_source(config.data.source)
        if source not in SHORTHANDS and not os.path.exists(source):
            raise UserError(f"{source}: no such file or directory (data.source, needed to build the cache {path})")
        info(f"preparing {config.data.source} -> {path} (once; later runs reuse it)", quiet)
        path.parent.mkdir(parents=True, exist_ok=True)
        prepare(source, path, size=config.data.size, quiet=quiet)
    dist_utils.barrier(ctx)
    return open_cache(path)


def _make_loader(cache, split: str, config: Config, ctx, *, train: bool, batch_size: int, views: str = "center",
                 workers: int | None = None):
    d = config.data
    kwargs = dict(batch_size=batch_size, train=train, crop=d.crop, seed=config.train.seed,
                  rank=ctx.rank, world_size=ctx.world_size, workers=d.workers if workers is None else workers,
                  device=ctx.device,
                  mean=d.mean)
    if train:
        kwargs.update(flip=d.flip, pca_std=d.pca_std)
    else:
        kwargs.update(views=views)
    return build_loader(cache, split, **kwargs)


def input_scale_for(config: Config, cache) -> list[float] | None:
    """Per-channel multipliers applied after mean subtraction (``data.scale = "std"``), or None.

    The paper feeds raw 0..255 values minus the mean, which suits its N(0, 0.01)
    initialisation; He-initialised variants expect unit-variance inputs.
    """
    if config.data.scale != "std":
        return None
    return [float(1.0 / max(s, 1e-6)) for s in np.asarray(cache.stats["channel_std"]).reshape(-1)]


def apply_input_scale(x: torch.Tensor, scale: list[float] | None) -> torch.Tensor:
    if not scale:
        return x
    return x * torch.tensor(scale, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
