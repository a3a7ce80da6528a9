"""Centre, ten-view and ensemble evaluation against a hand computation in float64.

The hand computation crops the stored uint8 images with numpy slicing (the four corners,
the centre and their mirror images: the paper's section 4.1), subtracts the training mean
image, scales, runs the network in float64, takes the softmax and averages - over views
and over ensemble members - then counts top-1/top-5 errors with a plain Python loop.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alexnet.data import open_cache
from alexnet.eval.evaluate import evaluate, predict_split
from alexnet.eval.metrics import ClassificationMeter, topk_correct
from alexnet.models import build_model
from alexnet.checkpoint import load_model, save_checkpoint

CROP, LIMIT = 24, 60
KWARGS = {"widths": [8, 16, 24, 24, 16], "hidden": 64}


def make_checkpoint(cache, path, seed):
    torch.manual_seed(seed)
    model = build_model("alexnet_small", num_classes=10, in_channels=1, **KWARGS)
    scale = [float(1 / s) for s in cache.stats["channel_std"]]
    meta = {"model": {"name": "alexnet_small", "num_classes": 10, "in_channels": 1, "kwargs": KWARGS},
            "classes": cache.classes, "class_names": cache.class_names,
            "data": {"size": cache.size, "crop": CROP, "mean": "image", "input_scale": scale}}
    stats = {f"stats.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in cache.stats.items()}
    return save_checkpoint(path, model=model, meta=meta, extra_tensors=stats)


def ten_views(image: np.ndarray, crop: int) -> list[np.ndarray]:
    s = image.shape[0]
    far, mid = s - crop, (s - crop) // 2
    corners = [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]
    views = [image[t:t + crop, l:l + crop] for t, l in corners]
    return views + [v[:, ::-1] for v in views]


def hand_probs(ckpt, cache, split, indices, views: str) -> np.ndarray:
    model, info = load_model(ckpt)
    model = model.double()
    mean = cache.stats["mean_image"].astype(np.float64)
    scale = np.asarray(info["input_scale"], dtype=np.float64)
    images = cache.split(split).images
    crops = []
    for i in indices:
        img = images[i].astype(np.float64) - mean                      # mean image subtracted before cropping
        if views == "ten":
            crops += ten_views(img, CROP)
        else:
            o = (img.shape[0] - CROP) // 2
            crops.append(img[o:o + CROP, o:o + CROP])
    x = torch.from_numpy((np.stack(crops) * scale).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1)                              # one batch: float64 throughout
    return p.view(len(indices), -1, p.shape[1]).mean(dim=1).numpy()


def hand_errors(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    top1 = top5 = 0
    for p, y in zip(probs, labels, strict=True):
        order = sorted(range(len(p)), key=lambda c: -p[c])
        top1 += order[0] == y
        top5 += y in order[:5]
    return 1 - top1 / len(labels), 1 - top5 / len(labels)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(fmnist_cache, tmp_path_factory):
    cache = open_cache(fmnist_cache)
    folder = tmp_path_factory.mktemp("eval")
    return cache, [make_checkpoint(cache, folder / f"m{s}.safetensors", s) for s in (0, 1)]


@pytest.mark.parametrize("views", ["center", "ten"])
def test_views_match_the_hand_computation(setup, views):
    cache, (ckpt, _) = setup
    n = 50
    model, info = load_model(ckpt)
    probs, labels = predict_split(model, info, cache, "test", views=views, batch_size=100, limit=0, workers=0)
    assert probs.shape == (len(cache.split("test")), 10)
    expected = hand_probs(ckpt, cache, "test", range(n), views)
    np.testing.assert_allclose(probs[:n].double().numpy(), expected, rtol=1e-4, atol=1e-6)
    assert torch.equal(labels, torch.from_numpy(cache.split("test").labels))


def test_ten_view_and_ensemble_errors_equal_the_hand_computation(setup, tmp_path):
    cache, ckpts = setup
    # --limit N evaluates a seeded random subset: the N indices below (see Cache.subset).
    n = 200
    chosen = np.sort(np.random.default_rng(0).permutation(len(cache.split("test")))[:n])
    labels = cache.split("test").labels[chosen]
    probs = [hand_probs(c, cache, "test", chosen, "ten") for c in ckpts]
    single = evaluate(ckpts[0], cache.path, views="ten", workers=0, limit=n)
    assert (single["top1_err"], single["top5_err"]) == pytest.approx(hand_errors(probs[0], labels), abs=1e-12)
    ens = evaluate(ckpts, cache.path, views="ten", workers=0, out=tmp_path, limit=n)
    assert (ens["top1_err"], ens["top5_err"]) == pytest.approx(hand_errors((probs[0] + probs[1]) / 2, labels), abs=1e-12)
    assert [m["top1_err"] for m in ens["members"]] == pytest.approx([hand_errors(p, labels)[0] for p in probs])
    assert ens["count"] == len(labels) == int(np.sum(ens["confusion"]))
    assert (tmp_path / "confusion.png").stat().st_size > 1000 and (tmp_path / "per_class.csv").is_file()
    per_class = ens["per_class_accuracy"]
    pred = ((probs[0] + probs[1]) / 2).argmax(1)
    for c, name in enumerate(cache.classes):
        assert per_class[name] == pytest.approx(np.mean(pred[labels == c] == c))


def test_topk_counts_against_brute_force():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(200, 7, generator=g)
    labels = torch.randint(0, 7, (200,), generator=g)
    hits = topk_correct(scores, labels, ks=(1, 3, 5, 10))
    for k in (1, 3, 5, 10):
        brute = sum(int(y) in sorted(range(7), key=lambda c: -float(s[c]))[:k] for s, y in zip(scores, labels, strict=True))
        assert hits[k] == brute
    meter = ClassificationMeter(7)
    meter.update(scores[:120], labels[:120])
    meter.update(scores[120:], labels[120:])
    assert meter.count == 200 and meter.top1 == hits[1] and meter.top5 == hits[5]
    assert int(meter.confusion.trace()) == hits[1]
