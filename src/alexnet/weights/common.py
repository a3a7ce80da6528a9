"""What every importer shares: the provenance of the source file, the class list of the
imported model, and the one-line refusal of a file that is not there."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import UserError
from ..data.classnames import NUM_CLASSES, ilsvrc_classes, readable_names


def existing_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a {what}")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_record(path: Path, fmt: str, **extra) -> dict:
    """``meta["source"]`` of an imported checkpoint: which file, its SHA-256, its format."""
    return {"format": fmt, "file": str(path.resolve()), "sha256": sha256_of(path),
            "bytes": path.stat().st_size, **extra}


def parse_classes_option(text: str | None) -> list[str] | None:
    """``--classes``: a file with one class per line, or a comma-separated list."""
    if text is None:
        return None
    path = Path(text)
    if path.is_file():
        try:
            classes = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--classes {text}: cannot read ({exc})") from None
    else:
        classes = [c.strip() for c in text.split(",") if c.strip()]
    if not classes:
        raise UserError(f"--classes {text!r}: no class names")
    if len(set(classes)) != len(classes):
        raise UserError(f"--classes {text!r}: a class is named twice")
    return classes


def resolve_classes(num_classes: int, given: list[str] | None) -> tuple[list[str], list[str]]:
    """(class ids, readable names) for a model with ``num_classes`` outputs.

    Given classes must match the count; 1000 outputs without given classes are the
    ILSVRC-2012 classes (the list ships with the package); any other count without given
    classes is named by index.
    """
    if given is not None:
        if len(given) != num_classes:
            raise UserError(f"--classes names {len(given)} classes, the weights have {num_classes} outputs")
        return list(given), readable_names(list(given))
    if num_classes == NUM_CLASSES:
        return ilsvrc_classes()
    index = [str(i) for i in range(num_classes)]
    return index, list(index)
