"""A miniature of ILSVRC-2012 as downloaded, built from the 500 original ILSVRC-2012 JPEGs of
``../shared/data/imagenet-sample-500.tar``, with the truth it was built from.

The four official files, in their official layout:

* ``ILSVRC2012_img_train.tar``: a tar of per-class tars ``<wnid>.tar`` (in shuffled order),
  each holding ``<wnid>_<n>.JPEG`` (n not fixed-width, not consecutive);
* ``ILSVRC2012_img_val.tar``: flat ``ILSVRC2012_val_<8 digits>.JPEG``, written in shuffled order;
* ``ILSVRC2012_img_test.tar``: flat ``ILSVRC2012_test_<8 digits>.JPEG``, unlabelled;
* ``ILSVRC2012_devkit_t12.tar.gz``: ``ILSVRC2012_devkit_t12/data/meta.mat`` written with
  ``scipy.io.savemat`` in the devkit's struct layout (a ``synsets`` N x 1 struct array with the
  fields ILSVRC2012_ID, WNID, words, gloss, num_children, children, wordnet_height,
  num_train_images; rows in ID order), whose leaf IDs 1..K are a permutation of the sorted-wnid
  order, followed by non-leaf synsets (K+1 the root "entity", whose children are two inner
  synsets that split the leaves between them); and ``data/ILSVRC2012_validation_ground_truth.txt``,
  one ILSVRC2012_ID per val image in the sorted order of the file names.

The images are real; which image stands for which class is the builder's choice (each class's
own sample image among them), and that choice is the truth the tests check every label against.

    python tests/ilsvrc_miniature.py ../shared/data/imagenet-sample-500.tar OUT_DIR
"""

from __future__ import annotations

import io
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io

SYNSET_FIELDS = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
                 "num_train_images")


@dataclass
class Miniature:
    folder: Path
    classes: list          # sorted wnids: the standard index order
    names: list            # words of each class, in that order
    ids: dict              # wnid -> the devkit's ILSVRC2012_ID
    train: dict = field(default_factory=dict)   # "wnid.tar/member" -> (wnid, JPEG bytes)
    val: list = field(default_factory=list)     # (file name, wnid, JPEG bytes) in file-name order
    test: list = field(default_factory=list)    # (file name, JPEG bytes) in file-name order

    @property
    def files(self) -> dict:
        return {"train": self.folder / "ILSVRC2012_img_train.tar", "val": self.folder / "ILSVRC2012_img_val.tar",
                "test": self.folder / "ILSVRC2012_img_test.tar", "devkit": self.folder / "ILSVRC2012_devkit_t12.tar.gz"}


def sample_images(sample_tar: Path) -> list[tuple[str, bytes]]:
    """(name, bytes) of the 500 JPEGs, sorted by name (``<wnid>_<class_name>.JPEG``)."""
    with tarfile.open(sample_tar) as tf:
        out = [(Path(m.name).name, tf.extractfile(m).read()) for m in tf if m.isfile() and m.name.endswith(".JPEG")]
    return sorted(out)


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_340_000_000
    tf.addfile(info, io.BytesIO(data))


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            _add(tf, name, data)
    return buf.getvalue()


def synsets_struct(leaves: list[tuple[int, str, str, int]], inner: list[tuple[int, str, str, list]]) -> np.ndarray:
    """The devkit's ``synsets`` struct array: leaves (id, wnid, words, num_train_images) and
    inner synsets (id, wnid, words, children ids), rows in ID order, N x 1 as MATLAB stores it."""
    rows = []
    for sid, wnid, words, count in leaves:
        rows.append((float(sid), wnid, words, f"gloss of {words}", 0.0, np.zeros((1, 0)), 0.0, float(count)))
    for height, (sid, wnid, words, children) in enumerate(inner, 1):
        rows.append((float(sid), wnid, words, f"gloss of {words}", float(len(children)),
                     np.array(children, dtype=np.float64).reshape(1, -1), float(height), 0.0))
    rows.sort(key=lambda r: r[0])
    struct = np.empty((len(rows), 1), dtype=[(f, object) for f in SYNSET_FIELDS])
    for i, row in enumerate(rows):
        struct[i, 0] = row
    return struct


