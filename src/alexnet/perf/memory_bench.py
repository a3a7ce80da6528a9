"""Does the memory plumbing pay? The allocator and output-buffer reuse, each timed with and without.

    alexnet bench --only memory [--quick]

Two mechanisms exist only for speed, and stay only where these rows show that they pay
(docs/performance.md has the figures and the decisions):

* ``train_step_allocator``: the training step (the default fast path, exactly the
  trainer's step) in three worker processes that differ in nothing but the allocator:
  jemalloc preloaded with freed pages kept (what ``alexnet`` re-executes itself under,
  :mod:`alexnet.runtime`), glibc malloc with the tunables the runtime once fell back to
  (:data:`GLIBC_TUNABLES`), and glibc malloc as it comes (the reference). The repetitions
  alternate between the three.
* ``loader_output_reuse``: the host loader's batches (batch 128 of random 224 crops of a
  256 px raw cache of real ILSVRC photos, flips, PCA noise, mean image; ``workers=0``) with
  a fresh output tensor per batch (the loader as it is) against the same two stages
  writing every batch into one reused tensor (the most any reuse scheme could save), under
  jemalloc and under plain glibc malloc, alternating.

The cache for the loader rows is built from the shared ILSVRC sample
(:func:`alexnet.perf.data_bench.sample_path`); without it those rows are skipped.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

import torch

from ..data import build_loader, prepare
from ..runtime import ENV_MARKER, allocator_environment

ALLOCATORS = ("jemalloc", "glibc", "system")


# The glibc tunables alexnet.runtime applied where jemalloc was missing, until this row showed
# them slower than plain malloc: transparent huge pages for large blocks, the largest mmap
# threshold (32 MiB on 64-bit), no trimming. Kept here so that the row can be measured again.
GLIBC_TUNABLES = ("glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432:"
                  "glibc.malloc.trim_threshold=68719476736")


def allocator_env(base: dict[str, str], name: str) -> dict[str, str] | None:
    """``base`` (an environment without our allocator settings) running allocator ``name``
    (one of :data:`ALLOCATORS`); None when it is not available here (no libjemalloc)."""
    env = dict(base)
    env["ALEXNET_ALLOCATOR"] = "system"
    if name == "jemalloc":
        chosen, changes = allocator_environment("jemalloc", env)
        if chosen != "jemalloc":
            return None
        env.update(changes)
        env["ALEXNET_ALLOCATOR"] = "jemalloc"
    elif name == "glibc":
        env["GLIBC_TUNABLES"] = GLIBC_TUNABLES
    env[ENV_MARKER] = name
    return env


def make_cache(sample: Path, images: int) -> str:
    """A raw 256 px cache of the first ``images`` photos of the sample archive, in a temporary folder."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    tree = tmp / "tree"
    with tarfile.open(sample) as tar:
        members = [m for m in tar.getmembers() if m.isfile()][:images]
        for i, m in enumerate(members):
            folder = tree / "train" / f"c{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(m) as f:
                (folder / Path(m.name).name).write_bytes(f.read())
    prepare(tree, tmp / "cache", size=256, storage="raw", workers=1, quiet=True)
    return str(tmp / "cache")


def loader_work(spec: dict):
    """One repetition = ``spec["batches"]`` batches of the host loader, fresh or reused outputs."""
    loader = build_loader(spec["cache"], "train", batch_size=spec["batch"], train=True, crop=spec["crop"],
                          seed=0, workers=0, device="cpu", pca_std=0.1, mean="image", data_path="host")
    per_epoch = len(loader)
    passes = {"epoch": -1, "batches": iter(())}
    reuse: dict[tuple, torch.Tensor] = {}
    keys = ((k // per_epoch, k % per_epoch) for k in range(1 << 62))

    def fresh():       # the loader itself, pass after pass
        try:
            return next(passes["batches"])[0]
        except StopIteration:
            passes["epoch"] += 1
            loader.set_epoch(passes["epoch"])
            passes["batches"] = iter(loader)
            return next(passes["batches"])[0]

    def reused():      # the same two stages (reader, transform), every batch written into one tensor
        crops, _, draw = loader.reader(next(keys))
        out = reuse.get(tuple(crops.shape))
        if out is None:
            out = reuse[tuple(crops.shape)] = torch.empty(crops.shape, dtype=torch.float32)
        return loader.transform(crops, draw.top, draw.left, draw.flips, draw.alpha, out=out)

    one = reused if spec["reuse"] else fresh

    def work():
        for _ in range(spec["batches"]):
            one()
    return work
