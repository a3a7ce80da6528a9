"""The CUDA path: precision, layouts, compilation, the data path, checkpoints across devices, towers.

Every test here needs a CUDA device and is skipped, with the reason, on a machine without
one. ``scripts/gpu-check.sh`` runs them on a GPU machine (with the real images carried
there); ``pytest -m cuda`` selects them anywhere.

The model is the paper's two-tower network at reduced width (so checkpoints stay small)
on real ILSVRC-2012 photos stored at 72 px (64 px crops): 400 training and 100 validation
images in 10 classes. References are the CPU (the same checkpoint evaluated on both),
the host data path (the same batches), and an uninterrupted run (for resumes).
"""

from __future__ import annotations

import json
import tarfile
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from alexnet import build_loader, open_cache, prepare
from alexnet.analysis.features import extract_features
from alexnet.checkpoint import load_checkpoint, load_model
from alexnet.data.device_pipeline import DeviceLoader, choose_data_path, torchvision_available
from alexnet.data.loader import Loader
from alexnet.eval import evaluate
from alexnet.eval.predict import predict
from alexnet.models import build_model
from alexnet.train import load_config, train
from alexnet.train.distributed import TwoTowerModel, setup
from alexnet.train.trainer import Trainer

CUDA_REASON = (f"needs a CUDA device: torch {torch.__version__} reports none "
               f"(torch.cuda.is_available() is False); run scripts/gpu-check.sh on a GPU machine")
pytestmark = [pytest.mark.cuda, pytest.mark.shared,
              pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)]

S, CROP, CLASSES = 72, 64, 10
KWARGS = {"widths": [32, 64, 96, 96, 64], "hidden": 256, "init": "kaiming"}


@pytest.fixture(autouse=True)
def _exact_float32():
    """TF32 off, so float32 on CUDA is compared with float32 on the CPU, not with TF32."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.fixture(scope="module")
def tree(shared_data, tmp_path_factory):
    """The 500 ILSVRC photos as train/<class>/ (400) and val/<class>/ (100), 10 classes."""
    root = tmp_path_factory.mktemp("cuda-tree")
    with tarfile.open(shared_data / "imagenet-sample-500.tar") as tar:
        for i, m in enumerate(m for m in tar.getmembers() if m.isfile()):
            folder = root / ("val" if (i // CLASSES) % 5 == 0 else "train") / f"class{i % CLASSES}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / m.name.rsplit("/", 1)[-1]).write_bytes(tar.extractfile(m).read())
    return root


@pytest.fixture(scope="module")
def raw_cache(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda-raw") / "raw"
    prepare(tree, out, size=S, quiet=True)
    return out


@pytest.fixture(scope="module")
def jpeg_cache(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda-jpeg") / "jpeg"
    prepare(tree, out, size=S, storage="jpeg", quiet=True)
    return out


def config_file(folder, cache, name: str, **train) -> str:
    """A complete config: the data, the reduced paper network, SGD, and ``[train]`` settings."""
    settings = {"epochs": 2, "batch_size": 50, "device": "cuda", "stall_steps": 0, "test_views": "center", **train}
    lines = ["[data]", f'cache = "{cache}"', f"size = {S}", f"crop = {CROP}", "workers = 0", 'scale = "std"',
             "[model]", 'name = "alexnet"',
             "kwargs = { widths = [32, 64, 96, 96, 64], hidden = 256, init = \"kaiming\" }",
             "[schedule]", 'kind = "constant"', "[train]"]
    lines += [f"{k} = {json.dumps(v) if isinstance(v, str) else str(v).lower()}" for k, v in settings.items()]
    lines += ["[run]", f'out = "{folder}"', f'name = "{name}"', "progress = false", "plots = false"]
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def run(folder, cache, name, **train):
    return train_run(load_config(config_file(folder, cache, name, **train)))


def train_run(config):
    result = train(config)
    assert result.summary["status"] == "finished", result.summary
    return result


def epochs_of(run_dir):
    return [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]


def tensors(path, prefixes=("model.", "optim.")):
    return {k: v for k, v in load_file(str(path)).items() if k.startswith(prefixes)}


@pytest.fixture(scope="module")
def cpu_run(raw_cache, tmp_path_factory):
    """One epoch trained on the CPU: the checkpoint that eval, predict and features read on CUDA."""
    folder = tmp_path_factory.mktemp("cuda-cpu-run")
    return run(folder, raw_cache, "cpu", epochs=1, device="cpu").run_dir


# ----------------------------------------------------------------------------- precision

def test_float16_autocast_with_gradient_scaler_train_save_resume(raw_cache, tmp_path):
    """fp16 + GradScaler: the scaler's state is saved, and a run resumed from epoch 1 continues it
    (its growth tracker counts on from the saved value) exactly as the uninterrupted run's does."""
    whole = run(tmp_path, raw_cache, "whole", precision="fp16")
    assert all(np.isfinite(e["train_loss"]) for e in epochs_of(whole.run_dir))
    cut = run(tmp_path, raw_cache, "cut", precision="fp16", epochs=1)
    saved = load_checkpoint(cut.run_dir / "last.safetensors").meta["scaler"]
    assert saved and saved["scale"] > 0 and "_growth_tracker" in saved
    assert train(resume=cut.run_dir, overrides=["--train.epochs", "2"]).summary["status"] == "finished"
    resumed = load_checkpoint(cut.run_dir / "last.safetensors").meta
    reference = load_checkpoint(whole.run_dir / "last.safetensors").meta
    assert resumed["step"] == reference["step"] == 16
    assert resumed["scaler"] == reference["scaler"]      # restored, not started afresh at resume
    for t in tensors(cut.run_dir / "last.safetensors").values():
        assert t.dtype == torch.float32 and torch.isfinite(t).all()


