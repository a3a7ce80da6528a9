"""``alexnet prepare``: decode every image once into the cache, with the train statistics.

The paper (Section 2) rescales each image so its shorter side is 256 and keeps the
central 256x256 patch; Section 4.1 needs the training set's mean image and the
eigen-decomposition of the RGB covariance. Both are produced here, in one pass over
the source, so training never decodes an image again.

Safety: everything is written into ``OUT.partial`` and renamed to ``OUT`` only when
complete (``meta.json`` then says ``"complete": true`` and records the SHA-256 of every
file, checked by ``alexnet cache-info OUT --verify``). Progress is checkpointed every
few seconds (which images are done, the running statistics), so an interrupted run
continues where it stopped when re-run with the same source and options; with
anything different it starts over. One ``prepare`` at a time writes a given ``OUT``: it
holds the :class:`~alexnet.files.FileLock` ``OUT.lock`` (released by the kernel when the
process ends, however it ends), and a second one refuses with one line. Every file of the
cache but the raw images goes through :func:`~alexnet.files.atomic_write` (the progress
file, the labels, the reports, ``meta.json``); raw images are written with ordinary
``pwrite`` calls, never through a memory map, so a full disk is an error (``ENOSPC``) and
not a SIGBUS, and the partial cache stays resumable. A decoding worker that dies (killed,
out of memory, a crash in a decoder) stops the run with one line saying how, and so does
SIGINT/SIGTERM, even while no result comes; both keep the partial cache for a re-run. Bad
files stop the run with one line naming the file (default) or are skipped and listed in
``skipped.csv`` (``skip_bad=True``); so do class folders that hold no image (only stray or
non-image files, or nothing).
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..console import progress
from ..errors import UserError
from ..files import FileLock, atomic_write, fsync_folder, human_size
from ..signals import StopFlag
from . import cache as layout
from .decode import BadImage, decode_square, resize_square
from .process_pool import ProcessPool, WorkerDied
from .sources import GRAY_MODES, ArraySplit, Source, open_source, read_payload

CHECKPOINT_SECONDS = float(os.environ.get("ALEXNET_PREPARE_CHECKPOINT_SECONDS", "10"))  # tests shorten it
ARRAY_CHUNK = 512          # decoded-array sources (CIFAR, IDX): images per task
ENCODED_CHUNK = 32         # encoded images per task (at most)
STREAM_CHUNK_BYTES = 1 << 20  # ... or this many streamed bytes
POLL_SECONDS = 0.2         # a result is awaited in slices this long, to see a stop request meanwhile


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


@dataclass
class PrepareSummary:
    out: str
    counts: dict
    classes: int
    size: int
    channels: int
    storage: str
    bytes: int
    skipped: list = field(default_factory=list)
    ignored: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    seconds: float = 0.0
    decoded: int = 0
    resumed_from: int = 0
    up_to_date: bool = False
    unlabelled: tuple = ()

    def line(self) -> str:
        counts = ", ".join(f"{k} {v:,}" + (" (unlabelled)" if k in self.unlabelled else "") for k, v in self.counts.items())
        if self.up_to_date:
            return f"{self.out}: already prepared ({counts}); nothing to do"
        rate = f"{self.decoded / self.seconds:,.0f} images/s" if self.seconds > 0 and self.decoded else "-"
        parts = [f"prepared {self.out}: {counts} images, {self.classes} classes, "
                 f"{self.size}x{self.size}x{self.channels} {self.storage}, {human_size(self.bytes)}",
                 f"skipped {len(self.skipped)} bad file(s)" + (" (listed in skipped.csv)" if self.skipped else ""),
                 f"ignored {len(self.ignored)} stray/non-image file(s)" + (" (listed in ignored.csv)" if self.ignored else "")]
        if self.warnings:
            parts.append(f"{len(self.warnings)} warning(s) in warnings.csv")
        if self.resumed_from:
            parts.append(f"resumed after {self.resumed_from:,} images")
        parts.append(f"{self.seconds:.1f} s ({rate})")
        return "; ".join(parts)


# --------------------------------------------------------------------------------------
# worker side: pure functions of their arguments (they run in a process pool)

_CONFIG: dict = {}
_RAW_FILES: dict = {}   # split -> this process's descriptor of the partial raw file (raw storage)


def _init_worker(config: dict) -> None:
    _close_raw_files()
    _CONFIG.clear()
    _CONFIG.update(config)
    if config.get("pool"):
        torch.set_num_threads(1)  # one process per core: the resize must not spawn threads of its own
        # Ctrl-C reaches the whole process group: the parent stops between chunks and ends the
        # workers itself; a worker killed mid-task by KeyboardInterrupt would look like a crash.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # A SIGTERM ends a worker, even one forked from a process with a StopFlag installed
        # (prepare called by a training run), whose handler it would otherwise inherit.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _close_raw_files() -> None:
    for fd in _RAW_FILES.values():
        os.close(fd)
    _RAW_FILES.clear()


def _pwrite_all(fd: int, data, offset: int) -> None:
    """Write all of ``data`` at ``offset``, or raise OSError (ENOSPC, EFBIG, ...)."""
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)   # a short write near a limit: the next call raises
        view, offset = view[written:], offset + written


def _write_rows(split: str, indices: list, images: np.ndarray) -> None:
    """Raw storage: the decoded rows go to their offsets in the split's file from the process that
    decoded them (consecutive rows in one call), so that the main process, the one serial part of
    prepare, never receives the pixels through a pipe nor writes them (measured in docs/data.md)."""
    if split not in _RAW_FILES:
        _RAW_FILES[split] = os.open(_CONFIG["raw_paths"][split], os.O_WRONLY)
    fd, start = _RAW_FILES[split], 0
    for j in range(1, len(indices) + 1):
        if j == len(indices) or indices[j] != indices[j - 1] + 1:
            _pwrite_all(fd, np.ascontiguousarray(images[start:j]), indices[start] * images[0].nbytes)
            start = j


def _image_stats(a: np.ndarray) -> np.ndarray:
    """Sum over pixels of x x^T (C x C) for the colour covariance: exact in float64 (integers < 2**53).

    The per-channel sums are not needed separately: they are the sums of the mean-image accumulator.
    """
    x = a.reshape(-1, a.shape[-1]).astype(np.float64)
    return x.T @ x


def _sum_images(images: np.ndarray) -> np.ndarray:
    """Exact per-pixel sum of a chunk (in-place uint32 adds: much faster than a reduction)."""
    acc = np.zeros(images.shape[1:], dtype=np.uint32)
    for a in images:
        np.add(acc, a, out=acc)
    return acc


def _work_encoded(task: tuple) -> dict:
    """(split, [(index, name, ref or bytes)]) -> the chunk's images, statistics, errors and warnings."""
    split, entries = task
    size, channels, storage, quality = _CONFIG["size"], _CONFIG["channels"], _CONFIG["storage"], _CONFIG["quality"]
    indices, blobs, errors, warnings = [], [], [], []
    stacked = np.empty((len(entries), size, size, channels), dtype=np.uint8)  # decoded straight into place
    for index, name, payload in entries:
        try:
            if isinstance(payload, bytes):
                data = payload
            elif payload[0] == "broken":
                raise BadImage(f"unreadable file ({payload[1]})")
            else:
                try:
                    data = read_payload(payload)
                except OSError as exc:
                    raise BadImage(f"unreadable file ({exc.strerror or exc})") from None
            slot = stacked[len(indices)]
            _, warning = decode_square(data, size, channels, name, out=slot)
            if storage == "jpeg":
                blobs.append(layout.encode_jpeg(slot, quality))
                slot[...] = layout.decode_jpeg(blobs[-1], channels)  # statistics of what the loader will see
            indices.append(index)
            if warning:
                warnings.append((index, warning))
        except BadImage as exc:
            errors.append((index, str(exc)))
    stacked = stacked[: len(indices)]
    xtx = image_sum = None
    if split == "train":  # statistics come from the train split only
        xtx = _image_stats(stacked)
        # the chunk's share of the mean image, summed here so the main process adds once per chunk
        image_sum = _sum_images(stacked)
    if storage == "raw" and indices:
        _write_rows(split, indices, stacked)
    return {"split": split, "indices": indices, "images": None if storage == "raw" else stacked,
            "blobs": blobs or None, "xtx": xtx, "image_sum": image_sum, "errors": errors, "warnings": warnings}


