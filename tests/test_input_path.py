"""One input path and one resolution rule.

* The same image and checkpoint give identical network input through every consumer:
  the evaluation loader (centre and ten views), ``predict``'s file path
  (``read_square`` + ``to_network_input``), and the features/neighbors path; the same
  probabilities from ``predict``, ``eval`` and every exported format; and the InputSpec
  survives a checkpoint round trip.
* The same source resolves to the same cache folder from every command: ``train``'s
  config, ``eval --data``, ``features --data`` and ``experiment`` all name
  ``<cache root>/<source name>-<size>``, and it is prepared once.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.checkpoint import load_model, save_model
from alexnet.data import build_loader, open_cache, prepare
from alexnet.data.preprocess import InputSpec, read_square, to_network_input
from alexnet.data.resolve import cache_dir_for, default_cache_dir, ensure_prepared, resolve_cache, source_name
from alexnet.eval.evaluate import predict_split
from alexnet.eval.predict import predict
from alexnet.export import FORMATS, SUFFIXES, export_model, load_exported
from alexnet.models import build_model
from alexnet.train.config import load_config
from conftest import run_cli

SIZE, CROP = 40, 32


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory) -> Path:
    """A real folder tree of JPEGs of different shapes (two classes, train and test)."""
    root = tmp_path_factory.mktemp("tree") / "tiny-tree"
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 3)):
        for c in ("cat", "dog"):
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def cache_and_checkpoint(image_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache")
    cache_dir = out / "cache"
    prepare(str(image_tree), cache_dir, size=SIZE, quiet=True, storage="raw")
    cache = open_cache(cache_dir)
    spec = InputSpec.from_stats(cache.stats, size=SIZE, crop=CROP, channels=3, mean="image", scale="std")
    torch.manual_seed(0)
    model = build_model("alexnet_small", num_classes=2)
    ckpt = save_model(out / "m.safetensors", model, name="alexnet_small", num_classes=2, in_channels=3,
                      classes=cache.classes, input_spec=spec)
    return cache, ckpt, spec


def test_the_input_spec_survives_the_checkpoint(cache_and_checkpoint):
    _, ckpt, spec = cache_and_checkpoint
    _, info = load_model(ckpt)
    back = info["input_spec"]
    assert (back.size, back.crop, back.channels, back.mean, back.scale) == (spec.size, spec.crop, 3, "image", spec.scale)
    np.testing.assert_array_equal(back.mean_image, spec.mean_image)


@pytest.mark.parametrize("views", ["center", "ten"])
def test_loader_predict_and_features_feed_identical_tensors(cache_and_checkpoint, image_tree, views):
    cache, ckpt, _ = cache_and_checkpoint
    _, info = load_model(ckpt)
    spec = info["input_spec"]
    split = cache.split("test")
    loader = build_loader(cache, "test", batch_size=len(split), train=False, views=views, input_spec=spec)
    from_loader = torch.cat([x for x, _ in loader])
    from_cache = to_network_input(np.asarray(split.images), spec, views)            # features / neighbors
    files = [image_tree / f for f in split.files]
    from_files = to_network_input(np.stack([read_square(f, spec.size, spec.channels) for f in files]), spec, views)
    assert from_loader.shape == (len(split) * (10 if views == "ten" else 1), 3, CROP, CROP)
    assert torch.equal(from_loader, from_cache)
    assert torch.equal(from_cache, from_files)
    # An independent reference for the arithmetic: the centre crop written out by hand.
    if views == "center":
        o = (SIZE - CROP) // 2
        crop = np.asarray(split.images)[:, o:o + CROP, o:o + CROP, :].astype(np.float32)
        ref = (crop - spec.mean_image[o:o + CROP, o:o + CROP]) * np.asarray(spec.scale, np.float32)
        np.testing.assert_allclose(from_cache.permute(0, 2, 3, 1).numpy(), ref, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_predict_eval_and_the_export_give_the_same_probabilities(cache_and_checkpoint, image_tree, tmp_path, fmt):
    """The same images through ``predict`` (the files), ``eval`` (the cache) and the exported file
    (the centre crop's pixels: the graph applies the mean and the scale itself)."""
    if fmt == "onnx":
        pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")
        pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is not installed")
    cache, ckpt, spec = cache_and_checkpoint
    model, info = load_model(ckpt)
    from_eval, _ = predict_split(model, info, cache, "test", workers=0)
    split = cache.split("test")
    files = [image_tree / f for f in split.files]
    results = predict(ckpt, files, topk=len(cache.classes), device="cpu")
    from_predict = torch.tensor([[next(t["prob"] for t in r["top"] if t["class"] == c) for c in cache.classes]
                                 for r in results])
    assert torch.equal(from_predict, from_eval.to(torch.float64))    # the same tensors, the same model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # the TorchScript and ONNX exporters' deprecation notes
        path, meta = export_model(ckpt, fmt, tmp_path / f"model{SUFFIXES[fmt]}")
        run, _ = load_exported(path)
    assert meta["input"] == "pixels"
    o = (SIZE - CROP) // 2
    squares = np.stack([read_square(f, SIZE, 3) for f in files])
    pixels = squares[:, o:o + CROP, o:o + CROP].transpose(0, 3, 1, 2).astype(np.float32)
    from_export = torch.softmax(torch.from_numpy(run(pixels)), dim=1)
    # Only the order of the network's floating-point sums may differ (docs/export.md): 0 to
    # 2e-6 of the largest logit; a dropped scale or a mean cut at the wrong place moves them by far more.
    torch.testing.assert_close(from_export, from_eval, rtol=0, atol=2e-5)
    assert (from_export.argmax(1) == from_eval.argmax(1)).all()


def test_one_source_name_rule():
    assert source_name("/data/cifar10-jpg.tar.gz") == "cifar10-jpg"
    assert source_name("/data/imagewoof2-160.tar") == "imagewoof2-160"
    assert source_name("/data/ILSVRC2012/") == "ILSVRC2012"
    assert source_name("fashion-mnist") == "fashion-mnist"
    assert source_name("x.tgz") == "x"


def test_every_command_resolves_a_source_to_the_same_cache(image_tree, cache_and_checkpoint, tmp_path, monkeypatch):
    root = tmp_path / "caches"
    monkeypatch.setenv("ALEXNET_CACHE", str(root))
    expected = root / f"tiny-tree-{SIZE}"
    assert default_cache_dir(str(image_tree), SIZE) == expected
    # train: the config's cache folder for this source
    config = load_config("fashion-mnist", ["--data.source", str(image_tree), "--data.size", str(SIZE)])
    assert config.cache_dir() == expected
    # the experiments and eval/features: the same rule, and the cache is prepared once
    assert ensure_prepared(str(image_tree), SIZE, quiet=True) == expected
    stamp = (expected / "meta.json").stat().st_mtime_ns
    assert Path(resolve_cache(str(image_tree), SIZE, quiet=True).path) == expected
    assert cache_dir_for(str(image_tree), SIZE) == expected
    _, ckpt, _ = cache_and_checkpoint
    env = {"ALEXNET_CACHE": str(root)}
    proc = run_cli("eval", ckpt, "--data", image_tree, "--workers", "0", env=env)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("features", ckpt, "--data", image_tree, "-o", tmp_path / "f.npy", "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in root.iterdir()) == [expected.name]
    assert (expected / "meta.json").stat().st_mtime_ns == stamp      # reused, never re-prepared
    # a cache folder given directly is used as it is
    assert cache_dir_for(str(expected), 999) == expected
