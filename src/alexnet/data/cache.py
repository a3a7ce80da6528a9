"""The prepared dataset on disk, and opening it.

Layout of a cache directory (written by :func:`alexnet.data.prepare`)::

    OUT/
      meta.json               format, version, "complete": true, size S, channels C, storage,
                              classes, per-split counts, source, preprocessing, counts of
                              skipped / ignored files
      stats.npz               train-split statistics (see below), loaded with allow_pickle=False
      <split>.images.u8       storage "raw": N x S x S x C uint8, C order, no header
                              (memory-mapped: workers share the page cache, nothing is copied)
      <split>.jpeg.bin        storage "jpeg": the images re-encoded as JPEG, concatenated ...
      <split>.jpeg.index.npy  ... with (N, 2) int64 [offset, length] rows
      <split>.labels.npy      N int64 class indices (-1 in a split meta.json marks "labelled": false)
      <split>.files.txt       N source names, one per line (for predictions and error reports)
      skipped.csv             path,reason: every bad file left out (with --skip-bad)
      ignored.csv             path,reason: stray and non-image files that were not images
      warnings.csv            path,warning: files kept but worth a look (a PNG named .JPEG)

``meta.json`` also records the size and SHA-256 of every other file (``"files"``), written
by ``prepare`` once the cache is complete; :func:`verify_cache` (``alexnet cache-info
CACHE --verify``) re-reads every file and names the first one that differs.

The directory only appears under its final name once everything in it is written
(``prepare`` builds ``OUT.partial`` and renames it), and ``meta.json`` carries
``"complete": true``; :func:`open_cache` refuses anything else.

Statistics (train split only, accumulated in float64 over the stored S x S pixels,
pixel values 0..255): ``mean_image`` (S,S,C), ``channel_mean`` (C,), ``channel_std`` (C,)
(population std over all pixels), ``eigval`` (C,) descending and ``eigvec`` (C,C) whose
*columns* are the eigenvectors of the CxC covariance of pixel values (0..255 scale, so
eigenvalues are in 0..255^2 units).

The compact storage (``--format jpeg``) is encoded and decoded here, in one place
(:func:`encode_jpeg`, :func:`decode_jpeg`): ``prepare`` writes with the first, the
loader reads with the second.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass

import numpy as np
import simplejpeg

from ..console import first_line, progress
from ..errors import UserError

CACHE_FORMAT = "alexnet-cache"
CACHE_VERSION = 1
STAT_KEYS = ("mean_image", "channel_mean", "channel_std", "eigval", "eigvec")
HASH_BLOCK = 8 << 20  # bytes read at a time when checksumming
NOT_CHECKSUMMED = ("meta.json",)  # meta.json holds the checksums (and is validated when parsed)


def encode_jpeg(a: np.ndarray, quality: int) -> bytes:
    """One S x S x C uint8 image -> the compact storage's JPEG bytes (4:2:0 chroma for RGB)."""
    if a.shape[2] == 1:
        return simplejpeg.encode_jpeg(np.ascontiguousarray(a), quality=quality, colorspace="GRAY")
    return simplejpeg.encode_jpeg(np.ascontiguousarray(a), quality=quality, colorspace="RGB", colorsubsampling="420")


def decode_jpeg(blob: bytes, channels: int) -> np.ndarray:
    """The compact storage's JPEG bytes -> H x W x C uint8 (what the loader sees)."""
    a = simplejpeg.decode_jpeg(blob, "GRAY" if channels == 1 else "RGB")
    return a.reshape(a.shape[0], a.shape[1], channels)


