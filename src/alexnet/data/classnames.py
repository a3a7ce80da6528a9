"""The 1000 ILSVRC-2012 classes (Russakovsky et al., IJCV 2015): WordNet ids in the
standard index order, and their readable names.

The list ships with the package (``alexnet/data/ilsvrc2012_classes.txt``, one ``index wnid
name`` per line, names with underscores for spaces, e.g. ``207 n02099601 golden_retriever``),
so every install names the classes of imported torchvision or Caffe weights. A list of
your own may replace it: ``$ALEXNET_IMAGENET_CLASSES`` names a file in the same format.
:func:`readable_names` turns any class list made of ILSVRC wnids (Imagewoof, Imagenette,
an ILSVRC folder tree) into readable names, and leaves other lists alone.

Floor: basics only (``errors``, ``locations``), so that every other floor may use it.
"""

from __future__ import annotations

import functools
import os
import re
from importlib import resources
from pathlib import Path

from ..errors import UserError

ENV_CLASSES = "ALEXNET_IMAGENET_CLASSES"
NUM_CLASSES = 1000
PACKAGE_LIST = "ilsvrc2012_classes.txt"   # package data beside this module
_WNID = re.compile(r"n\d{8}")


def class_list_path() -> Path:
    """The class list :func:`ilsvrc_classes` reads: ``$ALEXNET_IMAGENET_CLASSES``, else the package's own."""
    explicit = os.environ.get(ENV_CLASSES)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UserError(f"${ENV_CLASSES}={explicit}: no such file")
        return path
    return Path(str(resources.files("alexnet") / "data" / PACKAGE_LIST))


@functools.lru_cache(maxsize=4)
def _read_class_list(path: Path, mtime_ns: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    wnids, names = [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the ILSVRC class list ({exc})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
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


def ilsvrc_classes() -> tuple[list[str], list[str]]:
    """(wnids, readable names) of the 1000 classes in index order."""
    path = class_list_path()
    wnids, names = _read_class_list(path, path.stat().st_mtime_ns)
    return list(wnids), list(names)


def is_wnid_list(classes) -> bool:
    return bool(classes) and all(isinstance(c, str) and _WNID.fullmatch(c) for c in classes)


def readable_names(classes: list[str] | None) -> list[str] | None:
    """Readable names for a class list made of ILSVRC wnids; any other list comes back unchanged.

    A wnid that the ILSVRC-2012 list does not hold keeps its wnid as its name.
    """
    if not is_wnid_list(classes):
        return classes
    lookup = dict(zip(*ilsvrc_classes(), strict=True))
    return [lookup.get(c, c) for c in classes]
