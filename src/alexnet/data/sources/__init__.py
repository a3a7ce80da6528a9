"""Reading datasets as they are distributed: what images exist, their labels and splits.

A *source* is listed once, without decoding anything (:func:`open_source`):

* image folder trees ``ROOT/<class>/<image>``, optionally under split folders
  (``train/``, ``val/``, ``test/``), as a directory or inside a ``.tar`` (read in place,
  every worker reading its own members by offset) or a compressed tar (``.tar.gz``,
  ``.tgz``, ``.tar.bz2``, ``.tar.xz``: streamed, never held in memory whole - once to
  list it, once more to read the images, in archive order) - :mod:`.tree`, :mod:`.tar`;
* a *flat* split (ILSVRC val) whose labels come from a ground-truth list (one wnid or class
  index per line, in sorted file order; or ``name label`` lines; or Kaggle's
  ``LOC_val_solution.csv``, with Kaggle's ``LOC_synset_mapping.txt`` as the class list);
  a flat ``test`` split without labels is kept, unlabelled;
* ILSVRC-2012 as downloaded: ``ILSVRC2012_img_train.tar`` (a tar of per-class tars, read
  in place two levels deep), ``ILSVRC2012_img_val.tar``, ``ILSVRC2012_img_test*.tar`` and
  ``ILSVRC2012_devkit_t12.tar.gz`` (labels and names through its ``meta.mat``), in a folder
  or one file at a time - :mod:`.ilsvrc`;
* CIFAR-10/100 in the official python format (pickled batches, loaded with a restricted
  unpickler that can only rebuild numpy arrays and plain containers: no pickled code runs)
  and in the official binary format - :mod:`.cifar`;
* MNIST / Fashion-MNIST IDX files (``.gz`` or not), e.g. ``/usr/share/datasets/fashion-mnist``
  (the shorthand ``fashion-mnist`` names that Debian location) - :mod:`.idx`.

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

import os

from ...errors import UserError
from .base import (GRAY_MODES, SPLIT_ORDER, UNLABELLED, ArraySplit, Item, Source, is_stray, limit_per_class,
                   member_name, read_class_list, read_payload)
from .cifar import cifar_in_directory, load_pickle_safely
from .idx import FASHION_MNIST_DIR, idx_in_directory, read_idx
from .ilsvrc import is_devkit, official_files, open_ilsvrc, read_devkit
from .tar import is_tar, open_tar
from .tree import build_tree, list_directory

SHORTHANDS = {"fashion-mnist": FASHION_MNIST_DIR}
ARRAY_PROBE_FILES = 10000   # a folder is searched this far for CIFAR batches or IDX files

__all__ = ["open_source", "Source", "Item", "ArraySplit", "read_payload", "member_name", "is_stray",
           "SHORTHANDS", "GRAY_MODES", "UNLABELLED", "FASHION_MNIST_DIR", "load_pickle_safely", "read_idx"]


def open_source(spec: str, *, labels: str | None = None, classes: str | None = None,
                limit: int | None = None, quiet: bool = True) -> Source:
    """List the dataset at ``spec`` (a path or a shorthand). Nothing is decoded."""
    path = SHORTHANDS.get(spec, spec)
    if not os.path.exists(path):
        hint = f" (shorthands: {', '.join(SHORTHANDS)})" if os.sep not in spec else ""
        raise UserError(f"{spec}: no such file or directory{hint}")
    class_list = read_class_list(classes) if classes else None
    devkit = read_devkit(labels) if is_devkit(labels) else None   # --labels ILSVRC2012_devkit_t12.tar.gz
    official = official_files(path, devkit)
    if official:
        source = open_ilsvrc(path, official, class_list, quiet=quiet)
    else:
        if devkit is not None:     # a folder of val images, say, labelled through the devkit
            labels, class_list = devkit.val_wnids(), class_list or devkit.class_list()
        source = _open_other(path, labels, class_list)
    if limit is not None:
        if limit < 1:
            raise UserError(f"--limit {limit}: must be at least 1")
        source.splits = {name: limit_per_class(content, limit) for name, content in source.splits.items()}
    source.splits = dict(sorted(source.splits.items(), key=lambda kv: (SPLIT_ORDER.get(kv[0], 3), kv[0])))
    for name, content in source.splits.items():
        if len(content) == 0:
            raise UserError(f"{path}: split '{name}' has no images")
    if not source.splits:
        raise UserError(f"{path}: no images found")
    return source


def _open_other(path: str, labels, class_list) -> Source:
    """Everything but the official ILSVRC files: a folder (CIFAR, IDX or a tree) or an archive."""
    if os.path.isdir(path):
        source = _arrays_in_directory(path)
        if source is not None:
            return source
        entries, folders = list_directory(path)
        return build_tree("folder", path, entries, labels, class_list, read=_local_reader(path), folders=folders)
    if is_tar(path):
        return open_tar(path, labels, class_list)
    raise UserError(f"{path}: not a folder or a .tar/.tar.gz archive")


def _arrays_in_directory(path: str) -> Source | None:
    """A CIFAR distribution or IDX files in the folder, or None."""
    names = set()
    for dirpath, _, filenames in os.walk(path):
        for fn in filenames:
            names.add(os.path.relpath(os.path.join(dirpath, fn), path).replace(os.sep, "/"))
        if len(names) > ARRAY_PROBE_FILES:
            break
    return cifar_in_directory(path, names) or idx_in_directory(path, names)


def _local_reader(root: str):
    def read(rel: str) -> bytes:
        with open(os.path.join(root, rel), "rb") as f:
            return f.read()
    return read
