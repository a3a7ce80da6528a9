"""fc7 features (the last hidden layer, 4096-d for the paper model) of a cache split or image files.

The paper (section 6.1) compares images by "the feature activations induced at the
last, 4096-dimensional hidden layer". Every registered model has ``embed(x)`` =
fc7 after its ReLU; this module feeds it the same input the evaluation does (the
centre crop at the checkpoint's crop size, minus the mean image or channel mean the
model was trained with, via the data package's own crop and mean functions) in
batches, and writes the result as a memory-mapped ``.npy`` (float32, N x D), so a
1.2 M x 4096 database (19.7 GB) is never held in memory, plus a ``.json`` sidecar
saying what the rows are (checkpoint, cache, split, count), which ``neighbors
--features`` checks before re-using the file.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError


def sidecar_path(features_path: str | os.PathLike) -> Path:
    p = Path(features_path)
    return p.with_name(p.stem + ".json")


class InputPipeline:
    """uint8 S x S images -> the network's centre-crop input, exactly as at evaluation time."""

    def __init__(self, info: dict, cache=None):
        stats = dict(info.get("stats") or {})
        if not stats and cache is not None:
            stats = dict(cache.stats)
        self.size = int(info.get("cache_size") or (cache.size if cache is not None else 0))
        if not self.size:
            raise UserError(f"{info.get('path')}: checkpoint does not record its image size; pass --data")
        self.crop = int(info.get("input_size") or self.size)
        if self.crop > self.size:
            raise UserError(f"{info.get('path')}: crop {self.crop} is larger than the stored images ({self.size} px)")
        self.channels = int(info.get("in_channels", 3))
        self.mean_mode = info.get("mean") or "none"
        mean_image = stats.get("mean_image")
        self.mean_image = None
        self.channel_mean = None
        if self.mean_mode == "image" and mean_image is not None and mean_image.shape[0] == self.size:
            self.mean_image = torch.as_tensor(np.asarray(mean_image, dtype=np.float32))
        elif self.mean_mode in ("image", "channel") and stats.get("channel_mean") is not None:
            self.channel_mean = torch.as_tensor(np.asarray(stats["channel_mean"], dtype=np.float32))
        # Per-channel multipliers applied after the mean (training's ``data.scale = "std"``).
        scale = info.get("input_scale")
        self.input_scale = torch.tensor(scale, dtype=torch.float32).view(1, -1, 1, 1) if scale else None

    def __call__(self, images: np.ndarray, device) -> torch.Tensor:
        """(B, S, S, C) uint8 -> (B, C, crop, crop) float32 on ``device``.

        The centre crop at offset (S - crop) // 2, minus the same crop of the mean image
        (or the channel mean), times the input scale: what the evaluation loader feeds
        (tests/test_analysis_figures.py checks the two agree exactly).
        """
        batch = np.asarray(images)
        if batch.ndim == 3:
            batch = batch[..., None]
        if batch.shape[1] != self.size or batch.shape[3] != self.channels:
            raise UserError(f"images of shape {tuple(batch.shape[1:])} do not fit a model trained on "
                            f"{self.size}x{self.size}x{self.channels}")
        o, c = (self.size - self.crop) // 2, self.crop
        x = torch.from_numpy(np.ascontiguousarray(batch[:, o:o + c, o:o + c, :])).to(device, torch.float32)
        if self.mean_image is not None:
            x -= self.mean_image[o:o + c, o:o + c, :].to(device)
        elif self.channel_mean is not None:
            x -= self.channel_mean.to(device)
        x = x.permute(0, 3, 1, 2).contiguous()
        if self.input_scale is not None:
            x *= self.input_scale.to(device)
        return x


