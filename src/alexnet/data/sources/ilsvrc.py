"""ILSVRC-2012 as downloaded: the official files, read in place, labelled through the devkit.

* ``ILSVRC2012_img_train.tar``: a tar of 1,000 per-class tars ``<wnid>.tar``. Each inner tar
  is listed through a window on the outer file and every image is read at its offset in
  the outer file: no extraction, no temporary copy (:func:`.tar.class_tar_entries`).
* ``ILSVRC2012_img_val.tar``: 50,000 images, flat; their labels are in the devkit.
* ``ILSVRC2012_img_test*.tar``: 100,000 images, flat, unlabelled: an unlabelled ``test`` split
  (``alexnet eval`` writes its predictions).
* ``ILSVRC2012_devkit_t12.tar.gz``: ``data/meta.mat``, the ``synsets`` struct array (fields
  ILSVRC2012_ID, WNID, words, gloss, num_children, children, wordnet_height,
  num_train_images; the 1,000 *leaf* synsets, ``num_children == 0``, are the classes, with
  IDs 1..1000 that are **not** in sorted-wnid order, and 860 ancestors above 1000), and
  ``data/ILSVRC2012_validation_ground_truth.txt``: one ILSVRC2012_ID per val image, in
  the sorted order of the file names.

The class index is the standard one, the position in the sorted leaf wnids; a val label
goes ID -> wnid (meta.mat) -> index. The class names are meta.mat's ``words``. Where the
devkit and the images disagree (a class missing, an unknown ID, a count that differs), the
listing stops with one line naming the file and the disagreement. Each file also works
alone: the train tar gives the train split (names from the package's ILSVRC list), the val
tar with the devkit gives the val split.

``meta.mat`` is a MATLAB 5 file; it is read with ``scipy.io.loadmat``, as torchvision does.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass

import numpy as np
import scipy.io

from ...errors import UserError
from ..classnames import readable_names
from ..decode import IMAGE_EXTENSIONS
from .base import UNLABELLED, Item, Source, is_stray, member_name
from .tar import class_tar_entries, is_tar_of_tars, tar_entries

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
TEST_TAR_PREFIX = "ILSVRC2012_img_test"      # ILSVRC2012_img_test.tar, ILSVRC2012_img_test_v10102019.tar
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
META = "data/meta.mat"
GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
SYNSET_FIELDS = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
                 "num_train_images")
DEVKIT_BYTES = 64 << 20     # the real devkit is 2.5 MB; a larger "devkit" is not one


@dataclass
class Devkit:
    """What the devkit says: the leaf synsets (the classes) and the val ground truth."""
    path: str
    wnid_of_id: dict         # leaf ILSVRC2012_ID -> wnid
    words: dict              # wnid -> words ("kit fox, Vulpes macrotis")
    train_counts: dict       # wnid -> num_train_images
    val_ids: list            # the ground truth: one ILSVRC2012_ID per val image, in sorted file order

    @property
    def classes(self) -> list[str]:
        """The standard class order: sorted leaf wnids."""
        return sorted(self.wnid_of_id.values())

    def class_list(self) -> tuple[list[str], list[str]]:
        return self.classes, [self.words[w] for w in self.classes]

    def ids_of_classes(self) -> list[int]:
        """The devkit's ILSVRC2012_ID of each class, in the standard order (for submissions)."""
        id_of = {w: i for i, w in self.wnid_of_id.items()}
        return [id_of[w] for w in self.classes]

    def val_wnids(self) -> list[str]:
        """The val labels as wnids; an ID that is not a leaf synset is one line naming its line."""
        out = []
        for line, i in enumerate(self.val_ids, 1):
            if i not in self.wnid_of_id:
                lo, hi = min(self.wnid_of_id), max(self.wnid_of_id)
                raise UserError(f"{self.path}:{GROUND_TRUTH}:{line}: ILSVRC2012_ID {i} is not a leaf synset of "
                                f"{META} (its {len(self.wnid_of_id):,} classes have IDs {lo}..{hi})")
            out.append(self.wnid_of_id[i])
        return out


def is_devkit(path) -> bool:
    return bool(path) and os.path.isfile(path) and os.path.basename(path).lower().endswith((".tar.gz", ".tgz"))


def read_devkit(path: str) -> Devkit:
    """Parse the devkit archive (read whole: it is small). Every problem is one line naming the file."""
    if os.path.getsize(path) > DEVKIT_BYTES:
        raise UserError(f"{path}: {os.path.getsize(path):,} bytes, too large for the ILSVRC-2012 devkit")
    found = {}
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                name = member_name(m.name)
                for wanted in (META, GROUND_TRUTH):
                    if m.isfile() and (name == wanted or name.endswith("/" + wanted)):
                        found[wanted] = tf.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"{path}: not a readable devkit archive ({exc})") from None
    for wanted in (META, GROUND_TRUTH):
        if wanted not in found:
            raise UserError(f"{path}: no {wanted} in the archive (is it {DEVKIT}?)")
    wnid_of_id, words, counts = _parse_meta(path, found[META])
    val_ids = []
    for line, text in enumerate(found[GROUND_TRUTH].decode("utf-8", "replace").splitlines(), 1):
        if not text.strip():
            continue
        if not text.strip().isdigit():
            raise UserError(f"{path}:{GROUND_TRUTH}:{line}: expected an ILSVRC2012_ID, got {text.strip()[:40]!r}")
        val_ids.append(int(text))
    return Devkit(path, wnid_of_id, words, counts, val_ids)


