"""Batches from a cache: sharded, seeded, augmented the paper's way, on any device.

    loader = build_loader(cache, "train", batch_size=128, train=True, crop=224, seed=0,
                          rank=0, world_size=1, workers=2, device="cpu")
    for epoch in range(90):
        loader.set_epoch(epoch)
        for x, y in loader: ...

This module holds what both data paths share, and the host path itself:

* :func:`shard_indices` and :func:`draw_batch`: *which* images a batch holds and *how* they
  are cut: the one sequence of random draws, called by both paths (and so the reason
  they give identical batches);
* :class:`BatchReader`: the host stage's base, batch number -> what the device stage
  needs; picklable, so it runs in the caller's process (``workers == 0``) or in
  DataLoader worker processes, which open the cache from its path (its pixels never travel);
* :class:`Loader`: the host path. The host stage (:class:`CropReader`) reads the batch's
  rows from the memory-mapped uint8 cache and cuts the crops and mirrors with one
  indexing op; the device stage moves the uint8 crops (4x fewer bytes than float) and
  runs :class:`alexnet.data.preprocess.InputTransform` there: the mean (the mean image
  cut at the same offsets), the PCA colour offsets, the input scale, the float
  conversion and the layout. The device path (:mod:`alexnet.data.device_pipeline`)
  subclasses it.

Randomness: the shuffle of epoch e comes from a generator seeded with (seed, e), the
same on every rank, so the ranks' shards partition it; each batch's crops, flips and
colour noise come from a generator seeded with (seed, epoch, rank, batch number). So the
same seed gives the same batches whatever ``workers`` is, and every epoch differs.

Sharding follows ``torch.utils.data.DistributedSampler``: for training, the shuffled
indices are padded (by repeating the first ones) to a multiple of ``world_size``, or
truncated with ``drop_last=True``, and rank r takes every world_size-th index starting
at r. For evaluation nothing is padded: rank r takes indices r, r+W, ... so every
sample is seen exactly once across ranks, and the last batch may be short.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ..errors import UserError
from . import augment
from .cache import Cache, open_cache
from .preprocess import InputSpec, InputTransform

_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix-style mixing; stable across runs and platforms)."""
    h = 0x2545F4914F6CDD1D
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * _MIX[1] & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 31)) * _MIX[2] & 0xFFFFFFFFFFFFFFFF
        h = (h + _MIX[0]) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def generator(*parts: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(*parts))
    return g


