"""Every source format, on real data from ../shared (or generated from real images where
the format is not in ../shared), prepared for real and compared with independent readers."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from alexnet import UserError, open_cache, prepare
from alexnet.data.decode import decode_square
from alexnet.data.sources import open_source

from data_helpers import (assert_close_to_pil, cifar_subset, dct_factor, decode_rgb, read_idx_reference, reference_square, tar_members,
                               write_cifar_binary, write_cifar_python, write_idx, write_tar)

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def cifar_members(shared_data):
    return cifar_subset(shared_data, per_class=3)


@pytest.fixture(scope="module")
def cifar_arrays(cifar_members):
    """Real CIFAR-10 pixels (decoded from the real JPEG tarball) for the generated formats."""
    split = {"train": ([], []), "test": ([], [])}
    for name, data in cifar_members:
        s, cls, _ = name.split("/")
        split[s][0].append(decode_rgb(data))
        split[s][1].append(CIFAR_CLASSES.index(cls))
    return {s: (np.stack(v[0]), np.array(v[1])) for s, v in split.items()}


def test_cifar_jpeg_tarball_subset(tmp_path, cifar_members):
    """A .tar.gz folder tree (real CIFAR-10 JPEGs): splits, sorted classes, exact pixels at native size."""
    archive = tmp_path / "cifar-subset.tar.gz"
    write_tar(archive, cifar_members)
    summary = prepare(archive, tmp_path / "cache", size=32, workers=2, quiet=True)
    cache = open_cache(tmp_path / "cache")
    assert cache.classes == CIFAR_CLASSES
    assert summary.counts == {"train": 30, "test": 30}
    assert cache.split("train").images.shape == (30, 32, 32, 3)
    by_name = dict(cifar_members)
    for split in ("train", "test"):
        sp = cache.split(split)
        for i, name in enumerate(sp.files):
            assert name.startswith(f"{split}/")
            assert sp.labels[i] == CIFAR_CLASSES.index(name.split("/")[1])
            np.testing.assert_array_equal(sp.images[i], decode_rgb(by_name[name]))


def test_imagewoof_tar_read_in_place(tmp_path, shared_data):
    """Real Imagewoof .tar (members read by offset, no unpacking): short side 160 -> 256, centre crop,
    equal to PIL's decode + resize of the same box; 1-channel JPEGs come out as RGB."""
    summary = prepare(shared_data / "imagewoof2-160.tar", tmp_path / "woof", limit=2, workers=2, quiet=True)
    cache = open_cache(tmp_path / "woof")
    assert summary.counts == {"train": 20, "val": 20}
    assert len(cache.classes) == 10 and cache.classes == sorted(cache.classes)
    assert all(c.startswith("n0") for c in cache.classes)
    wanted = set(cache.split("train").files + cache.split("val").files)
    members = dict(tar_members(shared_data / "imagewoof2-160.tar", lambda n: n in wanted))
    for split in ("train", "val"):
        sp = cache.split(split)
        for i, name in enumerate(sp.files):
            assert_close_to_pil(sp.images[i], reference_square(members[name], 256), name)
            assert cache.classes[sp.labels[i]] == name.split("/")[1]


def test_imagewoof_grayscale_member_becomes_rgb(shared_data):
    """Imagewoof has grayscale JPEGs; in an RGB dataset they are stored with R = G = B."""
    gray = None
    with tarfile.open(shared_data / "imagewoof2-160.tar") as tf:
        for m in tf:
            if m.isfile() and m.name.endswith(".JPEG"):
                data = tf.extractfile(m).read()
                if simplejpeg.decode_jpeg_header(data)[2] == "Gray":
                    gray = data
                    break
    assert gray is not None
    a, _ = decode_square(gray, 64, 3)
    assert a.shape == (64, 64, 3)
    np.testing.assert_array_equal(a[..., 0], a[..., 1])
    np.testing.assert_array_equal(a[..., 0], a[..., 2])


