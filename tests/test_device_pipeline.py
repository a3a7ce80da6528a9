"""The device data path against the host path: identical tensors on a CPU, for every input setting.

The two paths share the random draws (``loader.draw_batch``) and the arithmetic
(``preprocess.InputTransform``) but not the geometry: the host path cuts crops from the
memory map with numpy strides, the device path sends whole squares and gathers the crops
with torch. With ``device="cpu"`` every batch must be *equal* (``torch.equal``):

* the matrix: mean none / channel / image x scale none / std x 1 or 3 channels x training
  batches (random crops, flips, PCA colour noise) / the centre crop / the ten views x raw and
  JPEG caches, over real ILSVRC photos and real Fashion-MNIST images;
* every preset's own input settings (size, crop, mean, scale, flips, colour noise);
* a real ``alexnet train fashion-mnist`` with ``--data.path host`` and ``--data.path device``:
  the same loss at every step.

The host path is the reference; the device path is checked against it, and the host path
against hand-cut crops and the formulas in tests/test_data_loader.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet import UserError, build_loader, open_cache, prepare
from alexnet.data.device_pipeline import (DATA_PATHS, DeviceLoader, SquareReader, choose_data_path,
                                          describe_data_path, torchvision_available)
from alexnet.data.pipeline import default_crop
from alexnet.data.preprocess import InputSpec
from alexnet.train.config import load_config
from conftest import run_cli
from train_support import CLI_ENV, train_args

pytestmark = pytest.mark.shared

S, CROP = 64, 56
PRESETS = ("fashion-mnist", "cifar10", "cifar10-ablations", "imagewoof", "paper-imagenet")


def photo_tree(shared_data: Path, root: Path, count: int = 30) -> Path:
    """``count`` real ILSVRC-2012 photos in a train/val tree of 3 classes."""
    with tarfile.open(shared_data / "imagenet-sample-500.tar") as tar:
        members = [m for m in tar.getmembers() if m.isfile()][:count]
        for i, m in enumerate(members):
            split = "val" if (i // 3) % 3 == 0 else "train"
            folder = root / split / f"class{i % 3}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / m.name.rsplit("/", 1)[-1]).write_bytes(tar.extractfile(m).read())
    return root


@pytest.fixture(scope="module")
def caches(shared_data, tmp_path_factory):
    """30 real ILSVRC-2012 photos prepared raw and as JPEG at 64 px."""
    base = tmp_path_factory.mktemp("device")
    tree = photo_tree(shared_data, base / "tree")
    out = {}
    for storage in ("raw", "jpeg"):
        prepare(tree, base / storage, size=S, storage=storage, workers=1, quiet=True)
        out[storage] = open_cache(base / storage)
    return out


@pytest.fixture(scope="module")
def matrix_caches(caches, fashion_mnist_dir, tmp_path_factory):
    """(channels, storage) -> cache: the photos above (3 channels, 64 px) and real Fashion-MNIST
    images (1 channel, 28 px, 3 per class and split), each raw and JPEG."""
    base = tmp_path_factory.mktemp("grey")
    out = {(3, storage): cache for storage, cache in caches.items()}
    for storage in ("raw", "jpeg"):
        prepare(fashion_mnist_dir, base / storage, size=28, storage=storage, limit=3, workers=1, quiet=True)
        out[(1, storage)] = open_cache(base / storage)
    return out


def batches(loader, epoch: int = 1):
    loader.set_epoch(epoch)
    return [tuple(t.clone() for t in b) for b in loader]


def assert_same_batches(cache, split, **kwargs) -> list:
    """The host path's batches, after checking the device path gives the same ones."""
    host = batches(build_loader(cache, split, data_path="host", with_index=True, **kwargs))
    device_loader = build_loader(cache, split, data_path="device", with_index=True, **kwargs)
    assert isinstance(device_loader, DeviceLoader)
    device = batches(device_loader)
    assert len(host) == len(device) > 1
    for (hx, hy, hi), (dx, dy, di) in zip(host, device, strict=True):
        assert hx.dtype == dx.dtype == torch.float32 and hx.shape == dx.shape
        assert hx.is_contiguous(memory_format=torch.channels_last) == dx.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(hx, dx) and torch.equal(hy, dy) and torch.equal(hi, di)
    return host


MODES = {"train": dict(train=True, pca_std=0.1), "center": dict(train=False, views="center"),
         "ten": dict(train=False, views="ten")}


