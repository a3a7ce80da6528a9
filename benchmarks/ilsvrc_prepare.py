"""``python benchmarks/ilsvrc_prepare.py [--runs N] [--out-dir DIR]``: what ``alexnet prepare`` costs
per image on ILSVRC-2012's own layout, for the full-scale arithmetic in docs/data.md.

The 500 original ILSVRC-2012 JPEGs of ``../shared/data/imagenet-sample-500.tar`` are laid out
as an ``ILSVRC2012_img_train.tar`` of per-class tars (tests/ilsvrc_miniature.py) and prepared
at 256 px with ``--workers 1`` and ``2``, raw and JPEG. The figures are CPU time of
``prepare()`` (``getrusage`` of this process and its decoding workers), not wall time: on a
machine shared with other jobs, CPU time is what stays comparable. One JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import ilsvrc_miniature  # noqa: E402 - a test helper, found beside the benchmarks

from alexnet.data.prepare import prepare  # noqa: E402
from alexnet.locations import shared_dir  # noqa: E402


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out-dir", default=None, help="where the layout and the caches go (default: a temporary folder)")
    args = parser.parse_args(argv)
    sample = shared_dir() / "data" / "imagenet-sample-500.tar"
    if not sample.is_file():
        sys.exit(f"{sample}: not found (set ALEXNET_SHARED to the folder holding data/)")
    base = Path(args.out_dir or tempfile.mkdtemp(prefix="ilsvrc-prepare-"))
    train = base / "files" / "ILSVRC2012_img_train.tar"
    if not train.exists():
        ilsvrc_miniature.build(sample, base / "files", classes=100, train_per_class=5, val_per_class=0, test_images=0)
    prepare(str(train), base / "warm-up", workers=1, quiet=True, overwrite=True)   # imports and page cache warm
    for run in range(args.runs):
        for storage in ("raw", "jpeg"):
            for workers in (1, 2):
                out = base / f"cache-{storage}-{workers}"
                shutil.rmtree(out, ignore_errors=True)
                before = cpu_seconds()
                summary = prepare(str(train), out, workers=workers, storage=storage, quiet=True)
                used = cpu_seconds() - before
                images = summary.counts["train"]
                meta = json.loads((out / "meta.json").read_text())
                pixels = sum(f["bytes"] for name, f in meta["files"].items() if name.endswith((".u8", ".jpeg.bin")))
                print(json.dumps({"run": run, "format": storage, "workers": workers, "images": images,
                                  "cpu_s": round(used, 2), "images_per_cpu_s": round(images / used, 1),
                                  "bytes_per_image": round(pixels / images),
                                  "load": round(os.getloadavg()[0], 1)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
