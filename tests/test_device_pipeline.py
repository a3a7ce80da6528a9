"""The device data path against the host loader: identical tensors on a CPU, for the same seed.

The reference is today's loader (:func:`alexnet.data.build_loader`): crops cut on the host.
The device path sends whole squares and cuts, mirrors, colours and centres them as one
batch; with ``device="cpu"`` every tensor must be *equal* (``torch.equal``), for training
batches (random crops, flips, PCA noise), centre crops and the ten views, over real
ILSVRC photos stored raw and as compact JPEG.
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
from alexnet.data.device_pipeline import (DATA_PATHS, DeviceLoader, _SquareReader, choose_data_path,
                                          describe_data_path, torchvision_available)

pytestmark = pytest.mark.shared

S, CROP = 64, 56


@pytest.fixture(scope="module")
def caches(shared_data, tmp_path_factory):
    """30 real ILSVRC-2012 photos in a train/val tree of 3 classes, prepared raw and as JPEG at 64 px."""
    base = tmp_path_factory.mktemp("device")
    tree = base / "tree"
    with tarfile.open(shared_data / "imagenet-sample-500.tar") as tar:
        members = [m for m in tar.getmembers() if m.isfile()][:30]
        for i, m in enumerate(members):
            split = "val" if (i // 3) % 3 == 0 else "train"
            folder = tree / split / f"class{i % 3}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / m.name.rsplit("/", 1)[-1]).write_bytes(tar.extractfile(m).read())
    out = {}
    for storage in ("raw", "jpeg"):
        prepare(tree, base / storage, size=S, storage=storage, workers=1, quiet=True)
        out[storage] = open_cache(base / storage)
    return out


def batches(loader, epoch: int = 0):
    loader.set_epoch(epoch)
    return [tuple(t.clone() for t in b) for b in loader]


def assert_same_batches(cache, split, **kwargs):
    host = batches(build_loader(cache, split, with_index=True, **kwargs), epoch=1)
    device = batches(DeviceLoader(cache, split, data_path="device" if cache.storage == "raw" else "device-cpu-decode",
                                  **_full(kwargs, with_index=True)), epoch=1)
    assert len(host) == len(device) > 1
    for (hx, hy, hi), (dx, dy, di) in zip(host, device):
        assert hx.dtype == dx.dtype == torch.float32 and hx.shape == dx.shape
        assert hx.is_contiguous(memory_format=torch.channels_last) == dx.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(hx, dx) and torch.equal(hy, dy) and torch.equal(hi, di)
    return host


def _full(kwargs: dict, **more) -> dict:
    """build_loader's defaults, for constructing DeviceLoader directly (it takes every argument)."""
    full = dict(batch_size=128, train=True, crop=CROP, seed=0, rank=0, world_size=1, workers=0, device="cpu",
                flip=True, pca_std=0.1, mean="image", views="center", drop_last=False, channels_last=False,
                pin_memory=None, prefetch=2, with_index=False)
    full.update(kwargs)
    full.update(more)
    return full


@pytest.mark.parametrize("storage", ["raw", "jpeg"])
def test_training_batches_equal_the_host_path(caches, storage):
    """Random crops, flips and PCA colour noise, the mean image cut at the same offsets."""
    host = assert_same_batches(caches[storage], "train", batch_size=6, train=True, crop=CROP, seed=5)
    x = torch.cat([b[0] for b in host])
    assert x.abs().max() > 10        # real images minus the mean: not an all-zero artefact


def test_training_with_channel_mean_channels_last_rank_and_no_prefetch(caches):
    assert_same_batches(caches["raw"], "train", batch_size=4, train=True, crop=CROP, seed=2, mean="channel",
                        channels_last=True, rank=1, world_size=2, prefetch=0)


@pytest.mark.parametrize("storage", ["raw", "jpeg"])
@pytest.mark.parametrize("views", ["center", "ten"])
def test_evaluation_views_equal_the_host_path(caches, storage, views):
    host = assert_same_batches(caches[storage], "val", batch_size=3, train=False, crop=CROP, views=views)
    assert host[0][0].shape[0] == (30 if views == "ten" else 3)


def test_subset_and_worker_processes(caches):
    """A subset (rows mapped through the subset's index) and batches read in a worker process."""
    subset = caches["raw"].subset({"train": 11}, seed=4)
    assert_same_batches(subset, "train", batch_size=4, train=True, crop=CROP, seed=1)
    assert_same_batches(caches["jpeg"], "train", batch_size=8, train=True, crop=CROP, seed=1, workers=1)


def test_host_stage_sends_whole_squares(caches):
    """The point of the path: the host gathers uint8 squares, it does not cut crops."""
    loader = DeviceLoader(caches["raw"], "train", data_path="device", **_full({"batch_size": 5}))
    assert isinstance(loader.reader, _SquareReader)
    payload, labels, top, left, flips, alpha, idx, source = loader.reader((0, 0))
    assert payload.dtype == torch.uint8 and tuple(payload.shape) == (5, S, S, 3)
    np.testing.assert_array_equal(payload.numpy(), np.asarray(caches["raw"].split("train").images)[idx.numpy()])
    assert source is None and alpha.shape == (5, 3) and labels.shape == (5,)


def test_a_failing_batch_reaches_the_caller_and_no_thread_is_left(caches, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(caches["jpeg"].path, broken)
    (broken / "train.jpeg.bin").write_bytes(b"\0" * 64)    # the JPEG bytes overwritten with zeros
    threads = threading.active_count()
    loader = DeviceLoader(open_cache(broken), "train", data_path="device-cpu-decode", **_full({"batch_size": 4}))
    with pytest.raises(Exception):
        list(loader)
    it = iter(DeviceLoader(caches["raw"], "train", data_path="device", **_full({"batch_size": 2})))
    next(it)
    it.close()                                              # a consumer that stops early
    assert threading.active_count() == threads


def test_choose_data_path():
    assert choose_data_path("cpu", "raw", True) == "host"
    assert choose_data_path("cpu", "jpeg", False) == "host"
    assert choose_data_path("cuda", "raw", False) == "device"
    assert choose_data_path(torch.device("cuda", 1), "raw", True) == "device"
    assert choose_data_path("cuda:0", "jpeg", True) == "device-nvjpeg"
    assert choose_data_path("cuda:0", "jpeg", False) == "device-cpu-decode"
    with pytest.raises(UserError, match="storage 'png'"):
        choose_data_path("cuda", "png", True)
    for path in DATA_PATHS:
        assert describe_data_path(path).startswith(f"{path} (")
    assert isinstance(torchvision_available(), bool)


def test_bad_data_path_choices(caches):
    with pytest.raises(UserError, match="data path 'host'"):
        DeviceLoader(caches["raw"], "train", data_path="host", **_full({}))
    with pytest.raises(UserError, match="needs a JPEG cache"):
        DeviceLoader(caches["raw"], "train", data_path="device-nvjpeg", **_full({}))


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
