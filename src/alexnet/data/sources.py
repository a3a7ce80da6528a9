"""Reading datasets as they are distributed: what images exist, their labels and splits.

A *source* is listed once, without decoding anything:

* image folder trees ``ROOT/<class>/<image>``, optionally under split folders
  (``train/``, ``val/``, ``test/``), as a directory or inside a ``.tar`` (read in place,
  every worker reading its own members by offset) or a compressed tar (``.tar.gz``,
  ``.tgz``, ``.tar.bz2``, ``.tar.xz``: streamed, never held in memory whole - once to
  list it, once more to read the images, in archive order);
* ILSVRC-2012 as distributed: ``train/<wnid>/*.JPEG`` plus a *flat* ``val/`` folder
  whose labels come from a ground-truth list (one wnid or class index per line, in
  sorted file order; or ``name label`` lines; or Kaggle's ``LOC_val_solution.csv``);
* CIFAR-10/100 in the official python format (pickled batches, loaded with a
  restricted unpickler that can only rebuild numpy arrays and plain containers: no
  pickled code runs) and in the official binary format;
* MNIST / Fashion-MNIST IDX files (``.gz`` or not), e.g. ``/usr/share/datasets/fashion-mnist``
  (the shorthand ``fashion-mnist`` names that Debian location).

Class order is the sorted class-folder names (the ILSVRC convention: sorted wnids
give the standard index order) unless a class list is given (``--classes``), and is
recorded in the cache. Stray files (``.DS_Store``, ``Thumbs.db``, hidden files,
``__MACOSX``) and files that are not images by extension are ignored *and counted*;
files that claim to be images but are not are left to the decoder to report. A class
folder that holds no image (nothing, or only stray and non-image files) is listed in
``Source.empty_folders`` (``prepare`` refuses it unless told to skip bad input), in a
directory and in an archive alike. A symbolic link that leads back to a folder above it
(a loop) is refused with one line instead of being followed round and round.
"""

from __future__ import annotations

import _codecs
import gzip
import hashlib
import io
import lzma
import os
import pickle
import re
import tarfile
from dataclasses import dataclass, field

import numpy as np
import numpy._core.multiarray as np_multiarray  # numpy >= 2; numpy.core is a deprecated alias
from PIL import Image

from ..errors import UserError
from .decode import IMAGE_EXTENSIONS

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
SHORTHANDS = {"fashion-mnist": FASHION_MNIST_DIR}
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}
STRAY_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r"}
MAX_MEMBER_BYTES = 1 << 28   # an archive member larger than this (256 MB) is not an image anyone meant
SIDE_FILE_BYTES = 64 << 20   # label lists and CIFAR batches kept from a compressed tar's listing pass
CHANNEL_PROBES = 32          # grayscale probes per doubling of a compressed tar's member count
GRAY_MODES = ("L", "1", "I;16", "I;16B", "I;16L", "I", "F")
COMPRESSED_TAR = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
LABEL_FILE_PATTERN = re.compile(r"(ground[_-]?truth|labels?|solution)[^/]*\.(txt|csv)$", re.IGNORECASE)


@dataclass
class Item:
    """One encoded image: its display name (relative to the source), label and where its bytes are."""
    name: str
    label: int
    ref: tuple  # ("file", path) | ("tar", tar_path, offset, size) | ("stream", member_name)


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
    kind: str                       # folder | tar | tar-stream | cifar-python | cifar-binary | idx
    location: str
    classes: list[str]
    splits: dict                    # split name -> list[Item] | ArraySplit
    ignored: list = field(default_factory=list)   # (name, reason): stray and non-image files
    channels: int | None = None     # fixed by the format (IDX 1, CIFAR 3) or None: decide from the images
    class_names: list[str] | None = None           # readable names when the classes are ids (wnids)
    empty_folders: list = field(default_factory=list)  # class folders holding no image (names as listed)
    all_gray: bool | None = None    # compressed tars: every image probed while listing was grayscale
    link_targets: frozenset = frozenset()           # compressed tars: members that a hard link points at

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