@pytest.mark.slow
def test_ilsvrc_flat_val_with_ground_truth_and_official_classes(tmp_path, shared_data):
    """The 500 original ILSVRC-2012 JPEGs as a flat folder + a ground-truth list (wnid per line,
    sorted file order) + the official 1000-class list: labels are the official indices and every
    image equals PIL's own path (with PIL's draft mode for the DCT-downscaled large ones)."""
    members = tar_members(shared_data / "imagenet-sample-500.tar")
    assert len(members) == 500
    names = sorted(n for n, _ in members)
    labels = tmp_path / "ground_truth.txt"
    labels.write_text("".join(n.split("_")[0] + "\n" for n in names))
    summary = prepare(shared_data / "imagenet-sample-500.tar", tmp_path / "inet", labels=str(labels),
                      classes=str(shared_data / "imagenet-classes.txt"), workers=2, quiet=True)
    cache = open_cache(tmp_path / "inet")
    official = [ln.split()[1] for ln in (shared_data / "imagenet-classes.txt").read_text().splitlines()]
    assert cache.classes == official and len(cache.classes) == 1000
    assert summary.counts == {"train": 500}
    sp = cache.split("train")
    assert sp.files == names
    np.testing.assert_array_equal(sp.labels, [official.index(n.split("_")[0]) for n in names])
    assert set(sp.labels.tolist()) == set(range(0, 1000, 2))  # "every other class in index order"
    by_name = dict(members)
    factors = set()
    for i in range(0, 500, 5):
        data = by_name[names[i]]
        factors.add(dct_factor(data, 256))
        assert_close_to_pil(sp.images[i], reference_square(data, 256, dct_factor(data, 256)), names[i])
    assert factors >= {1, 2}  # both paths exercised


def test_ilsvrc_train_tree_plus_flat_val(tmp_path, shared_data):
    """ILSVRC as distributed: train/<wnid>/*.JPEG and a flat val/ with a ground-truth file found
    in the source (class indices per line) - built from real ILSVRC images."""
    members = tar_members(shared_data / "imagenet-sample-500.tar", limit=12)
    wnids = sorted({n.split("_")[0] for n, _ in members})
    files = [(f"ILSVRC/train/{n.split('_')[0]}/{n}", d) for n, d in members[:6]]
    files += [(f"ILSVRC/train/{n.split('_')[0]}/{n}", d) for n, d in members[6:]]
    val = sorted(members[:6])
    files += [(f"ILSVRC/val/ILSVRC2012_val_{i:08d}.JPEG", d) for i, (_, d) in enumerate(val, 1)]
    files.append(("ILSVRC/val_ground_truth.txt",
                  "".join(f"{wnids.index(n.split('_')[0])}\n" for n, _ in val).encode()))
    write_tar(tmp_path / "ilsvrc.tar", files)
    prepare(tmp_path / "ilsvrc.tar", tmp_path / "c", size=64, workers=1, quiet=True)
    cache = open_cache(tmp_path / "c")
    assert cache.classes == wnids
    assert len(cache.split("train")) == 12 and len(cache.split("val")) == 6
    np.testing.assert_array_equal(cache.split("val").labels, [wnids.index(n.split("_")[0]) for n, _ in val])
    assert_close_to_pil(cache.split("val").images[0], reference_square(val[0][1], 64, dct_factor(val[0][1], 64)))


def test_flat_folder_without_labels_is_a_user_error(tmp_path, shared_data):
    members = tar_members(shared_data / "imagenet-sample-500.tar", limit=2)
    write_tar(tmp_path / "flat.tar", members)
    with pytest.raises(UserError, match="flat folder of images without class folders"):
        open_source(str(tmp_path / "flat.tar"))
    (tmp_path / "labels.txt").write_text("n01440764\n")
    with pytest.raises(UserError, match="1 labels for 2 images"):
        open_source(str(tmp_path / "flat.tar"), labels=str(tmp_path / "labels.txt"))


