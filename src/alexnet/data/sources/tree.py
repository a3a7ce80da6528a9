"""Image folder trees ``ROOT/<class>/<image>``, optionally under split folders, wherever the
files live (a directory, a tar read in place, a compressed tar streamed): the listing is a
list of ``(relative path, ref)`` entries, and this module turns it into splits and labels.

The steps, one function each: sort the entries into images, side files and ignored files
(:func:`_sort_entries`); descend through a single wrapping folder (:func:`_wrapping_prefix`);
assign images to splits (:func:`_assign_splits`); find class folders that hold no image
(:func:`_empty_class_folders`); choose the class list (:func:`_choose_classes`); label each
split, by its class folders or, for a flat split (ILSVRC val), from a label file
(:func:`_flat_labels`). A flat ``test`` split without labels (the ILSVRC test set) is kept
unlabelled.
"""

from __future__ import annotations

import os
import re

from ...errors import UserError
from ..decode import IMAGE_EXTENSIONS
from .base import SPLIT_ALIASES, UNLABELLED, Item, Source, is_stray

LABEL_FILE_PATTERN = re.compile(r"(ground[_-]?truth|labels?|solution)[^/]*\.(txt|csv)$", re.IGNORECASE)
KAGGLE_SYNSETS = "LOC_synset_mapping.txt"   # Kaggle's ILSVRC class list: "wnid name, name, ..." per line
DEVKIT_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth"
VAL_NAMES = ("val", "valid", "validation")


def is_side_file(name: str) -> bool:
    """A small file the tree reads while listing (a label list, Kaggle's class list)."""
    return bool(LABEL_FILE_PATTERN.search(name)) or os.path.basename(name) == KAGGLE_SYNSETS


def build_tree(kind: str, location: str, entries: list, labels, class_list, read, folders: list = ()) -> Source:
    """Splits and labels of a folder tree. ``entries``: (relative path, ref) of every file;
    ``read(rel)``: the bytes of a side file; ``folders``: every folder's relative path (an
    archive lists only those it has members for); ``labels``: --labels (a path, or a list of
    label tokens already read, e.g. from a devkit); ``class_list``: (ids, names) or None."""
    ignored: list = []
    images, label_files, synsets, not_images = _sort_entries(location, entries, ignored)
    prefix = _wrapping_prefix(images)
    per_split, split_dirs = _assign_splits(images, prefix, ignored)
    ignored += [(rel, "not an image file (extension)") for rel in not_images]
    if class_list is None and len(synsets) == 1:
        class_list = _kaggle_class_list(location, synsets[0], read)
    flat_splits = {split for split, items in per_split.items() if any("/" not in rest for _, rest, _ in items)}
    empty_folders = _empty_class_folders(entries, folders, per_split, split_dirs, prefix, flat_splits)
    classes, class_names = _choose_classes(location, per_split, class_list)

    splits: dict[str, list[Item]] = {}
    unlabelled = set()
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
    for split in [s for s in per_split if s in flat_splits]:   # listing order: the first may fix the classes
        flat = sorted(per_split[split], key=lambda t: t[1])
        tokens = _flat_labels(location, split, flat, labels, label_files, read)
        if tokens is None:      # a flat test split without labels: kept, unlabelled
            splits[split] = [Item(rel, UNLABELLED, ref) for rel, _, ref in flat]
            unlabelled.add(split)
            continue
        if class_list is None and not classes:
            if all(not _is_int(t) for t in tokens):
                classes = sorted(set(tokens))
            else:
                classes = [str(i) for i in range(max(int(t) for t in tokens) + 1)]
        splits[split] = [Item(rel, _label_index(tok, classes, location, rel), ref)
                         for (rel, _, ref), tok in zip(flat, tokens, strict=True)]
    return Source(kind, location, classes, splits, ignored, None, class_names, empty_folders=empty_folders,
                  unlabelled=frozenset(unlabelled))