def shard_indices(n: int, *, train: bool, seed: int, epoch: int, rank: int, world_size: int,
                  drop_last: bool = False) -> np.ndarray:
    """This rank's sample indices for one epoch (DistributedSampler semantics, see module doc)."""
    if train:
        order = torch.randperm(n, generator=generator(seed, epoch)).numpy()
        if drop_last:
            order = order[: (n // world_size) * world_size]
        else:
            total = -(-n // world_size) * world_size
            if total > n:
                order = np.concatenate([order, np.resize(order, total - n)])
        return order[rank::world_size]
    return np.arange(rank, n, world_size)


@dataclass(frozen=True)
class BatchPlan:
    """Everything that decides a batch's images and draws (besides the epoch and batch number)."""

    n: int                 # images in the split
    train: bool
    seed: int
    rank: int
    world_size: int
    drop_last: bool
    batch_size: int
    size: int              # stored side S
    crop: int
    channels: int
    flip: bool
    pca_std: float         # 0: no colour noise (always 0 for evaluation)
    views: str             # evaluation: "center" or "ten"

    def epoch_indices(self, epoch: int) -> np.ndarray:
        return shard_indices(self.n, train=self.train, seed=self.seed, epoch=epoch, rank=self.rank,
                             world_size=self.world_size, drop_last=self.drop_last)


class Draw(NamedTuple):
    """One batch, decided: which dataset rows, where each output row is cut, its colour noise."""

    rows: np.ndarray                # dataset rows of the batch's images, in batch order (int64)
    top: torch.Tensor               # (R,) per output row: R = B, or B * 10 for the ten views
    left: torch.Tensor
    flips: torch.Tensor             # (R,) bool
    alpha: torch.Tensor | None      # (B, C) PCA colour-noise draws (training with pca_std > 0)
    source: torch.Tensor | None     # (R,) output row -> batch image; None: row i is image i


def draw_batch(plan: BatchPlan, indices: np.ndarray, epoch: int, batch: int) -> Draw:
    """Batch ``batch`` of an epoch whose shard is ``indices``: the one sequence of random draws.

    Training: the rows in file order (reading locality; a batch's order carries no
    information), then from ``generator(seed, epoch, rank, batch)`` the crop offsets, the
    flips (drawn even with flips off, so an ablation changes nothing else) and the colour
    noise, in that order; then the rows reordered unflipped-first (the host path mirrors a
    slice in one op). Evaluation: the centre crop or the ten views, no randomness.
    """
    rows = indices[batch * plan.batch_size: (batch + 1) * plan.batch_size]
    n, size, crop = len(rows), plan.size, plan.crop
    if not plan.train:
        top, left, flips, source = augment.view_params(n, size, crop, plan.views)
        return Draw(np.asarray(rows, dtype=np.int64), top, left, flips, None, source)
    rows = np.sort(rows)
    g = generator(plan.seed, epoch, plan.rank, batch)
    top, left, flips = augment.random_crop_params(n, size, crop, g, flip=plan.flip)
    alpha = torch.randn(n, plan.channels, generator=g) * plan.pca_std if plan.pca_std > 0 else None
    order = torch.argsort(flips.to(torch.uint8), stable=True)
    return Draw(np.asarray(rows[order.numpy()], dtype=np.int64), top[order], left[order], flips[order],
                None if alpha is None else alpha[order], None)


class BatchReader:
    """The host stage: batch key (epoch, batch) -> what the device stage needs. Picklable for workers.

    Subclasses say what is read (:meth:`read`); the draw is :func:`draw_batch`'s for both.
    """

    def __init__(self, cache_path: str, split: str, plan: BatchPlan):
        self.cache_path, self.split, self.plan = cache_path, split, plan
        self._split = None
        self._indices = (None, None)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_split"] = None
        state["_indices"] = (None, None)
        return state

    def bind(self, split_obj) -> None:
        """Use an already-open split (same process) instead of opening the cache from its path."""
        self._split = split_obj

    def data(self):
        if self._split is None:
            self._split = open_cache(self.cache_path).split(self.split)
        return self._split

    def draw(self, key: tuple[int, int]) -> Draw:
        epoch, batch = key
        if self._indices[0] != epoch:
            self._indices = (epoch, self.plan.epoch_indices(epoch))
        return draw_batch(self.plan, self._indices[1], epoch, batch)

    def __call__(self, key: tuple[int, int]):
        draw = self.draw(key)
        labels = torch.from_numpy(self.data().labels[draw.rows].astype(np.int64))
        return self.read(draw), labels, draw

    def read(self, draw: Draw):
        raise NotImplementedError


class CropReader(BatchReader):
    """The host path's host stage: uint8 NCHW crops, cut straight from the memory map."""

    def read(self, draw: Draw) -> torch.Tensor:
        images = self.data().images
        out_rows = np.arange(len(draw.rows)) if draw.source is None else draw.source.numpy()
        args = (draw.top.numpy(), draw.left.numpy(), draw.flips.numpy(), self.plan.crop)
        if isinstance(images, np.ndarray):   # raw cache: crops read straight from the memory map
            return augment.crop_batch(images, draw.rows[out_rows], *args)
        return augment.crop_batch(images[draw.rows], out_rows, *args)   # compact cache: decode first


class Loader:
    """Iterable of (x float32 NCHW on device, y int64) batches; see :func:`alexnet.data.build_loader`."""

    data_path = "host"      # alexnet.data.device_pipeline.DATA_PATHS

    def __init__(self, cache: Cache, split: str, *, batch_size: int, train: bool, crop: int, seed: int,
                 rank: int, world_size: int, workers: int, device, flip: bool, pca_std: float, mean: str,
                 views: str, drop_last: bool, channels_last: bool, pin_memory: bool | None, prefetch: int,
                 with_index: bool, input_spec: InputSpec | None = None):
        self.cache = cache
        self.split_name = split
        data = cache.split(split)
        self.dataset_size = len(data)
        self.batch_size, self.train, self.crop, self.seed = batch_size, train, crop, seed
        self.rank, self.world_size, self.workers = rank, world_size, workers
        self.device = torch.device(device)
        self.views, self.drop_last, self.channels_last = views, drop_last, channels_last
        self.with_index = with_index
        self.epoch, self.start_batch = 0, 0
        self.num_classes = cache.num_classes
        self.classes = cache.classes
        self.pin_memory = (self.device.type == "cuda") if pin_memory is None else pin_memory
        self.prefetch = prefetch
        stats = cache.stats
        if (input_spec is None and mean in ("image", "channel")) or (train and pca_std > 0):
            if not stats:
                raise UserError(f"{cache.path}: no train statistics in this cache (it has no train split); "
                                f"use mean='none' and pca_std=0, or the training cache's statistics")
        if input_spec is None:   # the cache's own statistics, no input scale
            input_spec = InputSpec.from_stats(stats, size=cache.size, crop=crop, channels=cache.channels, mean=mean)
        self.input_spec = input_spec
        self.pca_std = float(pca_std) if train else 0.0
        eigen = None
        if self.pca_std > 0:
            eigen = (torch.as_tensor(stats["eigval"], dtype=torch.float32),
                     torch.as_tensor(stats["eigvec"], dtype=torch.float32))
        self.transform = InputTransform(input_spec, self.device, eigen=eigen, channels_last=channels_last)
        self.plan = BatchPlan(n=self.dataset_size, train=train, seed=seed, rank=rank, world_size=world_size,
                              drop_last=drop_last, batch_size=batch_size, size=cache.size, crop=crop,
                              channels=cache.channels, flip=flip, pca_std=self.pca_std, views=views)
        self.reader = self._make_reader()
        if workers == 0:
            self.reader.bind(data)  # same process: use the already-open memmap
        self._dataloader = None

    def _make_reader(self) -> BatchReader:
        return CropReader(self.cache.path, self.split_name, self.plan)

    # -- sizes -----------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (training: including DistributedSampler padding)."""
        n, w = self.dataset_size, self.world_size
        if not self.train:
            return len(range(self.rank, n, w))
        return n // w if self.drop_last else -(-n // w)

    def __len__(self) -> int:
        if self.train and self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select epoch ``epoch``'s shuffle and augmentation (deterministic from (seed, epoch)); the next
        pass yields its batches from number ``start_batch`` on (a resume mid-epoch seeks, reading
        nothing before it), the same batches an uninterrupted pass yields there."""
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def batch_numbers(self) -> list[int]:
        """The batches a pass over the current epoch reads, in order: where an epoch's list is made
        (from ``start_batch`` on, :meth:`set_epoch`)."""
        return list(range(self.start_batch, len(self)))

    # -- iteration -------------------------------------------------------------------------
    def _host_batches(self):
        """(payload, labels, draw) of each batch of the epoch, read here or in worker processes."""
        keys = [(self.epoch, b) for b in self.batch_numbers()]
        if self.workers == 0:
            for key in keys:
                yield self.reader(key)
            return
        if self._dataloader is None:
            self._keys = _KeyList()
            self._dataloader = torch.utils.data.DataLoader(
                _ReaderDataset(self.reader), batch_size=None, sampler=self._keys, num_workers=self.workers,
                pin_memory=self.pin_memory, prefetch_factor=self.prefetch, persistent_workers=True,
                collate_fn=_identity,
                # Its own generator: a DataLoader otherwise draws its workers' base seed from the
                # global torch RNG when its first iterator starts, shifting dropout's random stream
                # by one draw at a point that differs between a resumed and an uninterrupted run.
                generator=torch.Generator())
        self._keys.keys = keys
        yield from self._dataloader

    def _device_stage(self, crops: torch.Tensor, labels: torch.Tensor, draw: Draw):
        """uint8 crops -> (x, labels, dataset rows) on the device."""
        if self.workers == 0 and self.pin_memory:
            crops = crops.pin_memory()
        crops = crops.to(self.device, non_blocking=self.pin_memory)
        labels = labels.to(self.device, non_blocking=self.pin_memory)
        x = self.transform(crops, draw.top, draw.left, draw.flips, draw.alpha)
        return x, labels, torch.from_numpy(draw.rows)

    def __iter__(self):
        for batch in self._host_batches():
            x, labels, rows = self._device_stage(*batch)
            yield (x, labels, rows) if self.with_index else (x, labels)

    def close(self) -> None:
        """Stop the worker processes (they also stop when the loader is garbage-collected)."""
        self._dataloader = None


class _KeyList(torch.utils.data.Sampler):
    """The batch keys of the current epoch; replaced in place so persistent workers stay."""

    def __init__(self):
        self.keys = []

    def __iter__(self):
        return iter(list(self.keys))

    def __len__(self):
        return len(self.keys)


class _ReaderDataset(torch.utils.data.Dataset):
    def __init__(self, reader: BatchReader):
        self.reader = reader

    def __getitem__(self, key):
        return self.reader(key)


def _identity(x):
    return x