# --------------------------------------------------------------------------------------
# entry point

def open_source(spec: str, *, labels: str | None = None, classes: str | None = None,
                limit: int | None = None) -> Source:
    """List the dataset at ``spec`` (a path or a shorthand). Nothing is decoded."""
    path = SHORTHANDS.get(spec, spec)
    if not os.path.exists(path):
        hint = f" (shorthands: {', '.join(SHORTHANDS)})" if os.sep not in spec else ""
        raise UserError(f"{spec}: no such file or directory{hint}")
    class_list = _read_class_list(classes) if classes else None
    if os.path.isdir(path):
        source = _open_directory(path, labels, class_list)
    elif path.lower().endswith(".tar") or path.lower().endswith(COMPRESSED_TAR):
        source = _open_tar(path, labels, class_list)
    else:
        raise UserError(f"{path}: not a folder or a .tar/.tar.gz archive")
    if limit is not None:
        if limit < 1:
            raise UserError(f"--limit {limit}: must be at least 1")
        source.splits = {name: _limit_per_class(content, limit) for name, content in source.splits.items()}
    order = {"train": 0, "val": 1, "test": 2}
    source.splits = dict(sorted(source.splits.items(), key=lambda kv: (order.get(kv[0], 3), kv[0])))
    for name, content in source.splits.items():
        if len(content) == 0:
            raise UserError(f"{path}: split '{name}' has no images")
    if not source.splits:
        raise UserError(f"{path}: no images found")
    return source


def _limit_per_class(content, limit: int):
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


def _read_class_list(path: str) -> tuple[list[str], list[str] | None]:
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


# --------------------------------------------------------------------------------------
# folder trees, in a directory or a tar

def _is_stray(relpath: str) -> str | None:
    parts = relpath.split("/")
    base = parts[-1]
    if base.lower() in STRAY_NAMES:
        return f"stray file ({base})"
    if any(p.startswith(".") for p in parts):
        return "hidden file"
    if any(p == "__MACOSX" for p in parts):
        return "stray file (__MACOSX)"
    return None


def _open_directory(path: str, labels: str | None, class_list) -> Source:
    special = _detect_arrays_in_directory(path)
    if special is not None:
        return special
    entries = []  # (relpath, ref)
    folders = []  # every folder's relpath: a class folder holding no image must still be seen
    # Folder identities (device, inode) from the root down to each folder: a symbolic link to
    # one of them is a loop, which os.walk(followlinks=True) would follow until the path is too long.
    above: dict[str, frozenset] = {}
    for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
        st = os.stat(dirpath)
        chain = above.pop(dirpath, frozenset()) | {(st.st_dev, st.st_ino)}
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, path)
        if rel_dir != ".":
            folders.append(rel_dir.replace(os.sep, "/"))
        for d in dirnames:
            sub = os.path.join(dirpath, d)
            try:
                sub_st = os.stat(sub)
            except OSError:
                continue
            if (sub_st.st_dev, sub_st.st_ino) in chain:
                raise UserError(f"{sub}: symbolic link loop (it leads back to {os.path.realpath(sub)}, a folder "
                                f"above it); remove the link or point it elsewhere")
            above[sub] = chain
        for fn in sorted(filenames):
            rel = fn if rel_dir == "." else f"{rel_dir}/{fn}".replace(os.sep, "/")
            entries.append((rel, ("file", os.path.join(dirpath, fn))))
        # A dangling symlink named like a directory shows up in neither list; os.walk lists
        # broken symlinks under filenames, so they reach the decoder and get reported.
    return _build_tree("folder", path, entries, [], labels, class_list, read=_read_local(path), folders=folders)


def _read_local(root: str):
    def read(rel: str) -> bytes:
        with open(os.path.join(root, rel), "rb") as f:
            return f.read()
    return read