def test_bfloat16_training_and_its_step_agree_with_float32(raw_cache, tmp_path):
    result = run(tmp_path, raw_cache, "bf16", precision="bf16", epochs=1)
    assert result.summary["precision"] == "bf16" and np.isfinite(epochs_of(result.run_dir)[0]["train_loss"])
    torch.manual_seed(0)
    model = build_model("alexnet", num_classes=CLASSES, **KWARGS).cuda().eval()
    x = torch.randn(8, 3, CROP, CROP, device="cuda")
    exact = model(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = model(x)
    assert low.dtype == torch.bfloat16
    assert (low.float() - exact).abs().max() <= 0.05 * exact.abs().max()


def test_the_training_loop_does_not_wait_for_the_gpu_between_log_points(raw_cache, tmp_path):
    """The real loop (``Trainer``, bf16, the default data path) under ``torch.cuda.set_sync_debug_mode("warn")``:
    between two step records the training thread makes exactly one synchronising call, the log point's
    read in ``Trainer.host_read``; no step waits for the GPU. (The device data path's prefetching thread
    works on its own stream; a sync there does not hold up the queue of steps, so it is not counted.)"""
    config = load_config(config_file(tmp_path, raw_cache, "sync", epochs=1, batch_size=32, precision="bf16",
                                     log_every=4))
    trainer = Trainer(config, setup(config.train.device), None)
    training_thread = threading.get_ident()
    syncs, at_step_records = [], []
    trainer.subscribers.append(lambda kind, record: at_step_records.append(len(syncs)) if kind == "step" else None)

    def show(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message) and threading.get_ident() == training_thread:
            syncs.append(f"{Path(filename).name}:{lineno}")

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        try:
            result = trainer.run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert result.summary["status"] == "finished" and len(at_step_records) >= 3    # 12 steps, a record every 4
    between = [syncs[a:b] for a, b in zip(at_step_records[:-1], at_step_records[1:], strict=True)]
    sites = {site for window in between for site in window}
    assert all(len(window) == 1 for window in between) and len(sites) == 1, between
    assert sites.pop().startswith("trainer.py:"), between


def test_channels_last_matches_contiguous_and_trains(raw_cache, tmp_path):
    torch.manual_seed(0)
    model = build_model("alexnet", num_classes=CLASSES, **KWARGS).cuda().eval()
    x = torch.randn(8, 3, CROP, CROP, device="cuda")
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    got = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    result = run(tmp_path, raw_cache, "cl", channels_last=True, precision="bf16", epochs=1)
    assert np.isfinite(epochs_of(result.run_dir)[0]["train_loss"])


# ----------------------------------------------------------------------------- data

def _loader_args(kwargs: dict) -> dict:
    """build_loader's defaults for what ``kwargs`` leaves out, on CUDA (the classes take every argument)."""
    full = dict(batch_size=128, train=True, crop=CROP, seed=0, rank=0, world_size=1, workers=0, device="cuda",
                flip=True, pca_std=0.1, mean="image", views="center", drop_last=False, channels_last=False,
                pin_memory=None, prefetch=2, with_index=True)
    full.update(kwargs)
    return full


def device_loader(cache, split, data_path, **kwargs):
    return DeviceLoader(cache, split, data_path=data_path, **_loader_args(kwargs))


def host_loader(cache, split, **kwargs):
    """The host path on CUDA, named explicitly (``build_loader`` picks the device path there)."""
    return Loader(cache, split, **_loader_args(kwargs))


def _cpu_batches(cache, split, **kwargs):
    loader = build_loader(cache, split, device="cpu", with_index=True, **kwargs)
    loader.set_epoch(1)
    return list(loader)


def test_loader_pinned_non_blocking_copies_equal_the_cpu_batches(raw_cache):
    cache = open_cache(raw_cache)
    kwargs = dict(batch_size=64, train=True, crop=CROP, seed=3)
    loader = host_loader(cache, "train", **kwargs)
    assert loader.pin_memory
    loader.set_epoch(1)
    gpu = list(loader)
    for (cx, cy, ci), (gx, gy, gi) in zip(_cpu_batches(cache, "train", **kwargs), gpu):
        assert gx.is_cuda and gy.is_cuda
        assert torch.equal(gx.cpu(), cx) and torch.equal(gy.cpu(), cy) and torch.equal(gi, ci)


def test_build_loader_on_cuda_takes_the_chosen_data_path(raw_cache, jpeg_cache):
    """The choice is automatic: build_loader on CUDA returns the loader of choose_data_path's answer."""
    for path in (raw_cache, jpeg_cache):
        cache = open_cache(path)
        loader = build_loader(cache, "train", batch_size=8, crop=CROP, device="cuda")
        assert loader.data_path == choose_data_path("cuda", cache.storage, torchvision_available())
        x, y = next(iter(loader))
        assert x.is_cuda and x.shape == (8, 3, CROP, CROP)


@pytest.mark.parametrize("views", ["center", "ten"])
def test_device_data_path_on_cuda_equals_the_host_path(raw_cache, views):
    """Squares to the GPU, crops/flips/PCA/mean there: the same float32 tensors as the CPU host path."""
    cache = open_cache(raw_cache)
    assert choose_data_path("cuda", cache.storage, torchvision_available()) == "device"
    for split, kwargs in (("train", dict(batch_size=64, train=True, crop=CROP, seed=3, channels_last=True)),
                          ("val", dict(batch_size=16, train=False, crop=CROP, views=views))):
        loader = device_loader(cache, split, "device", **kwargs)
        assert loader.pin_memory
        loader.set_epoch(1)
        gpu = list(loader)
        reference = _cpu_batches(cache, split, **kwargs)
        assert len(gpu) == len(reference) > 1
        for (cx, cy, ci), (gx, gy, gi) in zip(reference, gpu):
            assert gx.is_cuda and torch.equal(gx.cpu(), cx) and torch.equal(gy.cpu(), cy) and torch.equal(gi, ci)


@pytest.mark.skipif(torch.cuda.is_available() and not torchvision_available(),
                    reason="needs torchvision (nvJPEG decoding through torchvision.io.decode_jpeg)")
def test_nvjpeg_decoding_is_close_to_the_cpu_decoder(jpeg_cache):
    """nvJPEG and libjpeg-turbo may round differently; on average they agree within two levels."""
    cache = open_cache(jpeg_cache)
    assert choose_data_path("cuda", "jpeg", True) == "device-nvjpeg"
    kwargs = dict(batch_size=20, train=False, crop=S, mean="none", views="center")
    cpu = _cpu_batches(cache, "val", **kwargs)
    loader = device_loader(cache, "val", "device-nvjpeg", **kwargs)
    gpu = list(loader)
    diff = torch.cat([(g[0].cpu() - c[0]).abs().flatten() for c, g in zip(cpu, gpu)])
    assert diff.mean() < 2.0, f"mean |nvJPEG - CPU| = {diff.mean():.2f} levels, max {diff.max():.0f}"
    assert all(torch.equal(g[1].cpu(), c[1]) for c, g in zip(cpu, gpu))


# ----------------------------------------------------------------------------- eval, predict, features

def test_eval_predict_and_features_on_cuda_match_the_cpu(cpu_run, raw_cache, tree, tmp_path, cli):
    ckpt = cpu_run / "last.safetensors"
    on_cpu = evaluate(ckpt, raw_cache, device="cpu", workers=0, split="val")
    on_gpu = evaluate(ckpt, raw_cache, device="cuda", workers=0, split="val")
    assert on_gpu["count"] == on_cpu["count"] == 100
    assert abs(on_gpu["top1_err"] - on_cpu["top1_err"]) <= 0.01     # at most one near-tie flips
    assert on_gpu["loss"] == pytest.approx(on_cpu["loss"], rel=1e-3)
    images = sorted((tree / "val").rglob("*.JPEG"))[:6]
    for a, b in zip(predict(ckpt, images, device="cpu"), predict(ckpt, images, device="cuda")):
        assert [t["class"] for t in a["top"]][:1] == [t["class"] for t in b["top"]][:1]
        np.testing.assert_allclose([t["prob"] for t in a["top"]], [t["prob"] for t in b["top"]], atol=1e-3)
    cli("features", ckpt, "--data", raw_cache, "--split", "val", "-o", tmp_path / "cuda.npy", "--device", "cuda",
        "--quiet", check=True)
    extract_features(ckpt, raw_cache, tmp_path / "cpu.npy", split="val", device="cpu")
    np.testing.assert_allclose(np.load(tmp_path / "cuda.npy"), np.load(tmp_path / "cpu.npy"), rtol=1e-3, atol=1e-3)


def test_checkpoint_written_on_cpu_resumes_on_cuda_and_back(cpu_run, raw_cache, tmp_path, cli):
    import shutil
    run_dir = tmp_path / "moved"
    shutil.copytree(cpu_run, run_dir)
    cli("train", "--resume", run_dir, "--quiet", "--train.epochs", "2", "--train.device", "cuda", check=True)
    cli("train", "--resume", run_dir, "--quiet", "--train.epochs", "3", "--train.device", "cpu", check=True)
    epochs = epochs_of(run_dir)
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and all(np.isfinite(e["train_loss"]) for e in epochs)
    assert load_checkpoint(run_dir / "last.safetensors").meta["step"] == 24
    for device in ("cpu", "cuda"):
        model, _ = load_model(run_dir / "last.safetensors", device=device)
        assert next(model.parameters()).device.type == device


# ----------------------------------------------------------------------------- towers, determinism

def test_towers_on_one_gpu_equal_the_grouped_model_and_train(raw_cache, tmp_path):
    torch.manual_seed(0)
    grouped = build_model("alexnet", num_classes=CLASSES, **KWARGS).eval()
    towers = TwoTowerModel(grouped, ("cuda:0", "cuda:0")).eval()
    grouped = grouped.cuda()
    x = torch.randn(6, 3, CROP, CROP, device="cuda")
    torch.testing.assert_close(towers(x), grouped(x), rtol=1e-4, atol=1e-4)
    config = load_config(config_file(tmp_path, raw_cache, "towers", epochs=1))
    config.model.parallel, config.model.devices = "towers", ["cuda:0", "cuda:0"]
    result = train_run(config)
    assert np.isfinite(epochs_of(result.run_dir)[0]["train_loss"])
    model, _ = load_model(result.run_dir / "last.safetensors", device="cuda")   # the grouped layout
    assert model(x).shape == (6, CLASSES)


def test_deterministic_resumed_gpu_run_equals_the_uninterrupted_one(raw_cache, tmp_path, cli):
    """``--train.deterministic true``: deterministic kernels, so resuming reproduces the run bit for bit."""
    whole = config_file(tmp_path, raw_cache, "whole")
    cut = config_file(tmp_path, raw_cache, "cut", epochs=1)
    for config in (whole, cut):
        cli("train", config, "--quiet", "--train.deterministic", "true", check=True)
    cli("train", "--resume", tmp_path / "cut", "--quiet", "--train.epochs", "2", check=True)
    a, b = tensors(tmp_path / "whole" / "last.safetensors"), tensors(tmp_path / "cut" / "last.safetensors")
    assert a.keys() == b.keys() and len(a) > 10
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ after resume: {different[:5]}"


def test_one_training_step_on_cuda_lowers_the_loss_on_its_batch(raw_cache):
    """A sanity anchor for the rest: the CUDA step does learn (SGD on one real batch)."""
    cache = open_cache(raw_cache)
    loader = build_loader(cache, "train", batch_size=50, train=True, crop=CROP, seed=0, device="cuda")
    x, y = next(iter(loader))
    x = x / 64.0
    torch.manual_seed(0)
    model = build_model("alexnet", num_classes=CLASSES, **KWARGS).cuda().eval()   # eval: no dropout
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    before = float(F.cross_entropy(model(x), y))
    for _ in range(20):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(F.cross_entropy(model(x), y)) < 0.5 * before


# Last: compilation takes the longest (tens of seconds), and the device check may stop here.

def test_compiled_training(raw_cache, tmp_path):
    result = run(tmp_path, raw_cache, "compiled", compile=True, precision="bf16", epochs=1)
    assert not any("compile" in w for w in result.summary["warnings"]), result.summary["warnings"]
    assert np.isfinite(epochs_of(result.run_dir)[0]["train_loss"])