def _sort_entries(location: str, entries: list, ignored: list) -> tuple[list, list, list, list]:
    """(images, label files, Kaggle class lists, other files) among the entries; stray files go
    to ``ignored``."""
    images, label_files, synsets, others = [], [], [], []
    for rel, ref in entries:
        reason = is_stray(rel)
        if reason:
            ignored.append((rel, reason))
        elif os.path.splitext(rel)[1].lower() in IMAGE_EXTENSIONS:
            images.append((rel, ref))
        elif LABEL_FILE_PATTERN.search(rel):
            label_files.append((rel, ref))
        elif os.path.basename(rel) == KAGGLE_SYNSETS:
            synsets.append(rel)
        else:
            others.append(rel)
    if not images:
        raise UserError(f"{location}: no image files found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return images, label_files, synsets, others


def _wrapping_prefix(images: list) -> str:
    """The folders every image sits in (e.g. ``imagewoof2-160/``), down to the split or class
    folders, keeping one directory level below."""
    prefix = ""
    while True:
        firsts = {rel[len(prefix):].split("/", 1)[0] for rel, _ in images}
        if len(firsts) != 1:
            return prefix
        (first,) = firsts
        if first.lower() in SPLIT_ALIASES or not all(rel[len(prefix):].count("/") >= 2 for rel, _ in images):
            return prefix
        prefix += first + "/"


def _assign_splits(images: list, prefix: str, ignored: list) -> tuple[dict, dict]:
    """split -> [(rel, path below the split, ref)], and the split folders found ({folder: split})."""
    tops = {rel[len(prefix):].split("/", 1)[0] for rel, _ in images if "/" in rel[len(prefix):]}
    split_dirs = {t: SPLIT_ALIASES[t.lower()] for t in tops if t.lower() in SPLIT_ALIASES}
    per_split: dict[str, list] = {}
    for rel, ref in images:
        if not rel.startswith(prefix):
            ignored.append((rel, "outside the dataset folder"))
            continue
        below = rel[len(prefix):]
        if split_dirs:
            top, _, rest = below.partition("/")
            if top not in split_dirs:
                ignored.append((rel, f"image outside the split folders ({', '.join(sorted(split_dirs))})"))
                continue
            per_split.setdefault(split_dirs[top], []).append((rel, rest, ref))
        else:
            per_split.setdefault("train", []).append((rel, below, ref))
    return per_split, split_dirs


def _empty_class_folders(entries: list, folders, per_split: dict, split_dirs: dict, prefix: str,
                         flat_splits: set) -> list[str]:
    """Class folders without an image (empty, or only stray / non-image files): they would vanish
    with their class, so they are found among every folder and every file's folder."""
    def class_folder(rel_dir: str) -> tuple[str, str, str] | None:
        """(split, class, folder relpath) of the class folder holding ``rel_dir``, if any."""
        if not rel_dir.startswith(prefix) or is_stray(rel_dir):
            return None
        parts = rel_dir[len(prefix):].split("/")
        if split_dirs:
            if parts[0] not in split_dirs or len(parts) < 2:
                return None
            return split_dirs[parts[0]], parts[1], prefix + "/".join(parts[:2])
        return "train", parts[0], prefix + parts[0]

    has_images = {(split, rest.split("/", 1)[0]) for split, items in per_split.items() for _, rest, _ in items
                  if "/" in rest}
    candidates = {class_folder(f) for f in folders} | {class_folder(rel.rsplit("/", 1)[0])
                                                       for rel, _ in entries if "/" in rel}
    return sorted(c[2] for c in candidates if c and c[0] not in flat_splits and (c[0], c[1]) not in has_images)


def _choose_classes(location: str, per_split: dict, class_list) -> tuple[list[str], list[str] | None]:
    """Sorted class-folder names across splits, unless a class list is given (then every folder must be in it)."""
    folder_classes = sorted({rest.split("/", 1)[0] for items in per_split.values()
                             for _, rest, _ in items if "/" in rest})
    if class_list is None:
        return folder_classes, None
    classes, class_names = class_list
    known = set(classes)
    unknown = [c for c in folder_classes if c not in known]
    if unknown:
        raise UserError(f"{location}: class folder(s) not in the class list: {', '.join(unknown[:5])}"
                        + (" ..." if len(unknown) > 5 else ""))
    return list(classes), class_names


def _kaggle_class_list(location: str, rel: str, read) -> tuple[list[str], list[str]]:
    """Kaggle's LOC_synset_mapping.txt: ``wnid name, other name`` per line, in the standard index order."""
    ids, names = [], []
    for number, line in enumerate(read(rel).decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        wnid, _, words = line.strip().partition(" ")
        if wnid in ids:
            raise UserError(f"{location}:{rel}:{number}: class {wnid} listed twice")
        ids.append(wnid)
        names.append(words.strip() or wnid)
    return ids, names


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


def _label_file_for(split: str, label_files: list) -> list:
    """The label files that may label ``split``: those whose name says the split, else those whose
    name says no split (Kaggle ships LOC_train_solution.csv beside LOC_val_solution.csv)."""
    def says(rel: str, split_name: str) -> bool:
        words = re.split(r"[^a-z]+", os.path.basename(rel).lower())
        return any(w in words for w, s in SPLIT_ALIASES.items() if s == split_name)

    own = [(rel, ref) for rel, ref in label_files if says(rel, split)]
    if own:
        return own
    return [(rel, ref) for rel, ref in label_files if not any(says(rel, s) for s in set(SPLIT_ALIASES.values()))]


def _flat_labels(location: str, split: str, flat: list, labels, label_files: list, read) -> list[str] | None:
    """Labels of a flat split (ILSVRC val), one token per image in sorted file order: from --labels
    (a file, or tokens already read from a devkit) or a ground-truth file in the source. None for
    a flat test split that has none (the ILSVRC test set)."""
    if isinstance(labels, list):
        text, origin = "\n".join(labels), location
    elif labels:
        _refuse_devkit_ids(labels)
        try:
            text = open(labels, encoding="utf-8").read()
        except OSError as exc:
            raise UserError(f"{labels}: cannot read labels ({exc.strerror})") from None
        origin = labels
    else:
        candidates = _label_file_for(split, label_files)
        if not candidates and split == "test":
            return None
        if len(candidates) != 1:
            found = ", ".join(rel for rel, _ in label_files) or "none found"
            raise UserError(f"{location}: split '{split}' is a flat folder of images without class folders; "
                            f"give its labels with --labels FILE (one wnid or class index per line, in sorted "
                            f"file order) [label files in the source: {found}]")
        rel, _ = candidates[0]
        origin = f"{location}:{rel}"
        _refuse_devkit_ids(origin)
        text = read(rel).decode("utf-8")
    return _parse_flat_labels(origin, split, flat, text)


def _refuse_devkit_ids(origin: str) -> None:
    """The devkit's ground truth holds its own 1-based ILSVRC2012_IDs, not class indices: read as
    indices it would shift and scramble every label without an error."""
    if os.path.basename(origin).startswith(DEVKIT_GROUND_TRUTH):
        raise UserError(f"{origin}: holds the devkit's 1-based ILSVRC2012_IDs (meta.mat order, not class "
                        f"indices); give the devkit archive itself (--labels ILSVRC2012_devkit_t12.tar.gz), "
                        f"which maps them through meta.mat")


def _parse_flat_labels(origin: str, split: str, flat: list, text: str) -> list[str]:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    stems = [os.path.splitext(rest)[0] for _, rest, _ in flat]
    if lines and lines[0].replace(" ", "").lower().startswith("imageid,predictionstring"):   # Kaggle's CSV
        mapping = {}
        for ln in lines[1:]:
            name, _, pred = ln.partition(",")
            mapping[name.strip()] = pred.split()[0] if pred.split() else ""
        return _by_stem(origin, stems, mapping)
    if all(len(ln.split()) == 1 for ln in lines):
        if len(lines) != len(flat):
            raise UserError(f"{origin}: {len(lines):,} labels for {len(flat):,} images in split '{split}' "
                            f"(one label per line, in sorted file order)")
        return lines
    mapping = {}
    for ln in lines:
        parts = ln.replace(",", " ").split()
        mapping[os.path.splitext(os.path.basename(parts[0]))[0]] = parts[1]
    return _by_stem(origin, stems, mapping)


def _by_stem(origin: str, stems: list[str], mapping: dict) -> list[str]:
    missing = [s for s in stems if s not in mapping]
    if missing:
        raise UserError(f"{origin}: no label for {missing[0]} ({len(missing)} images without labels)")
    return [mapping[s] for s in stems]


def list_directory(path: str) -> tuple[list, list]:
    """(entries, folders) of a directory tree: every file as (relative path, ("file", path)),
    every folder's relative path. Symbolic links to folders are followed, except one that
    leads back to a folder above it (a loop, refused with one line)."""
    entries, folders = [], []
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
    return entries, folders
