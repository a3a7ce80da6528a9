"""CLI: ``alexnet eval`` and ``alexnet predict``."""

from __future__ import annotations

import json
import sys

from ..errors import UserError


def _eval(args) -> int:
    from .evaluate import evaluate, format_result
    checkpoints = [args.checkpoint] + list(args.ensemble or [])
    out = args.out or "auto"
    result = evaluate(checkpoints, args.data, views=args.views, split=args.split, batch_size=args.batch_size,
                      device=args.device, workers=args.workers, limit=args.limit, out=out,
                      progress=not args.quiet, predictions=args.output)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "confusion"}, indent=2))
    else:
        print(format_result(result))
    return 0


def _predict(args) -> int:
    from .predict import check_writable, format_predictions, predict, write_csv
    if args.output:
        check_writable(args.output)        # before any work: nothing half-written
    results = predict(args.checkpoint, args.images, topk=args.top, views=args.views, device=args.device,
                      batch_size=args.batch_size, progress=True)
    failed = [r for r in results if "error" in r]
    for r in failed:
        sys.stderr.write(f"alexnet: error: {r['error']}\n")
    if args.json:
        print(json.dumps(results, indent=2))
    elif not args.output:
        text = format_predictions(results)
        if text:
            print(text)
    if args.output:
        path = write_csv(results, args.output, args.top)
        sys.stderr.write(f"alexnet: {len(results) - len(failed)} of {len(results)} image(s) predicted; "
                         f"one row per image in {path}\n")
    if args.panel:
        try:
            from .panels import prediction_panel
        except ImportError:
            raise UserError("--panel: the drawing function alexnet.analysis.panels.prediction_panel is not available") from None
        ok = [r for r in results if "error" not in r]
        if ok:
            path = prediction_panel(ok, args.panel)
            print(f"panel: {path or args.panel}")
    if failed:
        return 2 if len(failed) == len(results) else 1
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


_positive_int.__name__ = "positive integer"     # argparse names the type in its error line


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="top-1/top-5 error of a checkpoint (or an ensemble), centre or 10-view",
        description="Evaluate CHECKPOINT (a .safetensors file or a run folder) on a prepared cache or a source "
                    "(prepared on first use): top-1 and top-5 error, per-class accuracy, confusion matrix PNG. "
                    "--views ten is the paper's test (4 corners + centre, and their mirrors, softmax averaged); "
                    "--ensemble averages the probabilities of several checkpoints (the paper's 5- and 7-CNN ensembles).")
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument("--data", required=True, metavar="CACHE_OR_SOURCE", help="cache folder, or a source to prepare")
    p.add_argument("--split", help="split to evaluate (default: test, else val)")
    p.add_argument("--views", choices=("center", "ten"), default="center", help="centre crop or the paper's ten views")
    p.add_argument("--ensemble", nargs="+", metavar="CKPT", help="more checkpoints whose probabilities are averaged")
    p.add_argument("--batch-size", type=int, default=100, metavar="N")
    p.add_argument("--limit", type=int, default=0, metavar="N", help="evaluate a seeded random subset of N images")
    p.add_argument("--workers", type=int, default=2, metavar="N")
    p.add_argument("--device", help="e.g. cpu, cuda:0 (default: cuda when available)")
    p.add_argument("--out", metavar="DIR", help="where metrics.json, per_class.csv, confusion.png go "
                                                "(default: beside the checkpoint, eval-SPLIT-VIEWS)")
    p.add_argument("-o", "--output", metavar="FILE",
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
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--top", type=_positive_int, default=5, metavar="K", help="how many classes to show (default 5)")
    p.add_argument("-o", "--output", "--csv", metavar="FILE.csv", help="write one CSV row per image (path, then "
                   "class, name and probability of each of the top K, then the error of an unreadable one)")
    p.add_argument("--batch-size", type=_positive_int, default=32, metavar="N", help="images per batch (default 32)")
    p.add_argument("--views", choices=("center", "ten"), default="center")
    p.add_argument("--device", help="e.g. cpu, cuda:0")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.add_argument("--panel", metavar="OUT.png", help="also draw the images with their predictions into a PNG")
    p.set_defaults(func=_predict)
