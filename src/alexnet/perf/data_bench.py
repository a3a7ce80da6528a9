"""Data pipeline benchmarks: each fast path beside its plain reference, as ratios in one run.

    alexnet bench --only data [--quick]        (or: python benchmarks/bench_data.py [--quick] [--json])

Rows (``run(quick) -> list[dict]`` with keys name, ours, reference, unit, ratio):

* ``prepare_decode_per_core``: images per CPU-second of ``decode_square`` (simplejpeg +
  DCT-domain downscaling + torch's uint8 antialiased resize of the central square) vs the
  plain PIL path (open, convert RGB, resize the short side to 256 bilinear/antialiased,
  centre crop), one process and one thread, on the 500 original ILSVRC-2012 JPEGs of
  the shared data folder (``alexnet.locations.shared_dir``), bytes already in memory. Target ratio >= 1.5.
* ``prepare_end_to_end_1_worker``: images per CPU-second of the whole ``prepare`` (list and
  read the .tar, decode, statistics, write the cache) with one worker vs the same plain path.
* ``cache_bytes_per_image``: the compact JPEG variant's measured size per image vs raw.
* ``loader_train_vs_model``: images/s of the training loader (batches of 128 random 224
  crops, flips, PCA noise, mean-image subtraction; workers=0, so it shares the cores with
  nothing) vs images/s of one training step of the paper's model (forward + backward + SGD)
  on this machine. Target ratio >= 5 (training never waits for data).

The machine is shared and noisy: per-core rows are measured in CPU seconds of this process
(``time.process_time``), ours and the reference interleaved image by image; the loader and
model rows are wall-clock medians over rounds. Only the ratios are meaningful.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data import build_loader, prepare
from ..data.decode import decode_square
from ..locations import shared_dir
from ..models import build_model


def sample_path() -> Path:
    """The 500 ILSVRC-2012 JPEGs the decode and prepare rows read."""
    return shared_dir() / "data" / "imagenet-sample-500.tar"


def plain_pil(data: bytes, size: int = 256) -> np.ndarray:
    """The reference: what a straightforward script does, per image."""
    im = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = im.size
    scale = size / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)))


def _blobs(limit: int | None) -> list[tuple[str, bytes]]:
    with tarfile.open(sample_path()) as tf:
        out = [(m.name, tf.extractfile(m).read()) for m in tf if m.isfile()]
    return out[:limit] if limit else out


def bench_decode(blobs, rounds: int) -> dict:
    """Per image, ours and the reference back to back (alternating which goes first), timed in
    CPU seconds of this process (``time.process_time``; one torch thread): "per core" means
    per CPU-second, which other jobs on the machine do not inflate the way they inflate wall
    time. Images per CPU-second from the summed times."""
    ours_fn = lambda item: decode_square(item[1], 256, 3, item[0])  # noqa: E731
    ref_fn = lambda item: plain_pil(item[1])  # noqa: E731
    for item in blobs[:20]:  # warm-up
        ours_fn(item), ref_fn(item)
    t_ours = t_ref = 0.0
    for r in range(rounds):
        for k, item in enumerate(blobs):
            order = (ours_fn, ref_fn) if (k + r) % 2 == 0 else (ref_fn, ours_fn)
            for fn in order:
                start = time.process_time()
                fn(item)
                elapsed = time.process_time() - start
                if fn is ours_fn:
                    t_ours += elapsed
                else:
                    t_ref += elapsed
    n = rounds * len(blobs)
    o, r = n / t_ours, n / t_ref
    return {"name": "prepare_decode_per_core", "ours": round(o, 1), "reference": round(r, 1),
            "unit": "images per CPU-second (1 process, 1 thread)", "ratio": round(o / r, 2)}


def bench_prepare(blobs, limit: int | None, reference_rate: float) -> tuple[dict, dict, str]:
    tmp = tempfile.mkdtemp(prefix="bench-data-")
    src = sample_path()
    if limit:  # a smaller real archive for --quick
        src = Path(tmp) / "sample.tar"
        with tarfile.open(src, "w") as tf:
            for name, data in blobs:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    labels = Path(tmp) / "labels.txt"
    names = sorted(n for n, _ in blobs)
    labels.write_text("".join(n.split("_")[0] + "\n" for n in names))
    out = Path(tmp) / "cache"
    start = time.process_time()  # workers=1 runs in this process: its CPU time is the whole cost
    prepare(src, out, labels=str(labels), workers=1, quiet=True)
    rate = len(blobs) / (time.process_time() - start)
    jpeg_out = Path(tmp) / "cache-jpeg"
    prepare(src, jpeg_out, labels=str(labels), workers=1, quiet=True, storage="jpeg")
    jpeg_bytes = os.path.getsize(jpeg_out / "train.jpeg.bin") / len(blobs)
    row = {"name": "prepare_end_to_end_1_worker", "ours": round(rate, 1), "reference": round(reference_rate, 1),
           "unit": "images per CPU-second (1 worker, incl. listing, tar read, stats, write)",
           "ratio": round(rate / reference_rate, 2)}
    size_row = {"name": "cache_bytes_per_image", "ours": round(jpeg_bytes), "reference": 256 * 256 * 3,
                "unit": "bytes/image (jpeg q90 4:2:0 vs raw uint8, 256x256x3)",
                "ratio": round(256 * 256 * 3 / jpeg_bytes, 2)}
    return row, size_row, str(out)


def bench_loader(cache_path: str, batches: int, rounds: int) -> float:
    loader = build_loader(cache_path, "train", batch_size=128, train=True, crop=224, seed=0, workers=0,
                          flip=True, pca_std=0.1, mean="image")
    rates = []
    it = iter(())
    seen_epochs = 0

    def next_batch():
        nonlocal it, seen_epochs
        try:
            return next(it)
        except StopIteration:
            loader.set_epoch(seen_epochs)
            seen_epochs += 1
            it = iter(loader)
            return next(it)
    next_batch()  # warm-up
    for _ in range(rounds):
        start = time.perf_counter()
        n = 0
        for _ in range(batches):
            x, y = next_batch()
            n += len(y)
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def bench_model_step(batch: int, steps: int) -> float:
    """Images/s of one SGD step of the paper's model at 224x224 (the consumer of the loader)."""
    model = build_model("alexnet", num_classes=1000)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 224, 224)
    y = torch.randint(0, 1000, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def run(quick: bool = False) -> list[dict]:
    """The data rows (see the module docstring); [] when the sample archive is absent."""
    threads = torch.get_num_threads()
    if not sample_path().is_file():
        print(f"data bench: {sample_path()} not found (set ALEXNET_SHARED); skipping", file=sys.stderr)
        return []
    limit = 120 if quick else None
    blobs = _blobs(limit)
    torch.set_num_threads(1)  # "per core": one process, one thread, like each prepare worker
    try:
        rows = [bench_decode(blobs, rounds=2 if quick else 3)]
        prep_row, size_row, cache_path = bench_prepare(blobs, limit, rows[0]["reference"])
    finally:
        torch.set_num_threads(threads)
    rows += [prep_row, size_row]
    loader_rate = bench_loader(cache_path, batches=2 if quick else 6, rounds=2 if quick else 3)
    model_rate = bench_model_step(batch=16 if quick else 64, steps=1 if quick else 2)
    rows.append({"name": "loader_train_vs_model", "ours": round(loader_rate, 1), "reference": round(model_rate, 1),
                 "unit": "images/s (loader: 128x224 crops+flips+PCA+mean image, workers=0; model: paper "
                         "AlexNet SGD step)", "ratio": round(loader_rate / model_rate, 2)})
    shutil.rmtree(Path(cache_path).parent, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and rounds (about a minute)")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    args = parser.parse_args(argv)
    rows = run(args.quick)
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['name']:<30} ours {row['ours']:>10} | reference {row['reference']:>10} | "
                  f"ratio {row['ratio']:>6}  ({row['unit']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
