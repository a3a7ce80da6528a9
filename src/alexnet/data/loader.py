"""Batches from a cache: sharded, seeded, augmented the paper's way, on any device.

    loader = build_loader(cache, "train", batch_size=128, train=True, crop=224, seed=0,
                          rank=0, world_size=1, workers=2, device="cpu")
    for epoch in range(90):
        loader.set_epoch(epoch)
        for x, y in loader: ...

Work is split in two stages so that each runs where it is cheapest:

1. *host* (in the calling process when ``workers == 0``, else in DataLoader worker
   processes): read the batch's rows from the memory-mapped uint8 cache (sorted, for
   locality) and cut the crops/mirrors with one indexing op -> uint8 NHWC crops. The
   cache is opened lazily in each worker: only its path travels, never its pixels.
2. *device* (calling process, on ``device``): one float conversion fused with the mean
   subtraction (mean image cropped at the same offsets), the PCA colour offsets, and
   NCHW layout. Moving uint8 to the GPU sends 4x fewer bytes than float.

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

import sys

import numpy as np
import torch

from ..errors import UserError
from . import augment
from .cache import Cache, open_cache
from .preprocess import InputSpec

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


class _BatchReader:
    """Stage 1 (host): batch number -> uint8 crops + what stage 2 needs. Picklable for workers."""

    def __init__(self, cache_path: str, split: str, plan: dict):
        self.cache_path, self.split, self.plan = cache_path, split, plan
        self._split = None
        self._indices = (None, None)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_split"] = None
        state["_indices"] = (None, None)
        return state

    def bind(self, split_obj) -> None:
        self._split = split_obj

    def _data(self):
        if self._split is None:
            self._split = open_cache(self.cache_path).split(self.split)
        return self._split

    def indices(self, epoch: int) -> np.ndarray:
        if self._indices[0] != epoch:
            p = self.plan
            self._indices = (epoch, shard_indices(p["n"], train=p["train"], seed=p["seed"], epoch=epoch,
                                                  rank=p["rank"], world_size=p["world_size"], drop_last=p["drop_last"]))
        return self._indices[1]

    def __call__(self, key: tuple[int, int]):
        epoch, batch = key
        p = self.plan
        idx = self.indices(epoch)[batch * p["batch_size"]: (batch + 1) * p["batch_size"]]
        if p["train"]:
            idx = np.sort(idx)  # reading rows in file order; a batch's order carries no information
        data = self._data()
        n, size, crop = len(idx), p["size"], p["crop"]
        alpha = None
        rows = np.arange(n)
        if p["train"]:
            g = generator(p["seed"], epoch, p["rank"], batch)
            top, left, flips = augment.random_crop_params(n, size, crop, g, flip=p["flip"])
            if p["pca_std"] > 0:
                alpha = torch.randn(n, p["channels"], generator=g) * p["pca_std"]
            # unflipped rows first, flipped rows last: the mirror is then one flip of a slice
            order = torch.argsort(flips.to(torch.uint8), stable=True)
            idx, top, left, flips = idx[order.numpy()], top[order], left[order], flips[order]
            alpha = alpha[order] if alpha is not None else None
        elif p["views"] == "ten":
            top, left, flips = augment.ten_view_params(n, size, crop)
            rows = np.repeat(rows, 10)
        else:
            top, left, flips = augment.center_params(n, size, crop)
        labels = torch.from_numpy(data.labels[idx].astype(np.int64))
        if isinstance(data.images, np.ndarray):   # raw cache: crops read straight from the memory map
            crops = augment.crop_batch(data.images, idx[rows], top.numpy(), left.numpy(), flips.numpy(), crop)
        else:                                     # compact cache: decode the batch's images first
            crops = augment.crop_batch(data.images[idx], rows, top.numpy(), left.numpy(), flips.numpy(), crop)
        return crops, labels, top, left, flips, alpha, torch.from_numpy(np.asarray(idx, dtype=np.int64))


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
        self.mean_mode = input_spec.mean
        self.mean_image, self.channel_mean = input_spec.mean_tensors(self.device)
        self.mean_cropper = augment.MeanCropper(self.mean_image, crop) if self.mean_image is not None else None
        self.scale = input_spec.scale_tensor(self.device)
        self.pca_std = float(pca_std) if train else 0.0
        if self.pca_std > 0:
            self.eigval = torch.as_tensor(stats["eigval"], dtype=torch.float32)
            self.eigvec = torch.as_tensor(stats["eigvec"], dtype=torch.float32)
        plan = {"n": self.dataset_size, "train": train, "seed": seed, "rank": rank, "world_size": world_size,
                "drop_last": drop_last, "batch_size": batch_size, "size": cache.size, "crop": crop,
                "channels": cache.channels, "flip": flip, "pca_std": self.pca_std, "views": views}
        self.reader = _BatchReader(cache.path, split, plan)
        if workers == 0:
            self.reader.bind(data)  # same process: use the already-open memmap
        self._dataloader = None
        self._buffers = _BufferPool(self.device, channels_last)

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

    # -- iteration -------------------------------------------------------------------------
    def _host_batches(self):
        keys = [(self.epoch, b) for b in range(self.start_batch, len(self))]
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

    def __iter__(self):
        for crops, labels, top, left, flips, alpha, idx in self._host_batches():
            if self.workers == 0 and self.pin_memory:
                crops = crops.pin_memory()
            non_blocking = self.pin_memory
            crops = crops.to(self.device, non_blocking=non_blocking)
            labels = labels.to(self.device, non_blocking=non_blocking)
            mean_crops = None
            if self.mean_cropper is not None:
                mean_crops = self.mean_cropper(top, left, flips)
            offsets = None
            if alpha is not None:  # (B, C): tiny, so computed on the host and moved
                offsets = augment.pca_offsets(alpha, self.eigval, self.eigvec).to(self.device)
            x = augment.to_network_input(crops, mean_crops=mean_crops, channel_mean=self.channel_mean,
                                         offsets=offsets, scale=self.scale, channels_last=self.channels_last,
                                         out=self._buffers.get(tuple(crops.shape)))
            if self.with_index:
                yield x, labels, idx
            else:
                yield x, labels

    def close(self) -> None:
        """Stop the worker processes (they also stop when the loader is garbage-collected)."""
        self._dataloader = None


class _BufferPool:
    """Reuses output tensors on CPU once nobody holds them any more.

    A fresh 77 MB tensor per batch costs more in page faults than the arithmetic that
    fills it (measured 3-6x here). A buffer is handed out again only when the pool holds
    the only reference to it and to its storage (no caller variable, view or saved
    tensor), so reuse can never overwrite a batch someone still uses. CUDA's caching
    allocator already does this, so the pool is CPU-only.
    """

    def __init__(self, device: torch.device, channels_last: bool, size: int = 3):
        self.enabled = device.type == "cpu" and hasattr(torch._C, "_storage_Use_Count")
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.size = size
        self.buffers: list[torch.Tensor] = []

    @staticmethod
    def _refs(buffers: list, i: int) -> tuple[int, int]:
        t = buffers[i]
        return sys.getrefcount(t), torch._C._storage_Use_Count(t.untyped_storage()._cdata)

    def get(self, shape: tuple):
        if not self.enabled:
            return None
        # What the counts are for a tensor held only by a list, measured the same way (so a
        # Python version that counts references differently cannot make a held buffer look free).
        baseline = self._refs([torch.empty(0)], 0)
        for i in range(len(self.buffers)):  # (no loop variable holding a buffer: it would count)
            if tuple(self.buffers[i].shape) == shape and self._refs(self.buffers, i) == baseline:
                return self.buffers[i]
        t = torch.empty(shape, dtype=torch.float32, memory_format=self.fmt)
        if len(self.buffers) >= self.size:
            self.buffers.pop(0)
        self.buffers.append(t)
        return t


class _KeyList(torch.utils.data.Sampler):
    """The batch keys of the current epoch; replaced in place so persistent workers stay."""

    def __init__(self):
        self.keys = []

    def __iter__(self):
        return iter(list(self.keys))

    def __len__(self):
        return len(self.keys)


class _ReaderDataset(torch.utils.data.Dataset):
    def __init__(self, reader: _BatchReader):
        self.reader = reader

    def __getitem__(self, key):
        return self.reader(key)


def _identity(x):
    return x