def file_sha256(path: str, bar=None) -> str:
    """SHA-256 of a file, read in blocks (``bar``: a progress bar advanced by the bytes read)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            h.update(block)
            if bar is not None:
                bar.update(len(block))
    return h.hexdigest()


def cache_files(root: str) -> list[str]:
    """The files of a cache that carry a checksum (every file but meta.json), sorted."""
    return sorted(n for n in os.listdir(root) if n not in NOT_CHECKSUMMED and os.path.isfile(os.path.join(root, n)))


def checksum_files(root: str, quiet: bool = False) -> dict:
    """{name: {"bytes", "sha256"}} for every file of the cache at ``root`` (what meta.json records)."""
    names = cache_files(root)
    sizes = {n: os.path.getsize(os.path.join(root, n)) for n in names}
    with progress(sum(sizes.values()), "checksum", "B", disable=quiet) as bar:
        return {n: {"bytes": sizes[n], "sha256": file_sha256(os.path.join(root, n), bar)} for n in names}


def images_file(split: str) -> str:
    return f"{split}.images.u8"


def jpeg_file(split: str) -> str:
    return f"{split}.jpeg.bin"


def jpeg_index_file(split: str) -> str:
    return f"{split}.jpeg.index.npy"


def labels_file(split: str) -> str:
    return f"{split}.labels.npy"


def files_file(split: str) -> str:
    return f"{split}.files.txt"


class JpegImages:
    """The compact storage's stand-in for the uint8 memmap: ``images[idx]`` decodes on demand.

    Supports what the loader needs (integer, slice and integer-array indexing -> uint8
    arrays of shape (..., S, S, C)). The bytes file is memory-mapped, not read.
    """

    def __init__(self, bin_path: str, index: np.ndarray, size: int, channels: int):
        self.bin_path, self.index, self.size, self.channels = bin_path, index, size, channels
        self.shape = (len(index), size, size, channels)
        self.dtype = np.dtype(np.uint8)
        self._data = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self):  # workers re-open the file instead of receiving its bytes
        state = dict(self.__dict__)
        state["_data"] = None
        return state

    def _bytes(self):
        if self._data is None:
            self._data = np.memmap(self.bin_path, dtype=np.uint8, mode="r") if os.path.getsize(self.bin_path) else np.zeros(0, np.uint8)
        return self._data

    def encoded(self, rows) -> list[np.ndarray]:
        """The JPEG bytes of images ``rows`` (views of the memory-mapped file)."""
        data = self._bytes()
        return [data[o: o + n] for o, n in self.index[np.asarray(rows, dtype=np.int64)]]

    def decode_one(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        offset, length = self.index[i]
        a = decode_jpeg(self._bytes()[offset: offset + length].tobytes(), self.channels)
        a = a.reshape(self.size, self.size, self.channels)
        if out is not None:
            out[...] = a
            return out
        return a

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.decode_one(int(key) % len(self))
        idx = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key)
        out = np.empty((len(idx), self.size, self.size, self.channels), dtype=np.uint8)
        for j, i in enumerate(idx):  # per-image decode is inherent to the compact format
            self.decode_one(int(i), out[j])
        return out


class _IndexedImages:
    """``images[key]`` through an index array: a subset view of a memmap or JPEG store."""

    def __init__(self, base, index: np.ndarray):
        self.base, self.index = base, index
        self.shape = (len(index),) + tuple(base.shape[1:])
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key):
        return self.base[self.index[key]]


def storage_rows(images, rows) -> tuple[object, np.ndarray]:
    """(the memmap or :class:`JpegImages` under a split's ``images``, ``rows`` as row numbers in it),
    through any subset views: for readers that fetch whole rows from the storage itself."""
    rows = np.asarray(rows, dtype=np.int64)
    while isinstance(images, _IndexedImages):
        rows = np.asarray(images.index, dtype=np.int64)[rows]
        images = images.base
    return images, rows


@dataclass
class Split:
    """One split of a cache: ``images`` (N,S,S,C) uint8 (memmap, or decoded on demand), ``labels``."""
    name: str
    images: object
    labels: np.ndarray
    path: str

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def files(self) -> list[str]:
        """Source name of each image (what a prediction or an error should point at)."""
        with open(os.path.join(self.path, files_file(self.name)), encoding="utf-8") as f:
            return f.read().split("\n")[: len(self)]


class Cache:
    """A complete, prepared dataset. Open with :func:`open_cache`."""

    def __init__(self, path: str, meta: dict, stats: dict):
        self.path, self.meta, self.stats = path, meta, stats
        self.classes: list[str] = list(meta["classes"])
        self.class_names: list[str] = list(meta.get("class_names") or meta["classes"])
        self.size: int = int(meta["size"])
        self.channels: int = int(meta["channels"])
        self.storage: str = meta["storage"]
        self._splits: dict[str, Split] = {}

    @property
    def splits(self) -> list[str]:
        return list(self.meta["splits"])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def labelled(self, name: str) -> bool:
        """False for a split without labels (the ILSVRC test set; its labels are all -1)."""
        return self.meta["splits"][name].get("labelled", True)

    def split(self, name: str) -> Split:
        if name not in self.meta["splits"]:
            raise UserError(f"{self.path}: no split '{name}' (this cache has: {', '.join(self.splits)})")
        if name not in self._splits:
            self._splits[name] = self._open_split(name)
        return self._splits[name]

    def _open_split(self, name: str) -> Split:
        n = int(self.meta["splits"][name]["count"])
        s, c = self.size, self.channels
        labels = np.load(os.path.join(self.path, labels_file(name)), allow_pickle=False)
        if labels.shape != (n,):
            raise UserError(f"{self.path}: {labels_file(name)} has {labels.shape} labels, meta.json says {n}")
        if labels.dtype.kind not in "iu":
            raise UserError(f"{os.path.join(self.path, labels_file(name))}: labels of type {labels.dtype}, "
                            f"expected integers; the cache is damaged")
        if not self.labelled(name):     # the ILSVRC test set: every label is -1
            if n and (labels != -1).any():
                raise UserError(f"{os.path.join(self.path, labels_file(name))}: labels in split '{name}', which "
                                f"meta.json says is unlabelled; the cache is damaged")
        elif n and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
            raise UserError(f"{os.path.join(self.path, labels_file(name))}: label {bad} is outside "
                            f"0..{self.num_classes - 1} ({self.num_classes} classes); the cache is damaged")
        if self.storage == "raw":
            file = os.path.join(self.path, images_file(name))
            expected = n * s * s * c
            actual = os.path.getsize(file) if os.path.exists(file) else -1
            if actual != expected:
                raise UserError(f"{file}: {actual:,} bytes, expected {expected:,} ({n:,} x {s}x{s}x{c}); the cache is damaged")
            images = np.memmap(file, dtype=np.uint8, mode="r", shape=(n, s, s, c)) if n else np.zeros((0, s, s, c), np.uint8)
        else:
            index = np.load(os.path.join(self.path, jpeg_index_file(name)), allow_pickle=False)
            images = JpegImages(os.path.join(self.path, jpeg_file(name)), index, s, c)
        return Split(name, images, labels, self.path)

    def subset(self, limits: dict[str, int] | None = None, *, seed: int = 0) -> "Cache":
        """The same cache with some splits cut to a fixed, seeded random subset of ``limits[split]`` images.

        A random subset rather than the first N, because folder sources store images class by
        class. A limit of 0 (or one >= the split's size) keeps the split whole. Loaders over a
        subset must run with ``workers=0``: worker processes re-open the full cache from its path.
        """
        derived = Cache(self.path, self.meta, self.stats)
        derived._splits = dict(self._splits)
        for name, n in (limits or {}).items():
            if not n or name not in self.meta["splits"]:
                continue
            split = self.split(name)
            if n >= len(split):
                continue
            index = np.sort(np.random.default_rng(seed).permutation(len(split))[:n])
            derived._splits[name] = Split(name, _IndexedImages(split.images, index), split.labels[index], split.path)
        return derived

    def with_stats(self, stats: dict) -> "Cache":
        """The same images with other statistics (a checkpoint's training statistics, say)."""
        derived = Cache(self.path, self.meta, stats)
        derived._splits = dict(self._splits)
        return derived

    @property
    def is_subset(self) -> bool:
        return any(isinstance(s.images, _IndexedImages) for s in self._splits.values())

    def __repr__(self) -> str:
        counts = ", ".join(f"{k} {v['count']:,}" for k, v in self.meta["splits"].items())
        return f"Cache({self.path!r}: {counts}; {self.num_classes} classes; {self.size}x{self.size}x{self.channels} {self.storage})"


def read_meta(path: str) -> dict | None:
    try:
        with open(os.path.join(path, "meta.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def open_cache(path) -> Cache:
    """Open a prepared cache. UserError if it is missing, incomplete or of an unknown version."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        partial = path.rstrip("/") + ".partial"
        hint = f" (an interrupted prepare left {partial}; re-run 'alexnet prepare' to finish it)" if os.path.isdir(partial) else \
            " (create it with 'alexnet prepare SOURCE OUT')"
        raise UserError(f"{path}: no such cache{hint}")
    meta = read_meta(path)
    if meta is None:
        raise UserError(f"{path}: not a prepared cache (no readable meta.json)")
    if meta.get("format") != CACHE_FORMAT:
        raise UserError(f"{path}: not an alexnet cache (format {meta.get('format')!r})")
    if meta.get("version") != CACHE_VERSION:
        raise UserError(f"{path}: cache version {meta.get('version')!r}, this alexnet reads version {CACHE_VERSION}; re-run 'alexnet prepare'")
    if meta.get("complete") is not True:
        raise UserError(f"{path}: incomplete cache (prepare did not finish); re-run 'alexnet prepare'")
    stats = {}
    stats_path = os.path.join(path, "stats.npz")
    if os.path.exists(stats_path):
        try:
            with np.load(stats_path, allow_pickle=False) as z:
                stats = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise UserError(f"{stats_path}: unreadable statistics ({first_line(exc)}); the cache is damaged "
                            f"(re-run 'alexnet prepare' with --overwrite)") from None
        missing = [k for k in STAT_KEYS if k not in stats]
        if missing:
            raise UserError(f"{stats_path}: statistics lack {', '.join(missing)}; the cache is damaged")
    cache = Cache(path, meta, stats)
    try:
        for name in cache.splits:  # labels are small: range-checked here, before anything trusts them
            cache.split(name)
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"{path}: cannot read split '{name}' ({first_line(exc)}); the cache is damaged") from None
    return cache


def verify_cache(path, quiet: bool = False) -> int:
    """Re-read every file of an opened cache against the SHA-256 recorded by ``prepare``.

    Returns the number of files checked; UserError naming the first file that is missing,
    of the wrong size or with the wrong checksum.
    """
    cache = open_cache(path)
    recorded = cache.meta.get("files")
    if not recorded:
        raise UserError(f"{cache.path}: no checksums recorded (prepared by an older alexnet); "
                        f"re-run 'alexnet prepare' with --overwrite to add them")
    with progress(sum(int(v["bytes"]) for v in recorded.values()), "verify", "B", disable=quiet) as bar:
        for name, want in sorted(recorded.items()):
            file = os.path.join(cache.path, name)
            if not os.path.isfile(file):
                raise UserError(f"{file}: missing; the cache is damaged")
            size = os.path.getsize(file)
            if size != int(want["bytes"]):
                raise UserError(f"{file}: {size:,} bytes, {int(want['bytes']):,} when prepared; the cache is damaged")
            if file_sha256(file, bar) != want["sha256"]:
                raise UserError(f"{file}: checksum mismatch (SHA-256 differs from the one recorded when prepared); "
                                f"the cache is damaged")
    return len(recorded)
