"""CLI: ``alexnet eval`` and ``alexnet predict``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..errors import UserError
from ..options import DEVICE, SPLIT, Spec, make_parents

CHECKPOINT = Spec(path="checkpoint")


def _eval(args) -> int:
    from .evaluate import evaluate, format_result
    checkpoints = [args.checkpoint] + list(args.ensemble or [])
    if args.out_dir is None:      # beside the first checkpoint: refuse now, not after the evaluation
        first = Path(args.checkpoint)
        folder = first if first.is_dir() else first.parent
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UserError(f"{folder}: cannot write the evaluation beside the checkpoint (permission denied); "
                            f"give --out-dir DIR")
    result = evaluate(checkpoints, args.data, views=args.views, split=args.split, batch_size=args.batch_size,
                      device=args.device, workers=args.workers, limit=args.limit, out=args.out_dir or "auto",
                      progress=not args.quiet, predictions=args.output)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "confusion"}, indent=2))
    else:
        print(format_result(result))
    return 0


def _predict(args) -> int:
    from .predict import format_predictions, predict, write_predictions_csv
    make_parents(args.panel, args.output)   # -o was checked by its Spec before any work
    results = predict(args.checkpoint, args.images, topk=args.top, views=args.views, device=args.device,
                      batch_size=args.batch_size, progress=True)
    failed = [r for r in results if "error" in r]
    for r in failed:
        sys.stderr.write(f"alexnet: error: {r['error']}\n")
    panel = None
    if args.panel:
        from .panels import prediction_panel
        ok = [r for r in results if "error" not in r]
        if ok:
            panel = str(prediction_panel(ok, args.panel) or args.panel)
    if args.output:
        path = write_predictions_csv(results, args.output, args.top)
        sys.stderr.write(f"alexnet: {len(results) - len(failed)} of {len(results)} image(s) predicted; "
                         f"one row per image in {path}\n")
    if args.json:        # standard output holds the JSON and nothing else
        print(json.dumps(results if panel is None else {"predictions": results, "panel": panel}, indent=2))
    else:
        text = "" if args.output else format_predictions(results)
        if text:
            print(text)
        if panel:
            print(f"panel: {panel}")
    if failed:
        return 2 if len(failed) == len(results) else 1
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="top-1/top-5 error of a checkpoint (or an ensemble), centre or 10-view",
        description="Evaluate CHECKPOINT (a .safetensors file or a run folder) on a prepared cache or a source "
                    "(prepared on first use): top-1 and top-5 error, per-class accuracy, confusion matrix PNG. "
                    "--views ten is the paper's test (4 corners + centre, and their mirrors, softmax averaged); "
                    "--ensemble averages the probabilities of several checkpoints (the paper's 5- and 7-CNN ensembles).")
    p.add_argument("checkpoint", type=CHECKPOINT, help="checkpoint file or run folder")
    p.add_argument("--data", required=True, metavar="CACHE_OR_SOURCE", type=Spec(path="data"),
                   help="cache folder, or a source to prepare")
    p.add_argument("--split", type=Spec(**SPLIT), help="split to evaluate (default: test, else val)")
    p.add_argument("--views", choices=("center", "ten"), default="center", help="centre crop or the paper's ten views")
    p.add_argument("--ensemble", nargs="+", metavar="CKPT", type=CHECKPOINT,
                   help="more checkpoints whose probabilities are averaged")
    p.add_argument("--batch-size", type=Spec(int, ge=1), default=100, metavar="N")
    p.add_argument("--limit", type=Spec(int, ge=0), default=0, metavar="N",
                   help="evaluate a seeded random subset of N images (0 = all)")
    p.add_argument("--workers", type=Spec(int, ge=0), default=2, metavar="N", help="loader processes")
    p.add_argument("--device", type=Spec(**DEVICE), help="e.g. cpu, cuda:0 (default: cuda when available)")
    p.add_argument("--out-dir", metavar="DIR", type=Spec(path="out-dir"),
                   help="where metrics.json, per_class.csv, confusion.png go (default: beside the checkpoint, "
                        "eval-SPLIT-VIEWS)")
    p.add_argument("-o", "--output", metavar="FILE", type=Spec(path="output"),
                   help="also write each image's top 5 to FILE: .csv (file, label, class/name/probability), or .txt "
                        "in the ILSVRC-2012 devkit's submission format; the only output for a split without labels "
                        "(the ILSVRC test set)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_eval)

    p = sub.add_parser(
        "predict", help="top-5 classes with probabilities for image files and folders",
        description="Classify image files (a folder: the images in it and below it) with a trained checkpoint, in "
                    "batches: the top classes with names and probabilities, printed or written as CSV (-o). "
                    "Each unreadable image gets one error line and is skipped; the others are still predicted "
                    "(exit status 1 if some were skipped, 2 if all were).")
    p.add_argument("checkpoint", type=CHECKPOINT, help="checkpoint file or run folder")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", type=Spec(pattern=r".+", what="an image file or folder"))
    p.add_argument("--top", type=Spec(int, ge=1), default=5, metavar="K", help="how many classes to show (default 5)")
    p.add_argument("-o", "--output", metavar="FILE.csv", type=Spec(path="output"),
                   help="write one CSV row per image (path, then class, name and probability of each of the top K, "
                        "then the error of an unreadable one)")
    p.add_argument("--batch-size", type=Spec(int, ge=1), default=32, metavar="N", help="images per batch (default 32)")
    p.add_argument("--views", choices=("center", "ten"), default="center")
    p.add_argument("--device", type=Spec(**DEVICE), help="e.g. cpu, cuda:0")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON (with --panel: "
                                                       "{predictions, panel})")
    p.add_argument("--panel", metavar="OUT.png", type=Spec(path="output"),
                   help="also draw the images with their predictions into a PNG")
    p.set_defaults(func=_predict)