@pytest.mark.parametrize("storage", ["raw", "jpeg"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("scale", ["none", "std"])
@pytest.mark.parametrize("mean", ["none", "channel", "image"])
def test_the_matrix_host_and_device_paths_are_equal(matrix_caches, storage, channels, mode, scale, mean):
    cache = matrix_caches[(channels, storage)]
    spec = InputSpec.from_stats(cache.stats, size=cache.size, crop=default_crop(cache.size), channels=channels,
                                mean=mean, scale=scale)
    split = "train" if mode == "train" else ("val" if "val" in cache.splits else "test")
    host = assert_same_batches(cache, split, input_spec=spec, batch_size=4, seed=5, **MODES[mode])
    x = torch.cat([b[0] for b in host])
    assert x.shape[1] == channels
    if scale == "std" and mean != "none":    # the setting the device path once ignored: unit-size inputs
        assert 0.3 < float(x.std()) < 3
    elif scale == "none":
        assert float(x.abs().max()) > 10     # 0..255 differences, not an all-zero artefact


@pytest.fixture(scope="module")
def preset_caches(shared_data, matrix_caches, tmp_path_factory):
    """A cache at each preset's stored side: real photos for the colour presets, Fashion-MNIST for its own."""
    base = tmp_path_factory.mktemp("presets")
    tree = photo_tree(shared_data, base / "tree", count=18)
    out = {}
    for preset in PRESETS:
        config = load_config(preset)
        if preset == "fashion-mnist":
            assert config.data.size == 28
            out[preset] = matrix_caches[(1, "raw")]
            continue
        folder = base / f"s{config.data.size}"
        if not folder.is_dir():
            prepare(tree, folder, size=config.data.size, storage="raw", workers=1, quiet=True)
        out[preset] = open_cache(folder)
    return out


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_host_and_device_paths_are_equal(preset_caches, preset, mode):
    """The preset's own data settings, as a training run builds its loaders (train.run_data)."""
    config = load_config(preset)
    d = config.data
    cache = preset_caches[preset]
    spec = InputSpec.from_stats(cache.stats, size=cache.size, crop=d.crop, channels=cache.channels, mean=d.mean,
                                scale=d.scale)
    kwargs = dict(train=True, flip=d.flip, pca_std=d.pca_std) if mode == "train" else MODES[mode]
    split = "train" if mode == "train" else ("val" if "val" in cache.splits else "test")
    assert_same_batches(cache, split, input_spec=spec, batch_size=3, seed=config.train.seed, **kwargs)


def test_training_with_channels_last_rank_and_no_prefetch(caches):
    assert_same_batches(caches["raw"], "train", batch_size=4, train=True, crop=CROP, seed=2, mean="channel",
                        channels_last=True, rank=1, world_size=2, prefetch=0)


def test_subset_and_worker_processes(caches):
    """A subset (rows mapped through the subset's index) and batches read in a worker process."""
    subset = caches["raw"].subset({"train": 11}, seed=4)
    assert_same_batches(subset, "train", batch_size=4, train=True, crop=CROP, seed=1)
    assert_same_batches(caches["jpeg"], "train", batch_size=8, train=True, crop=CROP, seed=1, workers=1)


def test_training_steps_match_on_both_paths(fmnist_cache, tmp_path):
    """``alexnet train fashion-mnist --data.path host`` and ``... device``: the same loss at every step,
    and the run's first lines name the path it took."""
    losses, said = {}, {}
    for path in ("host", "device"):
        args = train_args(fmnist_cache, tmp_path, path, "--data.path", path, "--train.max_steps", "6",
                          "--data.train_subset", "160", "--data.val_subset", "32", "--train.threads", "1",
                          "--data.crop", "24", epochs=1, batch=16)
        args.remove("--quiet")
        proc = run_cli(*args, env=CLI_ENV)
        assert proc.returncode == 0, proc.stderr[-3000:]
        said[path] = proc.stdout + proc.stderr
        lines = (tmp_path / path / "steps.jsonl").read_text().splitlines()
        losses[path] = [json.loads(line)["loss"] for line in lines]
    assert len(losses["host"]) == 6
    assert losses["host"] == losses["device"]
    assert "data path host" in said["host"] and "data path device" in said["device"]


def test_host_stage_sends_whole_squares(caches):
    """The point of the path: the host gathers uint8 squares, it does not cut crops."""
    loader = build_loader(caches["raw"], "train", data_path="device", batch_size=5, crop=CROP)
    assert isinstance(loader.reader, SquareReader)
    payload, labels, draw = loader.reader((0, 0))
    assert payload.dtype == torch.uint8 and tuple(payload.shape) == (5, S, S, 3)
    np.testing.assert_array_equal(payload.numpy(), np.asarray(caches["raw"].split("train").images)[draw.rows])
    assert draw.source is None and draw.alpha.shape == (5, 3) and labels.shape == (5,)


def test_a_failing_batch_reaches_the_caller_and_no_thread_is_left(caches, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(caches["jpeg"].path, broken)
    (broken / "train.jpeg.bin").write_bytes(b"\0" * 64)    # the JPEG bytes overwritten with zeros
    threads = threading.active_count()
    loader = build_loader(open_cache(broken), "train", data_path="device", batch_size=4, crop=CROP)
    with pytest.raises(ValueError):    # simplejpeg's, raised in the prefetch thread
        list(loader)
    it = iter(build_loader(caches["raw"], "train", data_path="device", batch_size=2, crop=CROP))
    next(it)
    it.close()                                              # a consumer that stops early
    assert threading.active_count() == threads


def test_choose_data_path():
    # auto: the host path on a CPU, the device path on CUDA
    assert choose_data_path("cpu", "raw", True) == "host"
    assert choose_data_path("cpu", "jpeg", False) == "host"
    assert choose_data_path("cuda", "raw", False) == "device"
    assert choose_data_path(torch.device("cuda", 1), "raw", True) == "device"
    assert choose_data_path("cuda:0", "jpeg", True) == "device-nvjpeg"
    assert choose_data_path("cuda:0", "jpeg", False) == "device-cpu-decode"
    # data.path host / device: either path on any device
    assert choose_data_path("cuda", "raw", True, "host") == "host"
    assert choose_data_path("cpu", "raw", True, "device") == "device"
    assert choose_data_path("cpu", "jpeg", True, "device") == "device-cpu-decode"
    assert choose_data_path("cuda", "jpeg", True, "device") == "device-nvjpeg"
    with pytest.raises(UserError, match="storage 'png'"):
        choose_data_path("cuda", "png", True)
    with pytest.raises(UserError, match="data.path 'gpu'"):
        choose_data_path("cpu", "raw", True, "gpu")
    for path in DATA_PATHS:
        assert describe_data_path(path).startswith(f"{path} (")
    assert isinstance(torchvision_available(), bool)


def test_bad_data_path_choices(caches):
    with pytest.raises(UserError, match="data.path 'gpu'"):
        build_loader(caches["raw"], "train", data_path="gpu")
    with pytest.raises(UserError, match="needs a JPEG cache"):
        build_loader(caches["raw"], "train", data_path="device-nvjpeg")


def test_bad_data_path_setting_is_one_line_before_any_work(tmp_path):
    proc = run_cli("train", "fashion-mnist", "--data.path", "gpu", "--run.out", tmp_path / "runs")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "data.path" in proc.stderr and "gpu" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_device_check_dry_run(shared_data, tmp_path):
    """``benchmarks/gpu_check.py --cpu``: every part of the device check at tiny sizes, on the CPU
    (its ``tests`` part left out here: it would run this file again)."""
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(repo / "benchmarks" / "gpu_check.py"), "--cpu", "--skip", "tests",
                           "--out", str(tmp_path), "--shared", str(shared_data.parent), "--budget", "100"],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    step = report["step"]
    measured = {(r["model"], r["precision"], r["channels_last"], r["compiled"]) for r in step if r.get("img_per_s", 0) > 0}
    assert ("alexnet", "fp32", False, False) in measured and ("alexnet", "bf16", True, True) in measured
    assert all("CUDA" in r["skipped"] for r in step if r["precision"] in ("fp16", "tf32"))
    paths = {r["data_path"]: r for r in report["end_to_end"] if "data_path" in r}
    for path in ("device", "host", "device-cpu-decode"):
        assert paths[path]["img_per_s"] > 0 and paths[path]["loader_only"]["img_per_s"] > 0, paths[path]
    assert report["limit"]["bf16_tflops"] > 0 and report["flops_per_image"]["alexnet"] > 0
    table = (tmp_path / "gpu-check.md").read_text()
    assert "## Training step" in table and "| device | raw |" in table and "tests (--skip)" in table
