"""CLI: ``alexnet runs [DIR] [--compare RUN ...]`` and ``alexnet serve CKPT``: watching runs, trying a model.

The implementations (alexnet.train.runs, alexnet.serve.app, and with them torch, Flask,
matplotlib) are imported inside the handlers: every ``alexnet`` invocation builds this parser.
"""

from __future__ import annotations

import json
import sys

from ..errors import UserError
from ..options import DEVICE, Spec


def _runs(args) -> int:
    from ..train.runs import (differing_settings, find_runs, format_differences, format_runs_table, plot_comparison,
                              resolve_runs)
    if not args.compare:
        if args.output:
            raise UserError("-o/--output: the plot is drawn only with --compare RUN RUN ...")
        runs = find_runs(args.dir)
        if args.json:
            print(json.dumps([r.to_dict() for r in runs], indent=2))
        elif runs:
            print(format_runs_table(runs))
        else:
            sys.stderr.write(f"alexnet: no run folders in {args.dir} (a run folder holds config.json)\n")
        return 0
    if len(args.compare) < 2:
        raise UserError("--compare: name at least two runs")
    out = args.output or "compare.png"
    runs = resolve_runs(args.compare, args.dir)
    differ = differing_settings(runs)
    path = plot_comparison(runs, out)
    if args.json:
        print(json.dumps({"runs": [r.to_dict() for r in runs], "differences": differ, "plot": str(path)}, indent=2))
    else:
        print(format_runs_table(runs))
        print()
        print(format_differences(runs, differ))
        sys.stderr.write(f"alexnet: curves of {len(runs)} runs in {path}\n")
    return 0


def _serve(args) -> int:
    from .app import Limits, serve
    serve(args.checkpoint, host=args.host, port=args.port, device=args.device,
          limits=Limits(max_upload_bytes=args.max_upload_mb * 2**20, max_pixels=args.max_pixels))
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "runs", help="a table of the training runs in a folder; --compare: their settings and curves",
        description="List the run folders in DIR (default: runs) and below it: model, data, epochs done, best "
                    "validation top-1 / top-5 error and status (running, finished, interrupted, crashed). "
                    "--compare RUN RUN ... prints the settings that differ between them and draws their curves "
                    "into one PNG (-o, default compare.png).")
    p.add_argument("dir", nargs="?", default="runs", metavar="DIR", type=Spec(path="dir"),
                   help="folder of run folders (default: runs)")
    p.add_argument("--compare", nargs="+", metavar="RUN", type=Spec(pattern=r".+", what="a run folder or a name under DIR"),
                   help="runs to compare: run folders, or names under DIR")
    p.add_argument("-o", "--output", metavar="FILE.png", type=Spec(path="output"),
                   help="with --compare: the PNG to draw (default compare.png)")
    p.add_argument("--json", action="store_true", help="print the table (or the comparison) as JSON")
    p.set_defaults(func=_runs)

    p = sub.add_parser(
        "serve", help="a web page (and JSON API) to try a model on images, with its kernels and run curves",
        description="Serve CHECKPOINT (a .safetensors file or a run folder) on http://HOST:PORT/: a page to "
                    "choose or drop an image and see the top-5 classes, conv1's kernels and, for a run folder, "
                    "its curves, updating while it trains (the newest checkpoint is reloaded). JSON API: POST "
                    "/predict with the image as multipart field 'image'. Listens on 127.0.0.1 unless --host "
                    "says otherwise.")
    p.add_argument("checkpoint", type=Spec(path="checkpoint"), help="checkpoint file or run folder")
    p.add_argument("--host", default="127.0.0.1", type=Spec(pattern=r"[A-Za-z0-9_.:-]+", what="a host name or address"),
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=Spec(int, ge=0, le=65535), default=8000,
                   help="port (default 8000; 0: any free port, printed)")
    p.add_argument("--device", type=Spec(**DEVICE), help="e.g. cpu, cuda:0 (default: cuda when available)")
    p.add_argument("--max-upload-mb", type=Spec(int, ge=1), default=20, metavar="MB",
                   help="largest upload accepted, in MiB (default 20)")
    p.add_argument("--max-pixels", type=Spec(int, ge=1), default=50_000_000, metavar="N",
                   help="largest image accepted, width x height (default 50,000,000)")
    p.set_defaults(func=_serve)