@torch.no_grad()
def embed_batches(model: nn.Module, pipeline: InputPipeline, images, batch_size: int, device,
                  out: np.ndarray | None = None, progress: bool = False, desc: str = "fc7") -> np.ndarray:
    """fc7 of ``images`` (an (N, S, S, C) array or memmap, read ``batch_size`` at a time)."""
    from tqdm import tqdm

    model.eval()
    n = len(images)
    bar = tqdm(total=n, desc=desc, unit="img", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    chunks = []
    try:
        for start in range(0, n, batch_size):
            block = np.asarray(images[start:start + batch_size])
            feats = model.embed(pipeline(block, device)).float().cpu().numpy()
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


def feature_dim(model: nn.Module, pipeline: InputPipeline, device) -> int:
    probe = np.zeros((1, pipeline.size, pipeline.size, pipeline.channels), np.uint8)
    with torch.no_grad():
        model.eval()
        return int(model.embed(pipeline(probe, device)).shape[1])


def extract_features(checkpoint: str | os.PathLike, cache_path: str | os.PathLike, out: str | os.PathLike, *,
                     split: str = "train", batch_size: int = 256, device: str | None = None, limit: int = 0,
                     progress: bool = False) -> dict:
    """fc7 of every image of ``split`` (in cache order) -> ``out`` (.npy, float32) + sidecar JSON."""
    from ..data import open_cache
    from ..checkpoint import load_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, info = load_model(checkpoint, device)
    cache = open_cache(cache_path)
    check_cache_fits(info, cache, cache_path)
    images = cache.split(split).images
    n = len(images) if not limit else min(limit, len(images))
    pipeline = InputPipeline(info, cache)
    dim = feature_dim(model, pipeline, device)
    out = Path(out)
    if out.suffix != ".npy":
        raise UserError(f"{out}: features are written as .npy; give a name ending in .npy")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".partial.npy")
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        embed_batches(model, pipeline, images[:n] if isinstance(images, np.ndarray) else _Head(images, n),
                      batch_size, device, out=array, progress=progress, desc=f"fc7 {split}")
        array.flush()
        del array
        os.replace(tmp, out)
    except OSError as exc:
        raise UserError(f"{out}: cannot write features ({exc.strerror or exc})") from None
    meta = {"checkpoint": str(Path(info["path"]).resolve()), "model": info["name"], "cache": str(Path(cache_path).resolve()),
            "split": split, "count": n, "dim": dim, "dtype": "float32", "crop": pipeline.crop,
            "mean": pipeline.mean_mode, "epoch": info.get("epoch"), "step": info.get("step")}
    sidecar_path(out).write_text(json.dumps(meta, indent=2) + "\n")
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
            sys.stderr.write(f"alexnet: warning: {path} was computed with {meta.get('checkpoint')}, "
                             f"not {checkpoint}\n")
    if len(feats) != count:
        raise UserError(f"{path}: {len(feats):,} feature rows, but split {split!r} has {count:,} images")
    return feats


def check_cache_fits(info: dict, cache, cache_path) -> None:
    if int(info.get("in_channels", cache.channels)) != cache.channels:
        raise UserError(f"{cache_path}: {cache.channels}-channel images, but the checkpoint expects "
                        f"{info.get('in_channels')} channels")
    if info.get("cache_size") and int(info["cache_size"]) != cache.size:
        raise UserError(f"{cache_path}: images stored at {cache.size} px, the checkpoint was trained on "
                        f"{info['cache_size']} px images")


def load_query_images(paths: list[str], size: int, channels: int) -> list[np.ndarray]:
    """Image files -> S x S x C uint8 squares (the paper's rescale + centre crop), one UserError per bad file."""
    from ..data.decode import BadImage, decode_square

    images = []
    for p in paths:
        try:
            data = Path(p).read_bytes()
        except OSError as exc:
            raise UserError(f"{p}: cannot read ({exc.strerror or exc})") from None
        try:
            a, _warning = decode_square(data, size, channels, name=str(p))
        except BadImage as exc:
            raise UserError(f"{p}: {exc}") from None
        images.append(a if a.ndim == 3 else a[..., None])
    return images