def _open_tar(path: str, labels: str | None, class_list) -> Source:
    if path.lower().endswith(COMPRESSED_TAR):
        return _open_compressed_tar(path, labels, class_list)
    try:
        tf = tarfile.open(path, "r:")
        members = tf.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"{path}: not a readable tar archive ({exc})") from None
    with tf:
        by_name = {m.name: m for m in members}
        special = _detect_arrays_in_tar(path, members, lambda m: tf.extractfile(m).read())
        if special is not None:
            return special
        entries, folders = _tar_entries(path, members, by_name, compressed=False)

        def read(rel: str) -> bytes:
            return tf.extractfile(by_name[rel] if rel in by_name else by_name["./" + rel]).read()

        return _build_tree("tar", path, entries, [], labels, class_list, read=read, folders=folders)


def _open_compressed_tar(path: str, labels: str | None, class_list) -> Source:
    """List a compressed tar in one streamed pass (bounded memory: an archive that decompresses
    to terabytes is read, not held), keeping only the small side files (label lists, CIFAR
    batches) and probing a spread of images for colour."""
    side: dict[str, bytes] = {}
    probes = {"seen": 0, "stride": 1, "taken": 0, "gray": True}
    members = []
    try:
        with tarfile.open(path, "r|*") as tf:
            for m in tf:
                members.append(m)
                if not m.isfile() or m.size > MAX_MEMBER_BYTES:
                    continue
                name = m.name[2:] if m.name.startswith("./") else m.name
                base = os.path.basename(name)
                if (m.size <= SIDE_FILE_BYTES and LABEL_FILE_PATTERN.search(name)) or _is_cifar_file(name):
                    side[name] = tf.extractfile(m).read()
                elif os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not _is_stray(name) and base:
                    if probes["gray"] and probes["seen"] % probes["stride"] == 0:
                        probes["gray"] = _is_gray(tf.extractfile(m).read(), probes["gray"])
                        probes["taken"] += 1
                        if probes["taken"] >= CHANNEL_PROBES:   # spread the probes ever wider
                            probes["stride"] *= 2
                            probes["taken"] = 0
                    probes["seen"] += 1
    except (tarfile.TarError, OSError, EOFError, lzma.LZMAError) as exc:
        raise UserError(f"{path}: not a readable tar archive ({exc})") from None
    by_name = {m.name: m for m in members}
    special = _detect_arrays_in_tar(path, members, lambda m: side.get(m.name[2:] if m.name.startswith("./") else m.name))
    if special is not None:
        return special
    entries, folders = _tar_entries(path, members, by_name, compressed=True)

    def read(rel: str) -> bytes:
        return side[rel]

    source = _build_tree("tar-stream", path, entries, [], labels, class_list, read=read, folders=folders)
    source.all_gray = probes["gray"] if probes["seen"] else None
    source.link_targets = frozenset(m.linkname for m in members if m.islnk())
    return source


def _is_gray(data: bytes, default: bool) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.mode in GRAY_MODES
    except Exception:   # noqa: BLE001 - a bad file: the decoder reports it properly later
        return default


