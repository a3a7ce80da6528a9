"""Helpers shared by the data tests: small real datasets built from ../shared, and references.

The references here are written independently of ``alexnet.data``: PIL's own decoder
and resize for images, plain numpy for statistics, file-format writers for CIFAR/IDX.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def reference_square(data: bytes, size: int, draft_factor: int = 1) -> np.ndarray:
    """The paper's preprocessing the plain way, with PIL only: decode (optionally DCT-scaled by
    PIL's own draft mode), EXIF transpose, RGB, central square at integer offsets, PIL's
    antialiased bilinear resize of that square to ``size``."""
    im = Image.open(io.BytesIO(data))
    if draft_factor > 1:
        w, h = im.size
        im.draft("RGB", (w // draft_factor, h // draft_factor))  # PIL picks scale = min(w // rw, h // rh)
    im = ImageOps.exif_transpose(im).convert("RGB")
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return np.asarray(im.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR))


def assert_close_to_pil(actual: np.ndarray, reference: np.ndarray, name: str = "") -> None:
    """Our resize is torch's uint8 antialiased bilinear kernel, PIL's reference is PIL's: both
    compute the same filter in fixed point with different rounding. Same shape, nearly every
    pixel within 1 level, and no systematic shift."""
    assert actual.shape == reference.shape, name
    d = np.abs(actual.astype(np.int64) - reference)
    assert (d <= 1).mean() > 0.998, f"{name}: only {(d <= 1).mean():.4f} of pixels within 1 level of PIL"
    assert d.mean() < 0.15 and d.max() <= 3, f"{name}: mean {d.mean():.3f}, max {d.max()}"


def dct_factor(data: bytes, size: int) -> int:
    """The documented DCT-domain downscaling rule: the largest of 1, 2, 4, 8 that keeps the
    short side >= size (PIL reads the JPEG header here, not simplejpeg)."""
    w, h = Image.open(io.BytesIO(data)).size
    factor = 1
    while factor < 8 and min(w, h) // (factor * 2) >= size:
        factor *= 2
    return factor


def tar_members(path, wanted=None, limit=None) -> list[tuple[str, bytes]]:
    """(name, bytes) of regular files in a real archive, in archive order."""
    out = []
    with tarfile.open(path) as tf:
        for m in tf:
            if m.isfile() and (wanted is None or wanted(m.name)):
                out.append((m.name, tf.extractfile(m).read()))
                if limit and len(out) >= limit:
                    break
    return out


def write_tar(path, files: list[tuple[str, bytes]]) -> None:
    mode = "w:gz" if str(path).endswith(".gz") else "w"
    with tarfile.open(path, mode) as tf:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def cifar_subset(shared_data, per_class: int = 3) -> list[tuple[str, bytes]]:
    """The first ``per_class`` JPEGs of every class of both splits of the real CIFAR-10 tarball."""
    counts: dict = {}

    def wanted(name: str) -> bool:
        parts = name.split("/")
        if len(parts) != 3:
            return False
        key = (parts[0], parts[1])
        counts[key] = counts.get(key, 0) + 1
        return counts[key] <= per_class
    return tar_members(shared_data / "cifar10-jpg.tar.gz", wanted)


def decode_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def write_cifar_python(folder, batches: dict, label_names: list[str]) -> None:
    """The official layout: ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``,
    each a pickled dict with bytes keys (as the Python 2 originals load)."""
    os.makedirs(folder, exist_ok=True)
    for name, (images, labels) in batches.items():
        rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # R plane, G plane, B plane
        d = {b"batch_label": name.encode(), b"labels": [int(x) for x in labels], b"data": rows,
             b"filenames": [f"{name}_{i}.png".encode() for i in range(len(labels))]}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(d, f, protocol=2)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in label_names], b"num_vis": 3072}, f, protocol=2)


def write_cifar_binary(folder, batches: dict, label_names: list[str]) -> None:
    """``cifar-10-batches-bin/{data_batch_1..5.bin,test_batch.bin,batches.meta.txt}``: records of
    1 label byte + 3072 pixel bytes (R, G, B planes)."""
    os.makedirs(folder, exist_ok=True)
    for name, (images, labels) in batches.items():
        rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
        records = np.concatenate([np.asarray(labels, np.uint8)[:, None], rows], axis=1)
        with open(os.path.join(folder, name + ".bin"), "wb") as f:
            f.write(records.tobytes())
    with open(os.path.join(folder, "batches.meta.txt"), "w") as f:
        f.write("\n".join(label_names) + "\n")


def write_idx(path, array: np.ndarray) -> None:
    """IDX: 0, 0, type 0x08 (uint8), ndim, big-endian int32 dims, then the data."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)


def read_idx_reference(path) -> np.ndarray:
    with gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def numpy_stats(images: np.ndarray) -> dict:
    """Train statistics straight from the stored pixels, float64 throughout."""
    x = images.astype(np.float64)
    pixels = x.reshape(-1, x.shape[-1])
    cov = np.cov(pixels, rowvar=False, bias=True).reshape(x.shape[-1], x.shape[-1])
    eigval, eigvec = np.linalg.eigh(cov)
    return {"mean_image": x.mean(axis=0), "channel_mean": pixels.mean(axis=0), "channel_std": pixels.std(axis=0),
            "eigval": eigval[::-1], "eigvec": eigvec[:, ::-1], "covariance": cov}


# torchvision.models.alexnet().state_dict(): every key and shape, in order (1000 classes), written
# out (torchvision itself is not a dependency): the layout alexnet_owt and the importer must match.
TORCHVISION_LAYOUT = [
    ("features.0.weight", (64, 3, 11, 11)), ("features.0.bias", (64,)),
    ("features.3.weight", (192, 64, 5, 5)), ("features.3.bias", (192,)),
    ("features.6.weight", (384, 192, 3, 3)), ("features.6.bias", (384,)),
    ("features.8.weight", (256, 384, 3, 3)), ("features.8.bias", (256,)),
    ("features.10.weight", (256, 256, 3, 3)), ("features.10.bias", (256,)),
    ("classifier.1.weight", (4096, 9216)), ("classifier.1.bias", (4096,)),
    ("classifier.4.weight", (4096, 4096)), ("classifier.4.bias", (4096,)),
    ("classifier.6.weight", (1000, 4096)), ("classifier.6.bias", (1000,)),
]


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (its parent has not reaped it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"