def meta_mat_bytes(struct: np.ndarray) -> bytes:
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"synsets": struct})
    return buf.getvalue()


def devkit_bytes(meta: bytes, ground_truth: str, extra: dict | None = None) -> bytes:
    """ILSVRC2012_devkit_t12.tar.gz with its folder layout (``extra``: more members, name -> bytes or None to drop)."""
    members = {"ILSVRC2012_devkit_t12/readme.txt": b"ILSVRC2012 development kit (miniature)\n",
               "ILSVRC2012_devkit_t12/data/meta.mat": meta,
               "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": ground_truth.encode()}
    for name, data in (extra or {}).items():
        if data is None:
            members.pop(name, None)
        else:
            members[name] = data
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            _add(tf, name, data)
    return buf.getvalue()


def build(sample_tar: Path, folder: Path, *, classes: int = 6, train_per_class: int = 3, val_per_class: int = 2,
          test_images: int = 4, seed: int = 0) -> Miniature:
    """Write the four files into ``folder``; return the truth they were built from."""
    rng = np.random.default_rng(seed)
    images = sample_images(sample_tar)
    picked = sorted(rng.choice(len(images), classes, replace=False).tolist())
    wnids = [images[i][0].split("_", 1)[0] for i in picked]
    words = {images[i][0].split("_", 1)[0]: Path(images[i][0]).stem.split("_", 1)[1].replace("_", " ") for i in picked}
    pool = [images[i] for i in rng.permutation(len(images)) if i not in picked]
    ids = list(range(1, classes + 1))
    while ids == list(range(1, classes + 1)):      # the devkit's IDs are not the sorted order
        ids = rng.permutation(np.arange(1, classes + 1)).tolist()
    mini = Miniature(folder, sorted(wnids), [words[w] for w in sorted(wnids)], dict(zip(sorted(wnids), ids, strict=True)))
    folder.mkdir(parents=True, exist_ok=True)

    class_tars = []
    for w, own in zip(wnids, picked, strict=True):
        chosen = [images[own]] + [pool.pop() for _ in range(train_per_class - 1)]
        numbers = sorted(rng.choice(20000, len(chosen), replace=False).tolist())
        members = [(f"{w}_{n}.JPEG", data) for n, (_, data) in zip(numbers, chosen, strict=True)]
        rng.shuffle(members)
        for name, data in members:
            mini.train[f"{w}.tar/{name}"] = (w, data)
        class_tars.append((f"{w}.tar", _tar_bytes(members)))
    rng.shuffle(class_tars)
    mini.files["train"].write_bytes(_tar_bytes(class_tars))

    val_labels = [w for w in wnids for _ in range(val_per_class)]
    rng.shuffle(val_labels)
    mini.val = [(f"ILSVRC2012_val_{i:08d}.JPEG", w, pool.pop()[1]) for i, w in enumerate(val_labels, 1)]
    written = [(name, data) for name, _, data in mini.val]
    rng.shuffle(written)
    mini.files["val"].write_bytes(_tar_bytes(written))
    mini.test = [(f"ILSVRC2012_test_{i:08d}.JPEG", pool.pop()[1]) for i in range(1, test_images + 1)]
    mini.files["test"].write_bytes(_tar_bytes(mini.test[::-1]))

    counts = {w: train_per_class for w in wnids}
    leaves = [(mini.ids[w], w, words[w], counts[w]) for w in wnids]
    half = sorted(mini.ids.values())
    inner = [(classes + 1, "n00001740", "entity", [classes + 2, classes + 3]),
             (classes + 2, "n00002684", "object, physical object", half[: classes // 2]),
             (classes + 3, "n00021939", "artifact, artefact", half[classes // 2:])]
    ground_truth = "".join(f"{mini.ids[w]}\n" for _, w, _ in mini.val)
    mini.files["devkit"].write_bytes(devkit_bytes(meta_mat_bytes(synsets_struct(leaves, inner)), ground_truth))
    return mini


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tests/ilsvrc_miniature.py imagenet-sample-500.tar OUT_DIR")
    built = build(Path(sys.argv[1]), Path(sys.argv[2]), classes=10, train_per_class=5, val_per_class=3, test_images=6)
    print(f"wrote {', '.join(str(p) for p in built.files.values())}")
