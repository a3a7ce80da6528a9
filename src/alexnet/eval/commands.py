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
    from .predict import format_predictions, predict
    results = predict(args.checkpoint, args.images, topk=args.top, views=args.views, device=args.device)
    failed = [r for r in results if "error" in r]
    for r in failed:
        sys.stderr.write(f"alexnet: error: {r['error']}\n")
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        text = format_predictions(results)
        if text:
            print(text)
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
        "predict", help="top-5 classes with probabilities for image files",
        description="Classify image files with a trained checkpoint: the top classes with names and probabilities. "
                    "Each unreadable image gets one error line; the others are still predicted "
                    "(exit status 1 if some failed, 2 if all did).")
    p.add_argument("checkpoint", help="checkpoint file or run folder")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top", type=int, default=5, metavar="K", help="how many classes to show (default 5)")
    p.add_argument("--views", choices=("center", "ten"), default="center")
    p.add_argument("--device", help="e.g. cpu, cuda:0")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.add_argument("--panel", metavar="OUT.png", help="also draw the images with their predictions into a PNG")
    p.set_defaults(func=_predict)
