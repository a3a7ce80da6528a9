"""What every source reader produces: the listing (:class:`Source` of :class:`Item`s or
:class:`ArraySplit`s), where an item's bytes live, and the rules shared by all readers
(member names, stray files, class lists)."""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass, field

import numpy as np

from ...errors import UserError

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
STRAY_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r"}
MAX_MEMBER_BYTES = 1 << 28   # an archive member larger than this (256 MB) is not an image anyone meant
GRAY_MODES = ("L", "1", "I;16", "I;16B", "I;16L", "I", "F")
UNLABELLED = -1              # the label of every image of a split that has none (the ILSVRC test set)


@dataclass
class Item:
    """One encoded image: its display name (relative to the source), label and where its bytes are."""
    name: str
    label: int
    ref: tuple  # ("file", path) | ("tar", tar_path, offset, size) | ("stream", member_name) | ("broken", why)


@dataclass
class ArraySplit:
    """A split whose pixels are already decoded (CIFAR, IDX): NxHxWxC uint8."""
    images: np.ndarray
    labels: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Source:
    kind: str                       # folder | tar | tar-stream | ilsvrc | cifar-python | cifar-binary | idx
    location: str
    classes: list[str]
    splits: dict                    # split name -> list[Item] | ArraySplit
    ignored: list = field(default_factory=list)   # (name, reason): stray and non-image files
    channels: int | None = None     # fixed by the format (IDX 1, CIFAR 3) or None: decide from the images
    class_names: list[str] | None = None           # readable names when the classes are ids (wnids)
    empty_folders: list = field(default_factory=list)  # class folders holding no image (names as listed)
    all_gray: bool | None = None    # compressed tars: every image probed while listing was grayscale
    link_targets: frozenset = frozenset()           # compressed tars: members that a hard link points at
    unlabelled: frozenset = frozenset()             # splits without labels (every label UNLABELLED)
    extra: dict = field(default_factory=dict)       # kept in the cache's meta.json (e.g. the devkit's IDs)

    @property
    def encoded(self) -> bool:
        return not any(isinstance(s, ArraySplit) for s in self.splits.values())

    def count(self, split: str) -> int:
        return len(self.splits[split])

    def fingerprint(self) -> str:
        """Identifies the listing (names, labels, classes): a re-run resumes only when it matches."""
        h = hashlib.sha256()
        h.update(f"{self.kind}|{os.path.abspath(self.location)}|{self.classes}".encode())
        for split, content in sorted(self.splits.items()):
            h.update(split.encode())
            if isinstance(content, ArraySplit):
                h.update(str(content.images.shape).encode())
                h.update(hashlib.sha256(content.labels.tobytes()).digest())
            else:
                for item in content:
                    h.update(f"{item.name}\0{item.label}\n".encode())
        return h.hexdigest()[:32]

    def stream(self, wanted: set[str]):
        """Yield (member name, bytes) for members of a compressed tar, in archive order.

        Streamed (tarfile's ``r|*``): one member's bytes in memory at a time, whatever the
        archive's size. A hard link yields its target's bytes, remembered from earlier in
        the stream when the target is itself wanted or small."""
        seen: dict[str, bytes] = {}
        with tarfile.open(self.location, "r|*") as tf:
            for member in tf:
                if member.islnk():
                    if member.name in wanted:
                        yield member.name, seen.get(member.linkname, b"")
                    continue
                if not member.isfile() or member.size > MAX_MEMBER_BYTES:
                    continue
                if member.name in wanted or member.name in self.link_targets:
                    data = tf.extractfile(member).read()
                    if member.name in self.link_targets:
                        seen[member.name] = data
                    if member.name in wanted:
                        yield member.name, data


def read_payload(ref: tuple) -> bytes:
    """The bytes of an item, read where it lives (run in the worker processes)."""
    if ref[0] == "file":
        with open(ref[1], "rb") as f:
            return f.read()
    if ref[0] == "tar":
        _, path, offset, size = ref
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise OSError(f"archive ends early: read {len(data):,} of {size:,} bytes")
        return data
    raise ValueError(f"payload {ref[0]!r} must be streamed")


def member_name(name: str) -> str:
    """A tar member's path relative to the archive: leading ``./`` prefixes removed, nothing else.

    ``./a`` -> ``a``; ``.hidden`` and ``../x`` are left as they are (the first is a hidden
    file, the second escapes the archive and is refused by the caller).
    """
    while name.startswith("./"):
        name = name[2:]
    return name


def is_stray(relpath: str) -> str | None:
    """Why a file is not part of the dataset (``.DS_Store``, hidden, ``__MACOSX``), or None."""
    parts = relpath.split("/")
    base = parts[-1]
    if base.lower() in STRAY_NAMES:
        return f"stray file ({base})"
    if any(p.startswith(".") for p in parts):
        return "hidden file"
    if any(p == "__MACOSX" for p in parts):
        return "stray file (__MACOSX)"
    return None


def read_class_list(path: str) -> tuple[list[str], list[str]]:
    """A class list: one class per line, as ``wnid``, ``wnid name`` or ``index wnid name``."""
    try:
        lines = [ln.split() for ln in open(path, encoding="utf-8").read().splitlines() if ln.strip()]
    except OSError as exc:
        raise UserError(f"{path}: cannot read class list ({exc.strerror})") from None
    ids, names = [], []
    for i, parts in enumerate(lines):
        if parts[0].isdigit() and len(parts) >= 2:
            if int(parts[0]) != i:
                raise UserError(f"{path}:{i + 1}: index {parts[0]} out of order (expected {i})")
            parts = parts[1:]
        ids.append(parts[0])
        names.append(" ".join(parts[1:]) or parts[0])
    if len(set(ids)) != len(ids):
        raise UserError(f"{path}: duplicate class ids")
    return ids, names


def limit_per_class(content, limit: int):
    """The first ``limit`` images of each class of a split (in listing order)."""
    if isinstance(content, ArraySplit):
        keep = np.zeros(len(content.labels), dtype=bool)
        for label in np.unique(content.labels):
            keep[np.flatnonzero(content.labels == label)[:limit]] = True
        idx = np.flatnonzero(keep)
        return ArraySplit(content.images[idx], content.labels[idx], [content.names[i] for i in idx])
    seen: dict[int, int] = {}
    out = []
    for item in content:
        if seen.get(item.label, 0) < limit:
            seen[item.label] = seen.get(item.label, 0) + 1
            out.append(item)
    return out
