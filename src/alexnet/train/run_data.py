"""The data a run trains and evaluates on: its cache, the images it reads, its splits, its loaders.

    data = RunData.open(config, ctx, quiet)     # prepares the cache first when it is missing (rank 0)
    loader = data.loader(config.data.train_split, train=True, batch_size=64)

A cache without the configured validation split (CIFAR-10, Fashion-MNIST) validates on
its test split, and one without a test split (Imagewoof, ILSVRC-2012) runs the final
evaluation on the validation split, each with a note in the log and the run's summary. ``data.train_subset`` and
``data.val_subset`` make a run read a fixed, seeded random subset (smoke runs).

The trainer (alexnet.train.trainer) builds this before anything else that takes time, so
that a start that fails leaves no run folder behind.
"""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass

import torch.distributed as dist

from ..data import Cache, build_loader, open_cache
from ..data.preprocess import InputSpec
from ..data.resolve import ensure_prepared, is_cache
from ..options import warn_once
from . import distributed as dist_utils
from .config import Config

# Seconds rank 0 waits before preparing a missing cache: tests make a small prepare outlast the
# collective timeout with it (tests/test_train_safety.py); 0 otherwise.
PREPARE_DELAY_S = float(os.environ.get("ALEXNET_TEST_PREPARE_DELAY_S", "0"))


def open_training_cache(config: Config, ctx: dist_utils.DistContext, quiet: bool = False) -> Cache:
    """The config's cache, prepared from ``data.source`` first when it does not exist (rank 0 only;
    the other ranks wait, then open it). The rule is :mod:`alexnet.data.resolve`'s.

    A prepare can take hours, far longer than a collective may wait for a dead rank
    (train.dist_timeout): the other ranks wait in a barrier of a gloo group of their own,
    whose deadline is train.prepare_timeout. A rank 0 that dies meanwhile closes its
    connections (and torchrun stops the job), so they do not wait out that deadline."""
    group = (dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=config.train.prepare_timeout))
             if ctx.distributed else None)
    try:
        if ctx.is_main:
            if not is_cache(config.cache_dir()):
                time.sleep(PREPARE_DELAY_S)
            ensure_prepared(config.data.source, config.data.size, name=config.data.name or None,
                            cache=config.data.cache or None, quiet=quiet, what="data.source")
        if group is not None:
            dist.barrier(group=group)
    finally:
        if group is not None:
            dist.destroy_process_group(group)
    return open_cache(config.cache_dir())


@dataclass
class RunData:
    """What one run reads, decided once at its start; :meth:`loader` gives each split's loader."""

    config: Config
    ctx: dist_utils.DistContext
    cache: Cache              # the whole cache: its path, classes and statistics go into checkpoints
    selection: Cache          # what the run reads: the cache, or the seeded subset data.*_subset ask for
    workers: int              # loader processes (none for a subset: it is small)
    val_split: str            # "" when the cache has neither the validation nor the test split
    test_split: str           # the split of the final evaluation ("" for none)
    notes: list[str]          # what differs from the config's splits, for the log and the summary
    input_spec: InputSpec     # how images become network input (stored with every checkpoint)

    @classmethod
    def open(cls, config: Config, ctx: dist_utils.DistContext, quiet: bool = False) -> "RunData":
        c = config
        cache = open_training_cache(c, ctx, quiet)
        if cache.num_classes < 2 and ctx.is_main:
            warn_once(f"{cache.path}: one class only ({', '.join(cache.classes)}): every image has the same label, "
                      f"so the loss drops to 0 and there is nothing to learn; a folder of images needs one "
                      f"subfolder per class")
        # a split without labels (the ILSVRC-2012 test set) can neither validate nor test
        val_split, test_split, notes = choose_splits(c, [s for s in cache.splits if cache.labelled(s)])
        limits = {c.data.train_split: c.data.train_subset}
        limits.update({split: c.data.val_subset for split in (val_split, test_split) if split})
        subset = any(limits.values())
        selection = cache.subset(limits, seed=c.train.seed) if subset else cache
        # How images become network input: stored with every checkpoint, so that eval, predict
        # and features feed the model exactly this way.
        input_spec = InputSpec.from_stats(cache.stats, size=cache.size, crop=c.data.crop, channels=cache.channels,
                                          mean=c.data.mean, scale=c.data.scale)
        return cls(c, ctx, cache, selection, 0 if subset else c.data.workers, val_split, test_split, notes,
                   input_spec)

    @property
    def num_classes(self) -> int:
        return self.cache.num_classes

    def loader(self, split: str, *, train: bool, batch_size: int, views: str = "center"):
        """This rank's loader of ``split``: augmented and shuffled per epoch when ``train``, else
        the evaluation views (centre or ten) in order."""
        c, ctx = self.config, self.ctx
        extra = dict(flip=c.data.flip, pca_std=c.data.pca_std) if train else dict(views=views)
        return build_loader(self.selection, split, batch_size=batch_size, train=train, seed=c.train.seed,
                            rank=ctx.rank, world_size=ctx.world_size, workers=self.workers, device=ctx.device,
                            input_spec=self.input_spec, with_index=train and c.train.log_samples,
                            data_path=c.data.path, **extra)


def choose_splits(config: Config, splits) -> tuple[str, str, list[str]]:
    """(validation split, final-evaluation split, notes) for a cache with ``splits``."""
    c = config
    val_split = c.data.val_split if c.data.val_split in splits else c.data.test_split
    if val_split and val_split not in splits:
        val_split = ""
    notes = ([f"the cache has no '{c.data.val_split}' split: validating on '{val_split}'"]
             if val_split and val_split != c.data.val_split else [])
    test_split = c.data.test_split if c.data.test_split in splits else ""
    if c.data.test_split and not test_split and val_split:
        # Like `alexnet eval`: no test split (Imagewoof, ILSVRC) -> the final evaluation, with
        # the configured views, runs on the validation split instead of silently not at all.
        test_split = val_split
        notes.append(f"the cache has no '{c.data.test_split}' split with labels: the final "
                     f"{c.train.test_views}-view evaluation runs on '{val_split}'")
    return val_split, test_split, notes