def _parse_meta(path: str, data: bytes) -> tuple[dict, dict, dict]:
    where = f"{path}:{META}"
    try:
        mat = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True)
    except Exception as exc:  # noqa: BLE001 - scipy raises many kinds for a damaged file
        raise UserError(f"{where}: not a readable MATLAB file ({type(exc).__name__}: {exc})") from None
    synsets = mat.get("synsets")
    if synsets is None or getattr(synsets.dtype, "names", None) is None:
        raise UserError(f"{where}: no 'synsets' struct array")
    missing = [f for f in ("ILSVRC2012_ID", "WNID", "words", "num_children") if f not in synsets.dtype.names]
    if missing:
        raise UserError(f"{where}: the synsets lack the field(s) {', '.join(missing)}")
    wnid_of_id, words, counts = {}, {}, {}
    for row in np.atleast_1d(synsets):
        if int(row["num_children"]) != 0:
            continue    # an ancestor ("high level synset"): never a label
        sid, wnid = int(row["ILSVRC2012_ID"]), str(row["WNID"])
        if sid in wnid_of_id:
            raise UserError(f"{where}: ILSVRC2012_ID {sid} is given to two synsets ({wnid_of_id[sid]}, {wnid})")
        if wnid in words:
            raise UserError(f"{where}: {wnid} is listed twice")
        wnid_of_id[sid], words[wnid] = wnid, str(row["words"])
        if "num_train_images" in synsets.dtype.names:
            counts[wnid] = int(row["num_train_images"])
    if not wnid_of_id:
        raise UserError(f"{where}: no leaf synsets (num_children == 0)")
    return wnid_of_id, words, counts


# --------------------------------------------------------------------------------------
# which official files a path holds

def official_files(path: str, devkit: Devkit | None) -> dict:
    """{role: path} for the official files at ``path`` (train, val, test, devkit), or {} when it
    holds none. A folder: the files by their official names. A file: its role by name, or a
    tar of per-class tars as train. ``devkit``: one given with --labels."""
    found = {}
    if os.path.isdir(path):
        for fn in sorted(os.listdir(path)):
            role = _role(fn)
            if role and os.path.isfile(os.path.join(path, fn)):
                if role in found:
                    raise UserError(f"{path}: two ILSVRC-2012 {role} files ({os.path.basename(found[role])}, {fn}); "
                                    f"keep one")
                found[role] = os.path.join(path, fn)
    elif os.path.isfile(path):
        role = _role(os.path.basename(path))
        if role is None and path.lower().endswith(".tar") and _first_file_is_a_tar(path):
            role = "train"
        if role:
            found[role] = path
    if found and devkit is not None:
        found["devkit"] = devkit
    return found


def _role(filename: str) -> str | None:
    if filename == TRAIN_TAR:
        return "train"
    if filename == VAL_TAR:
        return "val"
    if filename.startswith(TEST_TAR_PREFIX) and filename.endswith(".tar"):
        return "test"
    if filename == DEVKIT:
        return "devkit"
    return None


def _first_file_is_a_tar(path: str) -> bool:
    """Whether a .tar looks like a tar of tars, from its first file (the full check comes when listed)."""
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if m.isfile() and not is_stray(member_name(m.name)):
                    return m.name.lower().endswith(".tar")
    except (tarfile.TarError, OSError, EOFError):
        return False    # reported when the archive is listed
    return False


# --------------------------------------------------------------------------------------
# the listing

