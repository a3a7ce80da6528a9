"""MNIST / Fashion-MNIST IDX files (``.gz`` or not), e.g. ``/usr/share/datasets/fashion-mnist``."""

from __future__ import annotations

import gzip
import os
import re

import numpy as np

from ...errors import UserError
from .base import ArraySplit, Source

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]


def idx_in_directory(path: str, names: set[str]) -> Source | None:
    """The IDX image files among ``names`` (relative to the folder ``path``) with their labels, or None."""
    image_files = sorted(n for n in names if re.search(r"idx3-ubyte(\.gz)?$", n))
    return build_idx(path, image_files, names) if image_files else None


def read_idx(path: str) -> np.ndarray:
    """An IDX file (MNIST format; gzip or raw) as a numpy array."""
    try:
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"{path}: cannot read IDX file ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise UserError(f"{path}: not an IDX file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise UserError(f"{path}: unknown IDX element type 0x{data[2]:02x}")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(dtypes[data[2]])
    expected = 4 + 4 * ndim + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        raise UserError(f"{path}: IDX file is {len(data):,} bytes, its header says {expected:,} (truncated?)")
    return np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim).reshape(dims)


def build_idx(path: str, image_files: list[str], all_names: set[str]) -> Source:
    splits = {}
    for rel in image_files:
        label_rel = rel.replace("images", "labels").replace("idx3", "idx1")
        if label_rel not in all_names:
            raise UserError(f"{os.path.join(path, rel)}: no matching labels file ({label_rel})")
        stem = os.path.basename(rel).lower()
        split = "train" if "train" in stem else "test" if ("t10k" in stem or "test" in stem) else stem.split("-")[0]
        images = read_idx(os.path.join(path, rel))
        labels = read_idx(os.path.join(path, label_rel)).astype(np.int64)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise UserError(f"{os.path.join(path, rel)}: expected N x H x W uint8 images, got {images.shape} {images.dtype}")
        if labels.shape != (images.shape[0],):
            raise UserError(f"{os.path.join(path, label_rel)}: {len(labels):,} labels for {images.shape[0]:,} images")
        splits[split] = ArraySplit(images[:, :, :, None], labels, [f"{os.path.basename(rel)}[{i}]" for i in range(len(labels))])
    n_classes = int(max(s.labels.max() for s in splits.values())) + 1
    if "fashion" in os.path.abspath(path).lower() and n_classes == 10:
        classes = list(FASHION_MNIST_CLASSES)
    else:
        classes = [str(i) for i in range(n_classes)]
    return Source("idx", path, classes, splits, [], 1, None)