def _tar_entries(path: str, members: list, by_name: dict, compressed: bool) -> tuple[list, list]:
    """(entries, folders) of a tar's listing; refuses members that escape the archive."""
    entries, folders = [], []
    for m in members:
        target = m
        if m.name.startswith("/") or ".." in m.name.split("/"):
            # Never benign (a "tar-slip" attempt): refuse the whole archive, even with --skip-bad.
            raise UserError(f"{path}:{m.name}: member path escapes the archive (absolute or '..'); "
                            f"refusing the archive")
        if m.isdir():
            name = m.name[2:] if m.name.startswith("./") else m.name
            if name.strip("/") not in ("", "."):
                folders.append(name.rstrip("/"))
            continue
        if m.islnk():
            target = by_name.get(m.linkname)
            if target is None or not target.isfile():
                entries.append((m.name.lstrip("./") or m.name, ("broken", f"hard link to missing member {m.linkname}")))
                continue
        elif m.issym():
            entries.append((m.name, ("broken", "symbolic link inside an archive")))
            continue
        elif not m.isfile():
            continue
        name = m.name[2:] if m.name.startswith("./") else m.name
        if target.size > MAX_MEMBER_BYTES:
            ref = ("broken", f"member of {target.size:,} bytes, larger than any image ({MAX_MEMBER_BYTES:,})")
        elif compressed:
            ref = ("stream", m.name)
        else:
            ref = ("tar", os.path.abspath(path), target.offset_data, target.size)
        entries.append((name, ref))
    return entries, folders


def _build_tree(kind: str, location: str, entries: list, ignored: list, labels: str | None, class_list,
                read, folders: list = ()) -> Source:
    """Folder-tree logic shared by directories and archives. ``read(rel)`` reads a small side file;
    ``folders``: every folder's relpath (an archive lists only those it has members for)."""
    images, others = [], []
    for rel, ref in entries:
        reason = _is_stray(rel)
        if reason:
            ignored.append((rel, reason))
        elif os.path.splitext(rel)[1].lower() in IMAGE_EXTENSIONS:
            images.append((rel, ref))
        else:
            others.append((rel, ref))
    if not images:
        raise UserError(f"{location}: no image files found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")

    # Descend through a single wrapping folder (e.g. imagewoof2-160/train/...), keeping a directory level.
    prefix = ""
    while True:
        firsts = {rel[len(prefix):].split("/", 1)[0] for rel, _ in images}
        if len(firsts) != 1:
            break
        (first,) = firsts
        if first.lower() in SPLIT_ALIASES or not all(rel[len(prefix):].count("/") >= 2 for rel, _ in images):
            break
        prefix += first + "/"

    def strip(rel: str) -> str:
        return rel[len(prefix):]

    tops = {strip(rel).split("/", 1)[0] for rel, _ in images if "/" in strip(rel)}
    split_dirs = {t: SPLIT_ALIASES[t.lower()] for t in tops if t.lower() in SPLIT_ALIASES}
    label_files = [(rel, ref) for rel, ref in others if LABEL_FILE_PATTERN.search(rel)]

    per_split: dict[str, list] = {}
    for rel, ref in images:
        r = strip(rel)
        if not rel.startswith(prefix):
            ignored.append((rel, "outside the dataset folder"))
            continue
        if split_dirs:
            top, _, rest = r.partition("/")
            if top not in split_dirs:
                ignored.append((rel, f"image outside the split folders ({', '.join(sorted(split_dirs))})"))
                continue
            per_split.setdefault(split_dirs[top], []).append((rel, rest, ref))
        else:
            per_split.setdefault("train", []).append((rel, r, ref))
    for rel, _ in others:
        if (rel, _) not in label_files:
            ignored.append((rel, "not an image file (extension)"))

    # Class folders without an image (empty, or only stray / non-image files) would vanish
    # with their class: find them among every folder and every file's folder.
    def class_folder(rel_dir: str) -> tuple[str, str, str] | None:
        """(split, class, folder relpath) of the class folder holding ``rel_dir``, if any."""
        if not rel_dir.startswith(prefix) or _is_stray(rel_dir):
            return None
        parts = rel_dir[len(prefix):].split("/")
        if split_dirs:
            if parts[0] not in split_dirs or len(parts) < 2:
                return None
            return split_dirs[parts[0]], parts[1], prefix + "/".join(parts[:2])
        return "train", parts[0], prefix + parts[0]

    has_images = {(split, rest.split("/", 1)[0]) for split, items in per_split.items() for _, rest, _ in items
                  if "/" in rest}
    flat_splits = {split for split, items in per_split.items() if any("/" not in rest for _, rest, _ in items)}
    candidates = {class_folder(f) for f in folders} | {class_folder(rel.rsplit("/", 1)[0])
                                                       for rel, _ in entries if "/" in rel}
    empty_folders = sorted(c[2] for c in candidates
                           if c and c[0] not in flat_splits and (c[0], c[1]) not in has_images)

    # classes: sorted folder names across splits, unless an official list is given
    folder_classes = sorted({rest.split("/", 1)[0] for items in per_split.values()
                             for _, rest, _ in items if "/" in rest})
    if class_list is not None:
        classes, class_names = class_list
        unknown = [c for c in folder_classes if c not in set(classes)]
        if unknown:
            raise UserError(f"{location}: class folder(s) not in the class list: {', '.join(unknown[:5])}"
                            + (" ..." if len(unknown) > 5 else ""))
    else:
        classes, class_names = folder_classes, None

    splits: dict[str, list[Item]] = {}
    flat_labels_needed = {s: items for s, items in per_split.items() if any("/" not in rest for _, rest, _ in items)}
    for split, items in per_split.items():
        nested = [(rel, rest, ref) for rel, rest, ref in items if "/" in rest]
        flat = [(rel, rest, ref) for rel, rest, ref in items if "/" not in rest]
        if nested and flat:
            raise UserError(f"{location}: split '{split}' mixes class folders and loose images "
                            f"(e.g. {flat[0][0]})")
        if nested:
            index = {c: i for i, c in enumerate(classes)}
            out = [Item(rel, index[rest.split("/", 1)[0]], ref) for rel, rest, ref in nested]
            out.sort(key=lambda it: (it.label, it.name))
            splits[split] = out
    for split, items in flat_labels_needed.items():
        flat = sorted(items, key=lambda t: t[1])
        label_tokens = _flat_labels(location, split, flat, labels, label_files, read, prefix)
        if class_list is None and not classes:
            if all(not _is_int(t) for t in label_tokens):
                classes = sorted(set(label_tokens))
            else:
                classes = [str(i) for i in range(max(int(t) for t in label_tokens) + 1)]
        splits[split] = [Item(rel, _label_index(tok, classes, location, rel), ref)
                         for (rel, _, ref), tok in zip(flat, label_tokens)]
    return Source(kind, location, classes, splits, ignored, None, class_names, empty_folders=empty_folders)


