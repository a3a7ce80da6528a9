"""How good the ImageNet-trained theano_alexnet convolutions are for Imagewoof at each input
resolution, before any fine-tuning: a linear read-out of their frozen pool5 features.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/finetune_resolution.py [--train 1500] [--val 1500]

For each (stored side, crop) the script feeds centre crops of a fixed random sample of
Imagewoof train and val images (seeded; the same images at every resolution) through conv1-conv5
as `alexnet train --init-from` does (the checkpoint's mean image resized to the stored side, raw
0..255), averages pool5 to 2x2 (1,024 values: the same read-out size at every resolution), and
fits a multinomial logistic regression on the train sample (standardised features, L-BFGS,
L2 weight 1e-3, 1e-2 or 1e-1; the best on the val sample is reported, for every resolution
alike). It prints the val error of each and the process CPU time of the feature extraction.

Reads ../shared/data (or $ALEXNET_SHARED/data): theano-alexnet-conv/ (imported in memory) and
imagewoof2-160.tar, prepared at each stored side into the cache root when missing
(`alexnet prepare`; ~1 min each). Writes nothing else.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from alexnet import locations
from alexnet.checkpoint import load_checkpoint
from alexnet.data import open_cache
from alexnet.data.preprocess import to_network_input
from alexnet.data.resolve import ensure_prepared
from alexnet.models import build_model
from alexnet.train.init_from import checkpoint_input_spec
from alexnet.weights.theano import import_theano_alexnet

RESOLUTIONS = ((128, 112), (160, 144), (256, 192), (256, 227))
WEIGHT_DECAYS = (1e-3, 1e-2, 1e-1)


def features(model, ckpt_path, cache, split: str, index: np.ndarray, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool5 averaged to 2x2 of centre crops, as a fine-tuning run would feed them."""
    run = SimpleNamespace(data=SimpleNamespace(mean="image", scale="none", crop=crop),
                          train=SimpleNamespace(init_from=str(ckpt_path)))
    spec = checkpoint_input_spec(run, cache)
    images, labels = cache.split(split).images, np.asarray(cache.split(split).labels)
    out = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for i in range(0, len(index), 64):
            x = to_network_input(np.asarray(images[index[i:i + 64]]), spec)
            out.append(F.adaptive_avg_pool2d(model.features(x).float(), 2).flatten(1))
    return torch.cat(out), torch.as_tensor(labels[index]).long()


def probe_error(xtr, ytr, xva, yva, classes: int) -> float:
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-3
    xtr, xva = (xtr - mu) / sd, (xva - mu) / sd
    errors = []
    for decay in WEIGHT_DECAYS:
        w = torch.zeros(xtr.shape[1], classes, requires_grad=True)
        b = torch.zeros(classes, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

        def closure(opt=opt, w=w, b=b, decay=decay):
            opt.zero_grad()
            loss = F.cross_entropy(xtr @ w + b, ytr) + decay * (w ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            errors.append(float(((xva @ w + b).argmax(1) != yva).float().mean()))
    return min(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=1500, help="train images in the probe's sample")
    parser.add_argument("--val", type=int, default=1500, help="val images in the probe's sample")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = locations.shared_dir() / "data"
    with tempfile.TemporaryDirectory() as tmp:
        ckpt_path = Path(tmp) / "theano.safetensors"
        import_theano_alexnet(data / "theano-alexnet-conv", ckpt_path)
        ckpt = load_checkpoint(ckpt_path)
        model = build_model("alexnet", num_classes=1000, **ckpt.meta["model"]["kwargs"])
        model.load_state_dict(ckpt.model_state)
        model.eval()
        print(f"{'stored side':>11} {'crop':>5} {'probe val error':>16} {'feature CPU s':>14}")
        for size, crop in RESOLUTIONS:
            cache = open_cache(ensure_prepared(data / "imagewoof2-160.tar", size, quiet=True))
            train = np.sort(np.random.default_rng(0).permutation(len(cache.split("train").labels))[:args.train])
            val = np.sort(np.random.default_rng(1).permutation(len(cache.split("val").labels))[:args.val])
            start = time.process_time()
            xtr, ytr = features(model, ckpt_path, cache, "train", train, crop)
            xva, yva = features(model, ckpt_path, cache, "val", val, crop)
            cpu = time.process_time() - start
            error = probe_error(xtr, ytr, xva, yva, cache.num_classes)
            print(f"{size:>11} {crop:>5} {100 * error:>15.2f}% {cpu:>14.1f}", flush=True)


if __name__ == "__main__":
    main()