def open_ilsvrc(location: str, files: dict, class_list, quiet: bool = True) -> Source:
    """The splits of the official files ``files`` ({role: path}; "devkit" may be a parsed Devkit)."""
    folder = os.path.isdir(location)
    devkit = files.get("devkit")
    if isinstance(devkit, str):
        devkit = read_devkit(devkit)
    if not any(role in files for role in ("train", "val", "test")):
        raise UserError(f"{location}: the devkit alone holds no images; put {TRAIN_TAR} and/or {VAL_TAR} beside it")
    if "val" in files and devkit is None:
        raise UserError(f"{files['val']}: the val images carry no labels; put {DEVKIT} beside it "
                        f"(or give it with --labels)")

    def name_in(path: str) -> str:
        """How the source names a file's members: ``FILE:member`` in a folder, ``member`` alone."""
        return f"{os.path.basename(path)}:" if folder else ""

    ignored: list = []
    splits: dict = {}
    empty: list = []
    train_classes = None
    if "train" in files:
        per_class, empty = _train_members(files["train"], name_in(files["train"]), ignored, quiet)
        train_classes = sorted(per_class)
    if class_list is not None:
        classes, names = class_list
    elif devkit is not None:
        classes, names = devkit.class_list()
    else:
        classes, names = train_classes, readable_names(train_classes)
    if devkit is not None and train_classes is not None:
        _check_train_against_devkit(files["train"], devkit, per_class, empty)
    index = {c: i for i, c in enumerate(classes)}
    if "train" in files:
        unknown = [c for c in train_classes if c not in index]
        if unknown:
            raise UserError(f"{files['train']}:{unknown[0]}.tar: class not in the class list"
                            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
        splits["train"] = [Item(name, index[c], ref) for c in train_classes for name, ref in per_class[c]]
    if "val" in files:
        images = _flat_members(files["val"], name_in(files["val"]), ignored)
        wnids = devkit.val_wnids()
        if len(wnids) != len(images):
            raise UserError(f"{devkit.path}:{GROUND_TRUTH}: {len(wnids):,} labels for {len(images):,} images in "
                            f"{files['val']}")
        missing = [w for w in wnids if w not in index]
        if missing:
            raise UserError(f"{devkit.path}: val class {missing[0]} is not in the class list")
        splits["val"] = [Item(name, index[w], ref) for (name, ref), w in zip(images, wnids, strict=True)]
    if "test" in files:
        splits["test"] = [Item(name, UNLABELLED, ref)
                          for name, ref in _flat_members(files["test"], name_in(files["test"]), ignored)]
    extra = {"ilsvrc2012_ids": devkit.ids_of_classes()} if devkit is not None and class_list is None else {}
    return Source("ilsvrc", location, list(classes), splits, ignored, None, list(names), empty_folders=empty,
                  unlabelled=frozenset({"test"} & set(splits)), extra=extra)


def _train_members(path: str, prefix: str, ignored: list, quiet: bool) -> tuple[dict, list]:
    """{class: [(name, ref)]} of a tar of per-class tars, in name order; and the class tars with no image."""
    try:
        with tarfile.open(path, "r:") as tf:
            members = tf.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"{path}: not a readable tar archive ({exc})") from None
    if not is_tar_of_tars(members):
        raise UserError(f"{path}: not a tar of per-class tars (<wnid>.tar), as {TRAIN_TAR} is")
    entries, folders = class_tar_entries(path, members, quiet)
    per_class = {folder: [] for folder in folders}
    for rel, ref in sorted(entries):
        reason = is_stray(rel) or (None if os.path.splitext(rel)[1].lower() in IMAGE_EXTENSIONS
                                   else "not an image file (extension)")
        cls, _, inner = rel.partition("/")
        if reason:
            ignored.append((f"{prefix}{cls}.tar/{inner}" if inner else prefix + rel, reason))
        else:
            per_class[cls].append((f"{prefix}{cls}.tar/{inner}", ref))
    empty = [f"{prefix}{cls}.tar" for cls, items in per_class.items() if not items]
    return {c: items for c, items in per_class.items() if items}, empty


def _flat_members(path: str, prefix: str, ignored: list) -> list[tuple[str, tuple]]:
    """(name, ref) of the images of a flat tar (val, test), sorted by file name (the ground truth's order)."""
    try:
        with tarfile.open(path, "r:") as tf:
            members = tf.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"{path}: not a readable tar archive ({exc})") from None
    entries, _ = tar_entries(path, members)
    images = []
    for rel, ref in entries:
        reason = is_stray(rel) or (None if os.path.splitext(rel)[1].lower() in IMAGE_EXTENSIONS
                                   else "not an image file (extension)")
        if reason:
            ignored.append((prefix + rel, reason))
        else:
            images.append((rel, ref))
    images.sort(key=lambda e: os.path.basename(e[0]))
    if not images:
        raise UserError(f"{path}: no image files found")
    return [(prefix + rel, ref) for rel, ref in images]


def _check_train_against_devkit(path: str, devkit: Devkit, per_class: dict, empty: list) -> None:
    """The train tar holds exactly the devkit's classes, each with the devkit's image count."""
    expected = devkit.classes
    missing = [w for w in expected if w not in per_class and not any(e.endswith(f"{w}.tar") for e in empty)]
    if missing:
        raise UserError(f"{path}: no {missing[0]}.tar for class {missing[0]} ({devkit.words[missing[0]]}) of "
                        f"{devkit.path}" + (f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else "")
                        + "; the download is incomplete")
    extra = [w for w in per_class if w not in devkit.words]
    if extra:
        raise UserError(f"{path}:{extra[0]}.tar: class {extra[0]} is not a leaf synset of {devkit.path}"
                        + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    for wnid, items in per_class.items():
        want = devkit.train_counts.get(wnid)
        if want is not None and want != len(items):
            raise UserError(f"{path}:{wnid}.tar: {len(items):,} images, {devkit.path} says {want:,} "
                            f"(num_train_images of {wnid})")

