"""Which kernel convention the released theano_alexnet conv1-conv5 weights were trained
with, by experiment: linear read-outs of pool5 features of real Imagewoof images under
each candidate convention.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/theano_conventions.py [--per-class 60] [--folds 5]

Why the test needs care. Reversing every kernel of an all-convolutional stack whose
padding and stride grid are symmetric (227 input: conv1 taps 0..226 exactly) is the
same as rotating the input by 180 degrees and rotating the feature maps back: the
unflipped network on an image computes exactly the flipped network on the upside-down
image (checked below on real inputs). So "flipped or not" is the question "which way
up does this network see the world", and the right convention is the one under which
upright photos give the more useful features: a real but moderate effect for dog
breeds, which are told apart largely by texture. To measure it with little noise, every
image is predicted once by k-fold cross-validation (ridge probe and nearest class mean
on standardised pool5 features), and the two conventions are compared image by image
(paired counts, and the paired difference of the probe's squared error with its
standard error).

Reads ../shared/data (or $ALEXNET_SHARED/data): theano-alexnet-conv/ and
imagewoof2-160.tar (the first N train images of each class). Prints a table, writes nothing.
"""

from __future__ import annotations

import argparse
import tarfile
import time
from collections import defaultdict

import numpy as np
import torch

from alexnet import locations
from alexnet.data.decode import decode_square
from alexnet.data.preprocess import InputSpec, to_network_input
from alexnet.models import build_model
from alexnet.weights.theano import MODEL_KWARGS, read_theano_alexnet


def imagewoof_sample(tar_path, per_class: int):
    """uint8 (N, 256, 256, 3) squares and labels: the first train images of each class (sorted names)."""
    chosen = defaultdict(list)
    with tarfile.open(tar_path) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.startswith("train/")
                          and m.name.endswith(".JPEG")), key=lambda m: m.name)
        for m in members:
            wnid = m.name.split("/")[1]
            if len(chosen[wnid]) < per_class:
                chosen[wnid].append(m)
        classes = sorted(chosen)
        images, labels = [], []
        for label, wnid in enumerate(classes):
            for m in chosen[wnid]:
                images.append(decode_square(tar.extractfile(m).read(), 256, 3, name=m.name)[0])
                labels.append(label)
    return np.stack(images), np.asarray(labels), classes


def model_for(flip: bool | None, state_cache: dict):
    torch.manual_seed(0)
    model = build_model("alexnet", num_classes=1000, **MODEL_KWARGS).eval()
    if flip is not None:
        if flip not in state_cache:
            state_cache[flip] = read_theano_alexnet(locations.shared_dir() / "data" / "theano-alexnet-conv", flip=flip)
        model.load_state_dict(state_cache[flip][0], strict=False)
    return model


@torch.no_grad()
def pool5(model, squares, spec, batch=20):
    feats = [torch.flatten(model.avgpool(model.features(to_network_input(squares[i:i + batch], spec))), 1)
             for i in range(0, len(squares), batch)]
    return torch.cat(feats).double().numpy()


def cross_validated(features, labels, folds: int, ridge: float = 1.0):
    """Per image: NCM correct, probe correct, probe squared error; each image predicted by the other folds."""
    n, k = len(labels), labels.max() + 1
    fold = np.arange(n) % folds            # images are grouped by class: this stratifies
    ncm_right, probe_right, sq_err = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n)
    for f in range(folds):
        tr, te = fold != f, fold == f
        mu, sd = features[tr].mean(0), features[tr].std(0) + 1e-6
        a, b = (features[tr] - mu) / sd, (features[te] - mu) / sd
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        means = np.stack([a[labels[tr] == c].mean(0) for c in range(k)])
        ncm_right[te] = np.argmax(b @ means.T, 1) == labels[te]
        onehot = np.eye(k)[labels[tr]]
        coef = a.T @ np.linalg.solve(a @ a.T + ridge * np.eye(len(a)), onehot)   # dual ridge: n < d
        scores = b @ coef
        probe_right[te] = np.argmax(scores, 1) == labels[te]
        sq_err[te] = ((scores - np.eye(k)[labels[te]]) ** 2).sum(1)
    return ncm_right, probe_right, sq_err


@torch.no_grad()
def equivariance_gap(squares, spec, cache) -> float:
    """max |unflipped(x) - rot180(flipped(rot180(x)))| / max |unflipped(x)| at pool5, on real inputs."""
    x = to_network_input(squares, spec)
    unflipped = model_for(False, cache).features(x)
    flipped_rotated = model_for(True, cache).features(x.flip(2, 3)).flip(2, 3)
    return float((unflipped - flipped_rotated).abs().max() / unflipped.abs().max())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    data = locations.shared_dir() / "data"
    squares, labels, classes = imagewoof_sample(data / "imagewoof2-160.tar", args.per_class)
    cache: dict = {}
    mean_rgb = read_theano_alexnet(data / "theano-alexnet-conv")[1]
    spec = InputSpec(size=256, crop=227, channels=3, mean="image", mean_image=mean_rgb)
    print(f"Imagewoof: {len(squares)} train images, {len(classes)} classes, {args.folds}-fold cross-validation")
    print(f"equivariance check (4 images): unflipped(x) vs rot180(flipped(rot180 x)) at pool5: "
          f"max relative difference {equivariance_gap(squares[:: len(squares) // 4][:4], spec, cache):.1e}")
    variants = [("flipped kernels (true convolution; the importer)", True),
                ("unflipped kernels (correlation)", False),
                ("random weights (paper init)", None)]
    print(f"{'variant':50s} {'NCM acc':>8s} {'probe acc':>9s} {'probe sq.err':>12s}")
    results = {}
    for label, flip in variants:
        results[flip] = cross_validated(pool5(model_for(flip, cache), squares, spec), labels, args.folds)
        ncm, probe, err = results[flip]
        print(f"{label:50s} {100 * ncm.mean():7.1f}% {100 * probe.mean():8.1f}% {err.mean():12.4f}", flush=True)
    (_, right_f, err_f), (_, right_u, err_u) = results[True], results[False]
    diff = err_u - err_f
    print(f"paired, probe: right only with flipped {int((right_f & ~right_u).sum())}, only with unflipped "
          f"{int((~right_f & right_u).sum())}; squared error unflipped - flipped = {diff.mean():.4f} "
          f"+- {diff.std(ddof=1) / np.sqrt(len(diff)):.4f} (mean +- s.e., {len(diff)} images)")
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