def _is_int(token: str) -> bool:
    return token.lstrip("-").isdigit()


def _label_index(token: str, classes: list[str], location: str, rel: str) -> int:
    if _is_int(token):
        i = int(token)
        if not 0 <= i < len(classes):
            raise UserError(f"{location}: label {i} of {rel} is outside 0..{len(classes) - 1}")
        return i
    try:
        return classes.index(token)
    except ValueError:
        raise UserError(f"{location}: label {token!r} of {rel} is not a known class") from None


def _flat_labels(location, split, flat, labels, label_files, read, prefix) -> list[str]:
    """Labels of a flat split (ILSVRC val): from --labels or a ground-truth file in the source."""
    if labels:
        try:
            text = open(labels, encoding="utf-8").read()
        except OSError as exc:
            raise UserError(f"{labels}: cannot read labels ({exc.strerror})") from None
        origin = labels
    else:
        if len(label_files) != 1:
            found = ", ".join(rel for rel, _ in label_files) or "none found"
            raise UserError(f"{location}: split '{split}' is a flat folder of images without class folders; "
                            f"give its labels with --labels FILE (one wnid or class index per line, in sorted "
                            f"file order) [label files in the source: {found}]")
        rel, ref = label_files[0]
        text = read(rel).decode("utf-8")
        origin = f"{location}:{rel}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    stems = [os.path.splitext(rest)[0] for _, rest, _ in flat]
    if lines and lines[0].replace(" ", "").lower().startswith("imageid,predictionstring"):
        mapping = {}
        for ln in lines[1:]:
            name, _, pred = ln.partition(",")
            mapping[name.strip()] = pred.split()[0] if pred.split() else ""
        missing = [s for s in stems if s not in mapping]
        if missing:
            raise UserError(f"{origin}: no label for {missing[0]} ({len(missing)} images without labels)")
        return [mapping[s] for s in stems]
    if all(len(ln.split()) == 1 for ln in lines):
        if len(lines) != len(flat):
            raise UserError(f"{origin}: {len(lines):,} labels for {len(flat):,} images in split '{split}' "
                            f"(one label per line, in sorted file order)")
        return lines
    mapping = {}
    for ln in lines:
        parts = ln.replace(",", " ").split()
        mapping[os.path.splitext(os.path.basename(parts[0]))[0]] = parts[1]
    missing = [s for s in stems if s not in mapping]
    if missing:
        raise UserError(f"{origin}: no label for {missing[0]} ({len(missing)} images without labels)")
    return [mapping[s] for s in stems]


