"""fc7 features (the last hidden layer, 4096-d for the paper model) of a cache split or image files.

The paper (section 6.1) compares images by "the feature activations induced at the
last, 4096-dimensional hidden layer". Every registered model has ``embed(x)`` =
fc7 after its ReLU; this module feeds it the same input the evaluation does (the
checkpoint's InputSpec through :func:`alexnet.data.preprocess.to_network_input`: the
centre crop, minus the mean image or channel mean the model was trained with, times its
input scale) in
batches, and writes the result as a memory-mapped ``.npy`` (float32, N x D), so a
1.2 M x 4096 database (19.7 GB) is never held in memory, plus a ``.json`` sidecar
saying what the rows are (checkpoint, cache, split, count), which ``neighbors
--features`` checks before re-using the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint import load_model
from ..console import progress as progress_bar, warn
from ..data import open_cache
from ..data.resolve import ensure_prepared
from ..data.preprocess import InputSpec, input_spec_of, read_square, to_network_input
from ..errors import UserError
from ..files import atomic_write, atomic_write_with
from ..runtime import default_device


def sidecar_path(features_path: str | os.PathLike) -> Path:
    p = Path(features_path)
    return p.with_name(p.stem + ".json")


@torch.no_grad()
def embed_batches(model: nn.Module, spec: InputSpec, images, batch_size: int, device,
                  out: np.ndarray | None = None, progress: bool = False, desc: str = "fc7") -> np.ndarray:
    """fc7 of ``images`` (an (N, S, S, C) uint8 array or memmap, read ``batch_size`` at a time),
    fed through the one input path (the checkpoint's InputSpec, centre crop)."""
    model.eval()
    n = len(images)
    bar = progress_bar(n, desc, "img", disable=not progress)
    chunks = []
    try:
        for start in range(0, n, batch_size):
            block = np.asarray(images[start:start + batch_size])
            feats = model.embed(to_network_input(block, spec, device=device)).float().cpu().numpy()
            if out is not None:
                out[start:start + len(feats)] = feats
            else:
                chunks.append(feats)
            bar.update(len(block))
    finally:
        bar.close()
    if out is not None:
        return out
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def feature_dim(model: nn.Module, spec: InputSpec, device) -> int:
    probe = np.zeros((1, spec.size, spec.size, spec.channels), np.uint8)
    with torch.no_grad():
        model.eval()
        return int(model.embed(to_network_input(probe, spec, device=device)).shape[1])


def extract_features(checkpoint: str | os.PathLike, cache_path: str | os.PathLike, out: str | os.PathLike, *,
                     split: str = "train", batch_size: int = 256, device: str | None = None, limit: int = 0,
                     progress: bool = False) -> dict:
    """fc7 of every image of ``split`` (in cache order) -> ``out`` (.npy, float32) + sidecar JSON."""
    device = default_device(device)
    model, info = load_model(checkpoint, device)
    spec = input_spec_of(info)
    cache_path = ensure_prepared(cache_path, spec.size, quiet=not progress)   # a cache, or a source prepared once
    cache = open_cache(cache_path)
    check_cache_fits(spec, cache, cache_path)
    images = cache.split(split).images
    n = len(images) if not limit else min(limit, len(images))
    dim = feature_dim(model, spec, device)
    out = Path(out)
    if out.suffix != ".npy":
        raise UserError(f"{out}: features are written as .npy; give a name ending in .npy")
    def write_to(tmp: Path) -> None:   # filled in place, batch by batch, then renamed
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        embed_batches(model, spec, images[:n] if isinstance(images, np.ndarray) else _Head(images, n),
                      batch_size, device, out=array, progress=progress, desc=f"fc7 {split}")
        array.flush()
        del array
    atomic_write_with(out, write_to, what="features")
    meta = {"checkpoint": str(Path(info["path"]).resolve()), "model": info["name"], "cache": str(Path(cache_path).resolve()),
            "split": split, "count": n, "dim": dim, "dtype": "float32", "crop": spec.crop,
            "mean": spec.mean, "epoch": info.get("epoch"), "step": info.get("step")}
    atomic_write(sidecar_path(out), json.dumps(meta, indent=2) + "\n", what="the features' description")
    return {**meta, "path": str(out)}


class _Head:
    """The first ``n`` rows of an indexable image store (memmap or on-demand JPEG decoder)."""

    def __init__(self, images, n: int):
        self.images, self.n = images, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: slice):
        start, stop, _ = key.indices(self.n)
        return self.images[start:stop]


def load_features(path: str | os.PathLike, *, split: str, count: int, checkpoint: str | None = None) -> np.ndarray:
    """A saved feature file, memory-mapped, after checking that it describes ``split`` of this cache."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such feature file (make one with 'alexnet features')")
    try:
        feats = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable .npy feature file ({exc})") from None
    if feats.ndim != 2:
        raise UserError(f"{path}: expected an (N, D) array, got shape {feats.shape}")
    side = sidecar_path(path)
    if side.is_file():
        meta = json.loads(side.read_text())
        if meta.get("split") != split:
            raise UserError(f"{path}: features of split {meta.get('split')!r}, but the search uses {split!r}")
        if checkpoint is not None and meta.get("checkpoint") != str(Path(checkpoint).resolve()):
            warn(f"{path} was computed with {meta.get('checkpoint')}, not {checkpoint}")
    if len(feats) != count:
        raise UserError(f"{path}: {len(feats):,} feature rows, but split {split!r} has {count:,} images")
    return feats


def check_cache_fits(spec: InputSpec, cache, cache_path) -> None:
    """The cache's images are what the checkpoint's InputSpec takes (stored side, channels)."""
    if spec.channels != cache.channels:
        raise UserError(f"{cache_path}: {cache.channels}-channel images, but the checkpoint expects "
                        f"{spec.channels} channels")
    if spec.size != cache.size:
        raise UserError(f"{cache_path}: images stored at {cache.size} px, the checkpoint was trained on "
                        f"{spec.size} px images")


def load_query_images(paths: list[str], spec: InputSpec) -> list[np.ndarray]:
    """Image files -> S x S x C uint8 squares (the paper's rescale + centre crop), one UserError per bad file."""
    return [read_square(p, spec.size, spec.channels) for p in paths]