def test_fashion_mnist_idx_real(tmp_path, fashion_mnist_dir):
    """The Debian Fashion-MNIST (IDX, gzip) through the shorthand: 1 channel, native 28x28, exact."""
    prepare("fashion-mnist", tmp_path / "fm", size="native", workers=1, quiet=True)
    cache = open_cache(tmp_path / "fm")
    assert cache.channels == 1 and cache.size == 28
    assert cache.classes[0] == "T-shirt/top" and len(cache.classes) == 10
    ref = read_idx_reference(fashion_mnist_dir / "train-images-idx3-ubyte.gz")
    ref_labels = read_idx_reference(fashion_mnist_dir / "train-labels-idx1-ubyte.gz")
    train = cache.split("train")
    assert train.images.shape == (60000, 28, 28, 1)
    np.testing.assert_array_equal(train.images[..., 0], ref)
    np.testing.assert_array_equal(train.labels, ref_labels)
    assert len(cache.split("test")) == 10000
    # grayscale statistics: a 1x1 covariance whose eigenvalue is the pixel variance
    x = ref.astype(np.float64)
    assert cache.stats["eigvec"].shape == (1, 1)
    np.testing.assert_allclose(cache.stats["eigval"][0], x.var(), rtol=1e-5)
    np.testing.assert_allclose(cache.stats["mean_image"][..., 0], x.mean(axis=0), rtol=1e-5)


def test_generated_idx_plain_and_gz_resized(tmp_path, fashion_mnist_dir):
    """Uncompressed and gzipped IDX files written from real Fashion-MNIST images, resized to 32."""
    ref = read_idx_reference(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz")[:40]
    labels = read_idx_reference(fashion_mnist_dir / "t10k-labels-idx1-ubyte.gz")[:40]
    folder = tmp_path / "mnistlike"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte", ref[:30])
    write_idx(folder / "train-labels-idx1-ubyte", labels[:30])
    write_idx(folder / "t10k-images-idx3-ubyte.gz", ref[30:])
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels[30:])
    prepare(folder, tmp_path / "c", size=32, workers=1, quiet=True)
    cache = open_cache(tmp_path / "c")
    assert cache.classes == [str(i) for i in range(10)]
    expected = np.asarray(Image.fromarray(ref[3]).resize((32, 32), Image.BILINEAR))
    assert_close_to_pil(cache.split("train").images[3, :, :, 0], expected)
    np.testing.assert_array_equal(cache.split("test").labels, labels[30:])


def test_truncated_idx_is_a_user_error(tmp_path, fashion_mnist_dir):
    ref = read_idx_reference(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz")[:5]
    folder = tmp_path / "bad"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte", ref)
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(5, np.uint8))
    data = (folder / "train-images-idx3-ubyte").read_bytes()
    (folder / "train-images-idx3-ubyte").write_bytes(data[:-100])
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte: IDX file is .* \(truncated\?\)"):
        open_source(str(folder))


def _cifar_batches(arrays):
    train_x, train_y = arrays["train"]
    parts = np.array_split(np.arange(len(train_y)), 5)
    batches = {f"data_batch_{i + 1}": (train_x[p], train_y[p]) for i, p in enumerate(parts)}
    batches["test_batch"] = arrays["test"]
    return batches


def test_cifar_python_tarball_generated_from_real_pixels(tmp_path, cifar_arrays):
    """cifar-10-python.tar.gz layout (pickled batches, bytes keys) -> exact pixels and labels."""
    write_cifar_python(tmp_path / "src" / "cifar-10-batches-py", _cifar_batches(cifar_arrays), CIFAR_CLASSES)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    prepare(tmp_path / "cifar-10-python.tar.gz", tmp_path / "c", size="native", workers=1, quiet=True)
    cache = open_cache(tmp_path / "c")
    assert cache.classes == CIFAR_CLASSES and cache.size == 32
    np.testing.assert_array_equal(cache.split("train").images, cifar_arrays["train"][0])
    np.testing.assert_array_equal(cache.split("train").labels, cifar_arrays["train"][1])
    np.testing.assert_array_equal(cache.split("test").images, cifar_arrays["test"][0])


def test_cifar_python_refuses_code_in_pickles(tmp_path, cifar_arrays):
    """A pickle that would call os.system while loading is refused, naming the global; nothing runs."""
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_python(folder, _cifar_batches(cifar_arrays), CIFAR_CLASSES)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": Evil()}, f, protocol=2)
    with pytest.raises(UserError, match=r"data_batch_3: refusing to load pickled global (posix|os)\.system"):
        open_source(str(tmp_path))
    assert not marker.exists()