# --------------------------------------------------------------------------------------
# CIFAR (python pickles and binary records) and IDX

class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts/lists/bytes/str/numbers and numpy arrays, and refuses every other global.

    The CIFAR python batches are pickles; a pickle can name any importable callable and
    have it called while loading. Only the globals numpy's own array pickling uses are
    resolved here, so loading never runs code from the file.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def __init__(self, file, where: str):
        super().__init__(file, encoding="bytes")
        self.where = where

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise UserError(f"{self.where}: refusing to load pickled global {module}.{name} "
                            f"(only numpy arrays and plain containers are allowed)")
        if module.startswith("numpy"):
            if name in ("_reconstruct", "scalar"):
                return getattr(np_multiarray, name)
            return getattr(np, name)
        return _codecs.encode


def load_pickle_safely(data: bytes, where: str):
    try:
        return _ArraysOnlyUnpickler(io.BytesIO(data), where).load()
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{where}: not a valid CIFAR python batch ({type(exc).__name__}: {exc})") from None


def _key(d: dict, name: str):
    for k in (name.encode(), name):
        if k in d:
            return d[k]
    return None


def _as_text(x) -> str:
    return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)


def _cifar_python_batch(data: bytes, where: str, label_key: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    d = load_pickle_safely(data, where)
    if not isinstance(d, dict):
        raise UserError(f"{where}: not a CIFAR batch (a pickled {type(d).__name__}, expected a dict)")
    pixels, labels = _key(d, "data"), _key(d, label_key)
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3072:
        raise UserError(f"{where}: 'data' is not an Nx3072 uint8 array")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (pixels.shape[0],):
        raise UserError(f"{where}: {len(labels)} labels for {pixels.shape[0]} images")
    names = [_as_text(n) for n in (_key(d, "filenames") or [])] or [f"{os.path.basename(where)}[{i}]" for i in range(len(labels))]
    # CIFAR rows: 1024 red, 1024 green, 1024 blue values, each a 32x32 image in row-major order
    images = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels, names


def _cifar_binary_batch(data: bytes, where: str, label_bytes: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    record = label_bytes + 3072
    if len(data) == 0 or len(data) % record:
        raise UserError(f"{where}: {len(data):,} bytes is not a whole number of {record}-byte CIFAR records")
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    labels = rows[:, label_bytes - 1].astype(np.int64)  # CIFAR-100: <coarse><fine>; we use fine
    images = rows[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    base = os.path.basename(where)
    return images, labels, [f"{base}[{i}]" for i in range(len(labels))]


_CIFAR_LAYOUTS = {
    # kind: (train files, test files, meta file, label key / label bytes, class-name key)
    "cifar10-python": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta", "labels", "label_names"),
    "cifar100-python": (["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
    "cifar10-binary": ([f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"], "batches.meta.txt", 1, None),
    "cifar100-binary": (["train.bin"], ["test.bin"], "fine_label_names.txt", 2, None),
}


def _cifar_kind(names: set[str]) -> tuple[str, str] | None:
    """(layout, folder prefix) when the listed relative paths hold a CIFAR distribution."""
    for n in names:
        base, folder = os.path.basename(n), os.path.dirname(n)
        if base == "data_batch_1":
            return "cifar10-python", folder
        if base == "data_batch_1.bin":
            return "cifar10-binary", folder
        if base == "train" and folder.endswith("cifar-100-python"):
            return "cifar100-python", folder
        if base == "train.bin" and folder.endswith("cifar-100-binary"):
            return "cifar100-binary", folder
    return None


def _build_cifar(kind: str, location: str, read) -> Source:
    train_files, test_files, meta_file, label, names_key = _CIFAR_LAYOUTS[kind]
    splits = {}
    for split, files in (("train", train_files), ("test", test_files)):
        parts = []
        for fn in files:
            where = f"{location}:{fn}"
            data = read(fn)
            if data is None:
                raise UserError(f"{location}: CIFAR file {fn} is missing")
            if kind.endswith("python"):
                parts.append(_cifar_python_batch(data, where, label))
            else:
                parts.append(_cifar_binary_batch(data, where, label))
        splits[split] = ArraySplit(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                                   [n for p in parts for n in p[2]])
    meta = read(meta_file)
    n_classes = int(max(s.labels.max() for s in splits.values())) + 1
    classes = [str(i) for i in range(n_classes)]
    if meta is not None:
        if kind.endswith("python"):
            d = load_pickle_safely(meta, f"{location}:{meta_file}")
            found = [_as_text(x) for x in (_key(d, names_key) or [])] if isinstance(d, dict) else []
        else:
            found = [ln.strip() for ln in meta.decode("utf-8", "replace").splitlines() if ln.strip()]
        if len(found) >= n_classes:
            classes = found
    return Source(kind, location, classes, splits, [], 3, None)


def _detect_arrays_in_directory(path: str) -> Source | None:
    names = set()
    for dirpath, _, filenames in os.walk(path):
        for fn in filenames:
            names.add(os.path.relpath(os.path.join(dirpath, fn), path).replace(os.sep, "/"))
        if len(names) > 10000:
            break
    cifar = _cifar_kind(names)
    if cifar:
        kind, folder = cifar

        def read(fn: str):
            p = os.path.join(path, folder, fn)
            return open(p, "rb").read() if os.path.isfile(p) else None
        return _build_cifar(kind, path, read)
    idx_images = sorted(n for n in names if re.search(r"idx3-ubyte(\.gz)?$", n))
    if idx_images:
        return _build_idx(path, idx_images, names)
    return None


def _is_cifar_file(name: str) -> bool:
    """A member a CIFAR distribution is made of (kept from a compressed tar's listing pass)."""
    base, folder = os.path.basename(name), os.path.dirname(name)
    return any(base in (*train, *test, meta) for train, test, meta, _, _ in _CIFAR_LAYOUTS.values()) and (
        "cifar" in folder.lower() or folder == "")


def _detect_arrays_in_tar(path: str, members, read_member) -> Source | None:
    """A CIFAR distribution inside a tar; ``read_member(member)`` -> its bytes (or None)."""
    names = {m.name[2:] if m.name.startswith("./") else m.name for m in members if m.isfile()}
    cifar = _cifar_kind(names)
    if not cifar:
        return None
    kind, folder = cifar
    by_name = {(m.name[2:] if m.name.startswith("./") else m.name): m for m in members if m.isfile()}

    def read(fn: str):
        m = by_name.get(f"{folder}/{fn}" if folder else fn)
        return read_member(m) if m is not None else None
    return _build_cifar(kind, path, read)


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


def _build_idx(path: str, image_files: list[str], all_names: set[str]) -> Source:
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