def _work_arrays(task: tuple) -> tuple:
    """(split, start, uint8 NxHxWxC) -> (split, start, resized images, blobs, sum, xtx, image-sum)."""
    split, start, images = task
    size, channels, storage, quality = _CONFIG["size"], _CONFIG["channels"], _CONFIG["storage"], _CONFIG["quality"]
    if images.shape[1:3] == (size, size):
        out = images
    else:
        out = np.empty((len(images), size, size, channels), dtype=np.uint8)
        for j, a in enumerate(images):  # per image: PIL's antialiased resize
            out[j] = resize_square(a, size)
    blobs = None
    if storage == "jpeg":
        blobs = [layout.encode_jpeg(a, quality) for a in out]
        out = np.stack([layout.decode_jpeg(b, channels) for b in blobs])
    train = split == "train"
    indices = list(range(start, start + len(out)))
    if storage == "raw":
        _write_rows(split, indices, out)
    return {"split": split, "indices": indices, "images": None if storage == "raw" else out, "blobs": blobs,
            "xtx": _image_stats(out) if train else None, "image_sum": _sum_images(out) if train else None,
            "errors": [], "warnings": []}


# --------------------------------------------------------------------------------------
# the driver

class _Writer:
    """The partial cache being written, with its resumable progress."""

    def __init__(self, root: str, source: Source, size: int, channels: int, storage: str, quiet: bool = False):
        self.root, self.source, self.size, self.channels, self.storage = root, source, size, channels, storage
        self.quiet = quiet
        self.counts = {name: source.count(name) for name in source.splits}
        self.done = {k: np.zeros(n, dtype=bool) for k, n in self.counts.items()}
        self.valid = {k: np.zeros(n, dtype=bool) for k, n in self.counts.items()}
        self.jpeg_index = {k: np.full((n, 2), -1, dtype=np.int64) for k, n in self.counts.items()}
        self.jpeg_length = {k: 0 for k in self.counts}
        self.mean_sum = np.zeros((size, size, channels), dtype=np.float64)
        self.xtx = np.zeros((channels, channels), dtype=np.float64)
        self.stat_images = 0
        self.skipped: list[tuple[str, str]] = []
        self.warnings: list[tuple[str, str]] = []
        self.raw_files: dict = {}    # split -> file descriptor of <split>.images.u8
        self.jpeg_files: dict = {}
        self.row_bytes = size * size * channels

    # -- files -------------------------------------------------------------------------
    def open_files(self, resume: bool) -> None:
        for split in self.counts:
            if self.storage == "raw":
                # Rows are written at their offsets with pwrite; the file grows (sparse where rows
                # are still missing) as they arrive. Not a memory map: a write into a mapped page
                # that the disk cannot hold is a SIGBUS, a pwrite is an ENOSPC the run can report.
                path = os.path.join(self.root, layout.images_file(split))
                flags = os.O_RDWR | os.O_CREAT | (0 if resume else os.O_TRUNC)
                self.raw_files[split] = os.open(path, flags, 0o644)
            else:
                path = os.path.join(self.root, layout.jpeg_file(split))
                f = open(path, "r+b" if resume and os.path.exists(path) else "wb")
                f.truncate(self.jpeg_length[split])
                f.seek(self.jpeg_length[split])
                self.jpeg_files[split] = f

    def close_files(self) -> None:
        for fd in self.raw_files.values():
            os.close(fd)
        self.raw_files.clear()
        for f in self.jpeg_files.values():
            f.close()
        self.jpeg_files.clear()

    # -- results -----------------------------------------------------------------------
    def _pwrite(self, split: str, row: int, data) -> None:
        """Write ``data`` at row ``row`` of the split's raw file, all of it or an OSError.

        Not through files.atomic_write: the pixels are many writes into one large file, each at
        its row, made durable by the checkpoint's fsync before the progress file counts them."""
        _pwrite_all(self.raw_files[split], data, row * self.row_bytes)

    def store(self, split: str, index: int, img: np.ndarray | None, blob: bytes | None) -> None:
        if self.storage == "raw":
            self._pwrite(split, index, np.ascontiguousarray(img))
        else:
            f = self.jpeg_files[split]
            self.jpeg_index[split][index] = (self.jpeg_length[split], len(blob))
            f.write(blob)
            self.jpeg_length[split] += len(blob)
        self.done[split][index] = True
        self.valid[split][index] = True

    def store_many(self, split: str, indices: list, images: np.ndarray | None, blobs: list | None) -> None:
        """Record a chunk's results; ``images`` None: raw rows the worker has written itself."""
        if not indices:
            return
        if images is None:
            self.done[split][indices] = True
            self.valid[split][indices] = True
            return
        if self.storage == "raw" and indices == list(range(indices[0], indices[0] + len(indices))):
            self._pwrite(split, indices[0], np.ascontiguousarray(images))  # one write for the run of rows
            self.done[split][indices[0]: indices[0] + len(indices)] = True
            self.valid[split][indices[0]: indices[0] + len(indices)] = True
            return
        for j, index in enumerate(indices):
            self.store(split, index, images[j], blobs[j] if blobs else None)

    def add_stats(self, split: str, xtx: np.ndarray | None, image_sum: np.ndarray | None, n: int) -> None:
        if split == "train":
            self.xtx += xtx
            self.mean_sum += image_sum
            self.stat_images += n

    # -- checkpoints -------------------------------------------------------------------
    def checkpoint(self, fingerprint: str) -> None:
        for fd in self.raw_files.values():
            os.fsync(fd)     # rows marked done are on disk before the progress file says so
        for f in self.jpeg_files.values():
            f.flush()
            os.fsync(f.fileno())
        state = {"fingerprint": fingerprint, "skipped": self.skipped, "warnings": self.warnings,
                 "jpeg_length": self.jpeg_length, "stat_images": self.stat_images}
        arrays = {"state": np.frombuffer(json.dumps(state).encode(), dtype=np.uint8),
                  "mean_sum": self.mean_sum, "xtx": self.xtx}
        for split in self.counts:
            arrays[f"done.{split}"] = self.done[split]
            arrays[f"valid.{split}"] = self.valid[split]
            arrays[f"jpeg_index.{split}"] = self.jpeg_index[split]
        try:
            atomic_write(os.path.join(self.root, "progress.npz"), lambda f: np.savez(f, **arrays),
                         what="the progress file")
        except UserError as exc:     # the previous progress file is intact (atomic_write)
            raise UserError(f"{exc}; the partial cache is kept and a re-run resumes it from its last "
                            f"checkpoint") from None

    def load_checkpoint(self, fingerprint: str) -> bool:
        path = os.path.join(self.root, "progress.npz")
        try:
            with np.load(path, allow_pickle=False) as z:
                state = json.loads(z["state"].tobytes().decode())
                if state.get("fingerprint") != fingerprint:
                    return False
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError):
            return False
        for split, n in self.counts.items():
            if arrays[f"done.{split}"].shape != (n,):
                return False
            self.done[split] = arrays[f"done.{split}"].copy()
            self.valid[split] = arrays[f"valid.{split}"].copy()
            self.jpeg_index[split] = arrays[f"jpeg_index.{split}"].copy()
        self.mean_sum, self.xtx = arrays["mean_sum"], arrays["xtx"]
        self.jpeg_length = {k: int(v) for k, v in state["jpeg_length"].items()}
        self.stat_images = int(state["stat_images"])
        self.skipped = [tuple(x) for x in state["skipped"]]
        self.warnings = [tuple(x) for x in state["warnings"]]
        return True

    def done_count(self) -> int:
        return int(sum(d.sum() for d in self.done.values()))

    # -- finishing ---------------------------------------------------------------------
    def finish(self, meta: dict) -> dict:
        """Drop the holes left by skipped files, write labels, names, stats, reports and meta.json."""
        final_counts = {}
        if self.storage == "raw" and not all(v.all() for v in self.valid.values()):
            # Compacting moves rows in place, which a second pass would repeat on moved rows: once
            # it starts, the progress file no longer describes the file, so it goes first (a run
            # stopped from here on starts over instead of resuming into a scrambled cache).
            self._remove_progress()
        for split in self.counts:
            keep = np.flatnonzero(self.valid[split])
            final_counts[split] = len(keep)
            content = self.source.splits[split]
            labels = content.labels if isinstance(content, ArraySplit) else np.array([it.label for it in content], dtype=np.int64)
            names = content.names if isinstance(content, ArraySplit) else [it.name for it in content]
            self._write(layout.labels_file(split), _npy(labels[keep].astype(np.int64)), "the labels")
            self._write(layout.files_file(split), "\n".join(names[i].replace("\n", " ") for i in keep),
                        "the list of image names")
            if self.storage == "raw":
                fd = self.raw_files[split]
                for dst, src in enumerate(keep):  # compact in place: rows only move towards the start
                    if dst != src:
                        self._pwrite(split, dst, os.pread(fd, self.row_bytes, int(src) * self.row_bytes))
                os.ftruncate(fd, len(keep) * self.row_bytes)   # also sizes a file whose last rows were skipped
                os.fsync(fd)
            else:
                self._write(layout.jpeg_index_file(split), _npy(self.jpeg_index[split][keep]), "the JPEG index")
        self.close_files()
        stats = self.statistics()
        if stats:
            self._write("stats.npz", lambda f: np.savez(f, **stats), "the train statistics")
        self._write("skipped.csv", _csv(("path", "reason"), self.skipped), "the list of skipped files")
        self._write("ignored.csv", _csv(("path", "reason"), self.source.ignored), "the list of ignored files")
        self._write("warnings.csv", _csv(("path", "warning"), self.warnings), "the list of warnings")
        meta["splits"] = {k: {"count": v, **({"labelled": False} if k in self.source.unlabelled else {})}
                          for k, v in final_counts.items()}
        meta["skipped"], meta["ignored"], meta["warnings"] = len(self.skipped), len(self.source.ignored), len(self.warnings)
        meta["stats"] = ({"split": "train", "images": self.stat_images,
                          **{k: stats[k].tolist() for k in ("channel_mean", "channel_std", "eigval", "eigvec")}}
                         if stats else None)
        meta["complete"] = True
        self._remove_progress()
        meta["files"] = layout.checksum_files(self.root, quiet=self.quiet)
        # meta.json last: "complete": true is what makes the folder a cache (once renamed to OUT)
        self._write("meta.json", json.dumps(meta, indent=1), "the cache metadata")
        return final_counts

    def _write(self, name: str, data, what: str) -> None:
        """One file of the cache, by the package's one atomic write (a failure: one line naming it)."""
        atomic_write(os.path.join(self.root, name), data, what=what)

    def _remove_progress(self) -> None:
        """The progress file and any temporary file a killed writer left: not part of the cache."""
        for name in os.listdir(self.root):
            if name in ("progress.npz", "progress.tmp.npz") or ".tmp-" in name:   # progress.tmp.npz: older versions
                os.remove(os.path.join(self.root, name))
        fsync_folder(self.root)

    def statistics(self) -> dict:
        """The paper's statistics from the train split's accumulated sums (float64)."""
        if self.stat_images == 0:
            return {}
        pixels = self.stat_images * self.size * self.size
        channel_mean = self.mean_sum.sum(axis=(0, 1)) / pixels
        cov = self.xtx / pixels - np.outer(channel_mean, channel_mean)
        cov = (cov + cov.T) / 2
        eigval, eigvec = np.linalg.eigh(cov)
        order = np.argsort(eigval)[::-1]
        eigval, eigvec = eigval[order], eigvec[:, order]
        # eigenvectors are defined up to sign: fix it (largest component positive) so caches compare equal
        signs = np.sign(eigvec[np.argmax(np.abs(eigvec), axis=0), np.arange(eigvec.shape[1])])
        eigvec = eigvec * np.where(signs == 0, 1, signs)
        return {"mean_image": (self.mean_sum / self.stat_images).astype(np.float32),
                "channel_mean": channel_mean.astype(np.float32),
                "channel_std": np.sqrt(np.clip(np.diag(cov), 0, None)).astype(np.float32),
                "eigval": np.clip(eigval, 0, None).astype(np.float32),
                "eigvec": eigvec.astype(np.float32),
                "covariance": cov, "images": np.int64(self.stat_images)}