def test_cifar_binary_generated_from_real_pixels(tmp_path, cifar_arrays):
    write_cifar_binary(tmp_path / "cifar-10-batches-bin", _cifar_batches(cifar_arrays), CIFAR_CLASSES)
    with tarfile.open(tmp_path / "cifar-10-binary.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    prepare(tmp_path / "cifar-10-binary.tar.gz", tmp_path / "c", size=48, workers=1, quiet=True)
    cache = open_cache(tmp_path / "c")
    assert cache.classes == CIFAR_CLASSES
    expected = np.asarray(Image.fromarray(cifar_arrays["test"][0][5]).resize((48, 48), Image.BILINEAR))
    assert_close_to_pil(cache.split("test").images[5], expected)
    np.testing.assert_array_equal(cache.split("train").labels, cifar_arrays["train"][1])
    # a binary batch cut mid-record is refused with its name
    data = (tmp_path / "cifar-10-batches-bin" / "data_batch_2.bin").read_bytes()
    (tmp_path / "cifar-10-batches-bin" / "data_batch_2.bin").write_bytes(data[:-10])
    with pytest.raises(UserError, match="data_batch_2.bin: .* not a whole number of 3073-byte CIFAR records"):
        open_source(str(tmp_path / "cifar-10-batches-bin"))


def test_missing_source_and_unknown_kind(tmp_path):
    with pytest.raises(UserError, match="no such file or directory"):
        open_source(str(tmp_path / "nope"))
    (tmp_path / "x.zip").write_bytes(b"PK")
    with pytest.raises(UserError, match="not a folder or a .tar"):
        open_source(str(tmp_path / "x.zip"))


class _Zeros(io.RawIOBase):
    """``size`` zero bytes, read in blocks: an archive member that never sits in this test's memory."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = min(len(buf), self.left)
        buf[:n] = bytes(n)
        self.left -= n
        return n


_PEAK_RSS = r"""
import resource, sys
from alexnet import open_cache, prepare
prepare(sys.argv[1], sys.argv[2], size=32, workers=1, quiet=True)
assert len(open_cache(sys.argv[2]).split("train")) == 30
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)   # MB (Linux reports KB)
"""


def test_compressed_tar_is_streamed_not_held_in_memory(tmp_path, cifar_members):
    """An archive-level bomb: a .tar.gz whose 128 MB zero-filled member compresses to ~130 KB.
    Listing and preparing it must not hold the archive in memory: the peak resident memory
    of a real ``prepare`` (a fresh process each, ``getrusage``) is within 48 MB of the same
    archive without that member."""
    members = [(n, d) for n, d in cifar_members if n.startswith("train/")]
    bomb_size = 128 << 20
    peaks = {}
    for case in ("plain", "bomb"):
        archive = tmp_path / f"{case}.tar.gz"
        with tarfile.open(archive, "w:gz", compresslevel=1) as tf:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            if case == "bomb":
                info = tarfile.TarInfo("train/airplane/padding.bin")   # not an image: listed, ignored
                info.size = bomb_size
                tf.addfile(info, _Zeros(bomb_size))
        proc = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(archive), str(tmp_path / f"{case}-cache")],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        peaks[case] = int(proc.stdout.split()[-1])
    assert (tmp_path / "bomb.tar.gz").stat().st_size < 2 << 20
    assert peaks["bomb"] - peaks["plain"] < 48, peaks


def test_symlink_loop_in_a_folder_is_refused(tmp_path, cifar_members):
    """A link that leads back to a folder above it is refused with one line naming it
    (followed, it listed every image again at each level, until the path grew too long)."""
    root = tmp_path / "src"
    for name, data in cifar_members[:6]:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    loop = root / "train" / "airplane" / "again"
    os.symlink(root / "train", loop)
    with pytest.raises(UserError) as err:
        open_source(str(root))
    assert str(err.value).startswith(f"{loop}: symbolic link loop")
    assert "\n" not in str(err.value)
    loop.unlink()
    os.symlink(root / "train" / "airplane", root / "train" / "bird")   # a link elsewhere is followed
    assert [it.name for it in open_source(str(root)).splits["train"]][-1].startswith("train/bird/")
