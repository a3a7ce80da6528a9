"""CIFAR-10/100 in the official python format (pickled batches, loaded with a restricted
unpickler that can only rebuild numpy arrays and plain containers: no pickled code runs)
and in the official binary format, from a folder or an archive."""

from __future__ import annotations

import _codecs
import io
import os
import pickle

import numpy as np
import numpy._core.multiarray as np_multiarray  # numpy >= 2; numpy.core is a deprecated alias

from ...errors import UserError
from .base import ArraySplit, Source, member_name


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


def cifar_kind(names: set[str]) -> tuple[str, str] | None:
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


def build_cifar(kind: str, location: str, read) -> Source:
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


def cifar_in_directory(path: str, names: set[str]) -> Source | None:
    """A CIFAR distribution among ``names`` (paths relative to the folder ``path``), or None."""
    cifar = cifar_kind(names)
    if not cifar:
        return None
    kind, folder = cifar

    def read(fn: str):
        p = os.path.join(path, folder, fn)
        return open(p, "rb").read() if os.path.isfile(p) else None
    return build_cifar(kind, path, read)


def is_cifar_file(name: str) -> bool:
    """A member a CIFAR distribution is made of (kept from a compressed tar's listing pass)."""
    base, folder = os.path.basename(name), os.path.dirname(name)
    return any(base in (*train, *test, meta) for train, test, meta, _, _ in _CIFAR_LAYOUTS.values()) and (
        "cifar" in folder.lower() or folder == "")


def cifar_in_tar(path: str, members, read_member) -> Source | None:
    """A CIFAR distribution inside a tar; ``read_member(member)`` -> its bytes (or None)."""
    by_name = {member_name(m.name): m for m in members if m.isfile()}
    cifar = cifar_kind(set(by_name))
    if not cifar:
        return None
    kind, folder = cifar

    def read(fn: str):
        m = by_name.get(f"{folder}/{fn}" if folder else fn)
        return read_member(m) if m is not None else None
    return build_cifar(kind, path, read)
