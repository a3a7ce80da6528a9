"""CLI: ``alexnet prepare SOURCE OUT`` and ``alexnet cache-info CACHE``."""

from __future__ import annotations

import json
import os

from ..console import info
from ..errors import UserError
from ..options import Spec, make_parents
from . import download
from .cache import open_cache, read_meta, verify_cache
from .resolve import default_cache_dir
from .sources import SHORTHANDS

DEFAULT_SIZE = 256  # the paper's


def _prepare(args) -> int:
    from .prepare import prepare
    source, out, size = args.source, args.out, args.size
    if args.download:
        dataset = download.resolve(source)
        if size is None:
            size = download.preset_size(dataset) or DEFAULT_SIZE
            if dataset.preset:
                info(f"--size {size}: the {dataset.preset} preset's (give --size to choose another)", args.quiet)
        if out is None:
            out = str(default_cache_dir(dataset.name, size))   # what resolve_cache(NAME) opens
            existing = read_meta(out) if os.path.isdir(out) else None
            if existing and existing.get("complete") and not args.overwrite:
                origin = (existing.get("source") or {}).get("location", "?")
                print(f"{out}: already prepared (from {origin}); nothing downloaded "
                      f"(give OUT, or --overwrite to rebuild it from the download)")
                return 0
        source = str(download.fetch(dataset, quiet=args.quiet))
    elif out is None:
        raise UserError("prepare: give OUT, the cache directory to create (it may be left out only with --download)")
    elif not os.path.exists(SHORTHANDS.get(source, source)):
        if download.known(source):
            raise UserError(f"{source}: no such file or directory; add --download to fetch "
                            f"{download.resolve(source).title} from its official source")
    make_parents(out)            # OUT itself is made by prepare, atomically; the folders above it here
    summary = prepare(source, out, size=size or DEFAULT_SIZE, storage=args.format, quality=args.quality,
                      skip_bad=args.skip_bad, workers=args.workers, quiet=args.quiet, labels=args.labels,
                      classes=args.classes, limit=args.limit, channels=args.channels, overwrite=args.overwrite)
    print(summary.line())
    return 0


def _info(args) -> int:
    if args.verify:
        checked = verify_cache(args.cache)
        print(f"{args.cache}: {checked} files match the SHA-256 checksums recorded when prepared")
        return 0
    cache = open_cache(args.cache)
    if args.json:
        meta = dict(cache.meta)
        print(json.dumps(meta, indent=1))
        return 0
    print(repr(cache))
    st = cache.stats
    if st:
        print("train statistics (0..255 pixel scale):")
        print(f"  channel mean {[round(float(v), 3) for v in st['channel_mean']]}")
        print(f"  channel std  {[round(float(v), 3) for v in st['channel_std']]}")
        print(f"  eigenvalues  {[round(float(v), 3) for v in st['eigval']]}")
    print(f"skipped {cache.meta.get('skipped', 0)}, ignored {cache.meta.get('ignored', 0)}, "
          f"warnings {cache.meta.get('warnings', 0)} (see the CSV files in {cache.path})")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "prepare", help="decode a dataset once into a memory-mapped cache with its train statistics",
        description="Decode every image of SOURCE once: short side rescaled to --size, central square crop "
                    "(the paper's preprocessing), stored as uint8 in OUT with labels, class names and the "
                    "train split's mean image, channel mean/std and RGB covariance eigen-decomposition. "
                    "SOURCE: an image folder tree (class folders, optionally under train/ val/ test/), a .tar or "
                    ".tar.gz of one, a tar of per-class tars, a folder holding the official ILSVRC-2012 files "
                    "(ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar, ILSVRC2012_devkit_t12.tar.gz: read in place, "
                    "labelled through the devkit), an ILSVRC-style flat val folder with --labels, the CIFAR-10/100 python or "
                    "binary tarball (or folder), an MNIST/Fashion-MNIST IDX folder, or 'fashion-mnist' "
                    "(= /usr/share/datasets/fashion-mnist). With --download, SOURCE names a dataset (cifar10, "
                    "fashion-mnist, imagewoof, imagenette, ...) fetched from its official source into "
                    "CACHE/downloads/ (checked against its published size and digests; partial downloads resume), "
                    "and OUT may be left out: CACHE/PRESET-SIZE, the cache 'alexnet train PRESET' reads. "
                    "Interrupted runs resume when re-run.")
    p.add_argument("source", type=Spec(path="data"), help="dataset folder, archive, or shorthand (fashion-mnist); with --download a dataset name")
    p.add_argument("out", nargs="?", type=Spec(path="out-dir"), help="cache directory to create (may be left out with --download)")
    p.add_argument("--download", action="store_true",
                   help="fetch SOURCE from its official source first: cifar10, fashion-mnist, imagewoof "
                        "(= imagewoof2-160), imagewoof2-320, imagewoof2, imagenette (= imagenette2-160), "
                        "imagenette2-320, imagenette2")
    p.add_argument("--size", default=None, metavar="S", type=Spec(int, ge=1, special=("native",)),
                   help="stored side in pixels (default 256, the paper's; with --download, the dataset's preset's: "
                        "cifar10 32, fashion-mnist 28, imagewoof 128); 'native' keeps CIFAR/IDX images as they are")
    p.add_argument("--format", default="raw", choices=("raw", "jpeg"),
                   help="raw uint8 (default; fastest to read) or jpeg (compact: re-encoded at --quality)")
    p.add_argument("--quality", type=Spec(int, ge=1, le=100), default=90, metavar="Q", help="JPEG quality for --format jpeg (default 90)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable/corrupt images, listing each with its reason in OUT/skipped.csv "
                        "(default: stop at the first one)")
    p.add_argument("--workers", type=Spec(int, ge=1), default=None, metavar="N", help="decoding processes (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-file messages")
    p.add_argument("--labels", metavar="FILE", type=Spec(path="file"),
                   help="labels of a flat image folder (ILSVRC val): one wnid or 0-based class index per line in "
                        "sorted file order, 'name label' lines, LOC_val_solution.csv, or the ILSVRC-2012 devkit "
                        "(ILSVRC2012_devkit_t12.tar.gz)")
    p.add_argument("--classes", metavar="FILE", type=Spec(path="file"),
                   help="the class list, in index order ('wnid', 'wnid name' or 'index wnid name' per line); "
                        "default: sorted class folder names")
    p.add_argument("--limit", type=Spec(int, ge=1), metavar="N", help="keep at most N images per class in each split (for quick runs)")
    p.add_argument("--channels", default="auto", choices=("auto", "1", "3"),
                   help="1 or 3; auto: the format's own (IDX 1, CIFAR 3), else 1 only if the images are grayscale")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it already exists")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("cache-info", help="describe a prepared cache (counts, classes, statistics); --verify checks it",
                       description="Print a prepared cache's splits, classes, size and train statistics. With "
                                   "--verify, re-read every file of the cache and compare it with the SHA-256 "
                                   "checksum 'alexnet prepare' recorded in meta.json (exit 2 naming the first "
                                   "damaged file).")
    p.add_argument("cache", type=Spec(path="dir"), help="cache directory written by 'alexnet prepare'")
    p.add_argument("--json", action="store_true", help="print meta.json")
    p.add_argument("--verify", action="store_true",
                   help="check every file against the checksums written by 'alexnet prepare' (reads the whole cache)")
    p.set_defaults(func=_info)