def _csv(header: tuple, rows: list) -> str:
    """A report's text, as ``csv`` writes it (CRLF line ends)."""
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(header)
    w.writerows(rows)
    return text.getvalue()


def _npy(array: np.ndarray):
    """A writer of ``array`` in ``.npy`` format, for :func:`atomic_write`."""
    return lambda f: np.save(f, array)


def _probe_channels(source: Source, probes: int = 64) -> int:
    """3 unless every probed image is grayscale (then the dataset stays 1-channel)."""
    if source.channels is not None:
        return source.channels
    if source.kind == "tar-stream":
        return 1 if source.all_gray else 3   # probed while the archive was listed (one streamed pass)
    items = [it for content in source.splits.values() for it in content]
    step = max(1, len(items) // probes)
    for it in items[::step][:probes]:
        try:
            data = read_payload(it.ref)
            with Image.open(io.BytesIO(data)) as im:
                if im.mode not in GRAY_MODES:
                    return 3
        except Exception:
            continue  # a bad file: the decoder will report it properly
    return 1


# Errors of the disk we write to (full, quota, file-size limit, read-only): a user problem, one line.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}


def _display(source: Source, name: str) -> str:
    """Where an image is, for a message: ``FOLDER/a/b.jpg``, ``ARCHIVE:member``, ``FOLDER/ARCHIVE:member``."""
    if source.kind == "folder" or (source.kind == "ilsvrc" and os.path.isdir(source.location)):
        return os.path.join(source.location, name)
    return f"{source.location}:{name}"


def prepare(source, out, *, size: int | str = 256, storage: str = "raw", quality: int = 90,
            skip_bad: bool = False, workers: int | None = None, quiet: bool = False,
            labels: str | None = None, classes: str | None = None, limit: int | None = None,
            channels: str | int = "auto", overwrite: bool = False) -> PrepareSummary:
    """Build the cache ``out`` from ``source`` (path, shorthand or a :class:`Source`). See module doc."""
    started = time.perf_counter()
    out = os.path.abspath(os.fspath(out)).rstrip("/")
    if storage not in ("raw", "jpeg"):
        raise UserError(f"--format {storage!r}: choose raw or jpeg")
    if not 1 <= int(quality) <= 100:
        raise UserError(f"--quality {quality}: must be 1..100")
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise UserError(f"{parent}: no such directory")
    # First: a second prepare of OUT refuses before it spends time listing, instead of deleting the
    # first one's partial output. The kernel drops the lock however this process ends.
    lock = FileLock(out + ".lock", remove=True)
    holder = lock.acquire()
    if holder is not None:
        raise UserError(f"{out}: another 'alexnet prepare' ({holder}) is writing this cache; "
                        f"wait for it to finish or choose another path")
    try:
        return _prepare_locked(source, out, parent, size=size, storage=storage, quality=int(quality),
                               skip_bad=skip_bad, workers=workers, quiet=quiet, labels=labels, classes=classes,
                               limit=limit, channels=channels, overwrite=overwrite, started=started)
    finally:
        lock.release()


def _prepare_locked(source, out: str, parent: str, *, size, storage: str, quality: int, skip_bad: bool, workers,
                    quiet: bool, labels, classes, limit, channels, overwrite: bool, started: float) -> PrepareSummary:
    """The body of :func:`prepare`, run while holding ``OUT.lock``."""
    src = source if isinstance(source, Source) else open_source(os.fspath(source), labels=labels, classes=classes, limit=limit,
                                                                  quiet=quiet)

    if size == "native":
        if src.encoded:
            raise UserError("--size native: only for datasets stored as pixel arrays (CIFAR, IDX); give a size, e.g. 256")
        shapes = {c.images.shape[1:3] for c in src.splits.values()}
        if len(shapes) != 1 or len({*next(iter(shapes))}) != 1:
            raise UserError(f"--size native: images are not square ({shapes})")
        size = next(iter(shapes))[0]
    size = int(size)
    if size < 1:
        raise UserError(f"--size {size}: must be at least 1")
    if channels == "auto":
        channels = _probe_channels(src)
    channels = int(channels)
    if channels not in (1, 3):
        raise UserError(f"--channels {channels}: choose 1 or 3")
    if src.channels is not None and channels != src.channels:
        raise UserError(f"--channels {channels}: {src.kind} images have {src.channels} channel(s)")
    workers = default_workers() if not workers else int(workers)
    if workers < 1:
        raise UserError(f"--workers {workers}: must be at least 1")

    fingerprint = hashlib.sha256(json.dumps([src.fingerprint(), size, channels, storage, quality,
                                             layout.CACHE_VERSION]).encode()).hexdigest()[:32]
    counts = {k: src.count(k) for k in src.splits}
    existing = layout.read_meta(out) if os.path.isdir(out) else None
    if os.path.exists(out):
        if existing and existing.get("complete") and existing.get("fingerprint") == fingerprint and not overwrite:
            return PrepareSummary(out, {k: v["count"] for k, v in existing["splits"].items()}, len(existing["classes"]),
                                  size, channels, storage, _dir_bytes(out), up_to_date=True)
        if not overwrite:
            what = "a cache prepared from a different source or with other options" if existing else "not a cache"
            raise UserError(f"{out}: already exists ({what}); choose another path or pass --overwrite")
    partial = out + ".partial"
    if src.empty_folders and not skip_bad:
        more = f" (and {len(src.empty_folders) - 1} more)" if len(src.empty_folders) > 1 else ""
        raise UserError(f"{_display(src, src.empty_folders[0])}: class folder holds no images{more} "
                        f"(use --skip-bad to continue without it and list it in skipped.csv)")

    writer = _Writer(partial, src, size, channels, storage, quiet)
    resume = os.path.isdir(partial) and writer.load_checkpoint(fingerprint)
    if not resume:
        if os.path.isdir(partial):
            shutil.rmtree(partial)
        os.makedirs(partial)
    resumed_from = writer.done_count() if resume else 0
    total = sum(counts.values())
    if storage == "raw":
        need = total * size * size * channels
        free = shutil.disk_usage(parent).free + (_dir_bytes(partial) if resume else 0)
        if need > free:
            raise UserError(f"{out}: needs {human_size(need)} for {total:,} images at {size}x{size}x{channels}, "
                            f"only {human_size(free)} free (try --format jpeg, or a smaller --size)")
    for folder in src.empty_folders:  # --skip-bad: said and listed, never silently dropped
        row = (_display(src, folder), "empty class folder (no images); no class made for it")
        if row not in writer.skipped:
            writer.skipped.append(row)
        if not quiet:
            sys.stderr.write(f"skipped {row[0]}: {row[1]}\n")
    try:
        writer.open_files(resume)
    except OSError as exc:
        raise UserError(f"{partial}: cannot write the cache ({exc.strerror or exc})") from None

    meta = {"format": layout.CACHE_FORMAT, "version": layout.CACHE_VERSION, "complete": False,
            "fingerprint": fingerprint, "size": size, "channels": channels, "storage": storage,
            "jpeg_quality": quality if storage == "jpeg" else None,
            "classes": src.classes, "class_names": src.class_names,
            "source": {"location": os.path.abspath(src.location), "kind": src.kind},
            "preprocessing": f"central square (integer offsets) rescaled to {size}x{size}, bilinear antialiased "
                             f"= short side {size} then central crop (Krizhevsky et al. 2012, Section 2); "
                             f"JPEG DCT-domain downscaling by 1/2..1/8 while the short side stays >= {size}",
            "pixel_scale": "uint8 0..255", **src.extra}
    config = {"size": size, "channels": channels, "storage": storage, "quality": quality,
              "raw_paths": {split: os.path.join(partial, layout.images_file(split)) for split in counts}}
    decoded = 0
    try:
        decoded = _run(src, writer, config, workers, skip_bad, quiet, fingerprint, total)
    except BaseException as exc:
        try:
            writer.checkpoint(fingerprint)
        except (OSError, UserError):
            pass  # the disk that failed the write may fail the checkpoint too; the cache stays partial
        finally:
            writer.close_files()
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
            raise UserError(f"{partial}: cannot write the cache ({exc.strerror}); the partial cache is kept "
                            f"and a re-run resumes it") from None
        raise
    try:
        final_counts = writer.finish(meta)
    except OSError as exc:
        raise UserError(f"{partial}: cannot write the cache ({exc.strerror or exc})") from None

    # A folder, not one file: it cannot go through atomic_write. Every file in it is on disk
    # (atomic_write, the fsync'd raw files) and meta.json says complete, so one rename publishes it.
    if os.path.exists(out):  # --overwrite: swap the new cache in, then remove the old one
        old = out + ".old"
        if os.path.exists(old):
            shutil.rmtree(old)
        os.rename(out, old)
        os.rename(partial, out)
        shutil.rmtree(old)
    else:
        os.rename(partial, out)
    return PrepareSummary(out, final_counts, len(src.classes), size, channels, storage, _dir_bytes(out),
                          list(writer.skipped), list(src.ignored), list(writer.warnings),
                          time.perf_counter() - started, decoded, resumed_from,
                          unlabelled=tuple(sorted(src.unlabelled)))


def _dir_bytes(path: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for fn in files:
            try:
                total += os.stat(os.path.join(dirpath, fn)).st_blocks * 512
            except OSError:
                pass
    return total


def _tasks(src: Source, writer: _Writer):
    """Work units for the images not done yet: chunks of encoded items, or of pixel arrays.

    Encoded chunks hold up to ENCODED_CHUNK images or ~1 MB of streamed bytes: big enough
    that the per-task overhead (IPC, bookkeeping in this process) stays small for 32x32
    JPEGs, small enough that the progress bar moves and memory stays flat.
    """
    for split, content in src.splits.items():
        pending = np.flatnonzero(~writer.done[split])
        if isinstance(content, ArraySplit):
            for start in range(0, len(content), ARRAY_CHUNK):
                stop = min(start + ARRAY_CHUNK, len(content))
                if not writer.done[split][start:stop].all():
                    yield "arrays", (split, start, np.ascontiguousarray(content.images[start:stop]))
            continue
        if src.kind == "tar-stream":
            by_member = {}
            for i in pending:
                item = content[i]
                if item.ref[0] == "stream":
                    by_member.setdefault(item.ref[1], []).append(int(i))
                else:
                    yield "encoded", (split, [(int(i), item.name, item.ref)])
            chunk, nbytes = [], 0
            for member, data in src.stream(set(by_member)):
                for i in by_member[member]:
                    chunk.append((i, content[i].name, data))
                    nbytes += len(data)
                if len(chunk) >= ENCODED_CHUNK or nbytes >= STREAM_CHUNK_BYTES:
                    yield "encoded", (split, chunk)
                    chunk, nbytes = [], 0
            if chunk:
                yield "encoded", (split, chunk)
            continue
        step = ENCODED_CHUNK if src.count(split) >= 64 * ENCODED_CHUNK else 4
        for start in range(0, len(pending), step):
            yield "encoded", (split, [(int(i), content[i].name, content[i].ref) for i in pending[start:start + step]])


def _died_line(partial: str, exc: WorkerDied) -> str:
    """The one line for a decoding worker that died: how, and what that usually means."""
    why = ""
    if exc.exitcode == -signal.SIGKILL:
        why = ": killed by hand or by the kernel's out-of-memory killer (fewer --workers need less memory)"
    elif exc.signal_name in ("SIGSEGV", "SIGBUS", "SIGABRT", "SIGILL", "SIGFPE"):
        why = ": a crash in an image decoder"
    return (f"{partial}: a decoding worker died ({exc.how}, process {exc.pid}){why}; the partial cache is kept "
            f"and a re-run resumes it")


def _run(src: Source, writer: _Writer, config: dict, workers: int, skip_bad: bool, quiet: bool,
         fingerprint: str, total: int) -> int:
    bar = progress(total, "prepare", "img", initial=writer.done_count(), disable=quiet)
    functions = {"encoded": _work_encoded, "arrays": _work_arrays}
    pool = None
    if workers > 1:
        pool = ProcessPool(workers, initializer=_init_worker, initargs=({**config, "pool": True},))
    else:
        _init_worker(config)
    decoded = 0

    def handle(result: dict) -> None:
        nonlocal decoded
        split = result["split"]
        content = src.splits[split]
        names = content.names if isinstance(content, ArraySplit) else None
        for index, error in result["errors"]:
            name = names[index] if names else content[index].name
            line = f"{_display(src, name)}: {error}"
            if not skip_bad:
                raise UserError(f"{line} (use --skip-bad to skip bad files and list them in skipped.csv)")
            writer.skipped.append((_display(src, name), error))
            writer.done[split][index] = True
            if not quiet:
                bar.write(f"skipped {line}", file=sys.stderr)
        for index, warning in result["warnings"]:
            name = names[index] if names else content[index].name
            writer.warnings.append((_display(src, name), warning))
            if not quiet:
                bar.write(f"warning: {_display(src, name)}: {warning}", file=sys.stderr)
        writer.store_many(split, result["indices"], result["images"], result["blobs"])
        n = len(result["indices"])
        if n:
            writer.add_stats(split, result["xtx"], result["image_sum"], n)
        decoded += n
        bar.update(n + len(result["errors"]))

    try:
        with StopFlag(second_interrupts=False) as stop:
            finished = False
            try:
                _drive(src, writer, functions, pool, workers, handle, stop, fingerprint)
                finished = True
            finally:
                if pool is not None:     # still under the StopFlag: a second Ctrl-C cannot cut this short
                    pool.close(kill=not finished)
    finally:
        bar.close()
        _close_raw_files()      # the rows written in this process (workers=1)
    return decoded


def _drive(src: Source, writer: _Writer, functions: dict, pool, workers: int, handle, stop: StopFlag,
           fingerprint: str) -> None:
    """Feed the tasks through ``handle`` (in this process, or a pool of ``workers`` processes), checking
    ``stop`` after each result and checkpointing every CHECKPOINT_SECONDS."""
    last_checkpoint = time.monotonic()
    if pool is None:
        for kind, task in _tasks(src, writer):
            handle(functions[kind](task))
            stop.check()
            if time.monotonic() - last_checkpoint > CHECKPOINT_SECONDS:
                writer.checkpoint(fingerprint)
                last_checkpoint = time.monotonic()
    else:
        work = ((functions[kind], task) for kind, task in _tasks(src, writer))
        try:
            for result in pool.imap(work, stop.check, window=4 * workers, poll=POLL_SECONDS):
                handle(result)
                stop.check()
                if time.monotonic() - last_checkpoint > CHECKPOINT_SECONDS:
                    writer.checkpoint(fingerprint)
                    last_checkpoint = time.monotonic()
        except WorkerDied as exc:
            stop.check()     # a SIGTERM to the whole process group ends the workers too: that is a stop
            raise UserError(_died_line(writer.root, exc)) from None
    stop.check()
