"""The 1000 ILSVRC-2012 classes (Russakovsky et al., IJCV 2015): WordNet ids in the
standard index order, and their readable names.

The list is *not* shipped with the package: it is read at run time from, in order,

1. ``$ALEXNET_IMAGENET_CLASSES``: a text file with one ``index wnid name`` per line
   (names use underscores for spaces, e.g. ``207 n02099601 golden_retriever``);
2. ``alexnet.locations.shared_dir() / "data/imagenet-classes.txt"`` (the same format).

When neither exists, :func:`ilsvrc_classes` returns None and the importers name the
classes by their index, with one warning line. :func:`readable_names` turns any class
list made of ILSVRC wnids (Imagewoof, Imagenette, an ILSVRC folder tree) into readable
names when the list is available, and leaves other lists alone.

Floor: basics only (``errors``, ``locations``), so that every other floor may use it.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from .. import locations
from ..errors import UserError

ENV_CLASSES = "ALEXNET_IMAGENET_CLASSES"
NUM_CLASSES = 1000
_WNID = re.compile(r"n\d{8}")


def class_list_path() -> Path | None:
    """The class list :func:`ilsvrc_classes` reads, or None when there is none."""
    explicit = os.environ.get(ENV_CLASSES)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UserError(f"${ENV_CLASSES}={explicit}: no such file")
        return path
    shared = locations.shared_dir() / "data" / "imagenet-classes.txt"
    return shared if shared.is_file() else None


@functools.lru_cache(maxsize=4)
def _read_class_list(path: Path, mtime_ns: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    wnids, names = [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the ILSVRC class list ({exc})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=2)
        if len(parts) != 3 or not parts[0].isdigit() or not _WNID.fullmatch(parts[1]):
            raise UserError(f"{path}:{number}: expected 'index wnid name', got {line[:60]!r}")
        if int(parts[0]) != len(wnids):
            raise UserError(f"{path}:{number}: index {parts[0]} out of order (expected {len(wnids)})")
        wnids.append(parts[1])
        names.append(parts[2].strip().replace("_", " "))
    if len(wnids) != NUM_CLASSES:
        raise UserError(f"{path}: {len(wnids)} classes, the ILSVRC-2012 list has {NUM_CLASSES}")
    return tuple(wnids), tuple(names)


def ilsvrc_classes() -> tuple[list[str], list[str]] | None:
    """(wnids, readable names) of the 1000 classes in index order, or None when no list is found."""
    path = class_list_path()
    if path is None:
        return None
    wnids, names = _read_class_list(path, path.stat().st_mtime_ns)
    return list(wnids), list(names)


def missing_list_message() -> str:
    return (f"no ILSVRC-2012 class list (set ${ENV_CLASSES} to an 'index wnid name' file, or put "
            f"{locations.shared_dir() / 'data' / 'imagenet-classes.txt'} in place): classes are named by their index")


def is_wnid_list(classes) -> bool:
    return bool(classes) and all(isinstance(c, str) and _WNID.fullmatch(c) for c in classes)


def readable_names(classes: list[str] | None) -> list[str] | None:
    """Readable names for a class list made of ILSVRC wnids; any other list comes back unchanged.

    A wnid that the ILSVRC-2012 list does not hold keeps its wnid as its name.
    """
    if not is_wnid_list(classes):
        return classes
    found = ilsvrc_classes()
    if found is None:
        return list(classes)
    lookup = dict(zip(*found))
    return [lookup.get(c, c) for c in classes]
