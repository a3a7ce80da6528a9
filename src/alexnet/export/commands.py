"""CLI: ``alexnet export``."""

from __future__ import annotations

import json

from ..console import info
from ..options import Spec, make_parents
from . import FORMATS


def _export(args) -> int:
    from . import check_export, export_model
    make_parents(args.output)
    path, meta = export_model(args.checkpoint, args.format, args.output, preprocess=not args.raw_input)
    size_mb = path.stat().st_size / 1e6
    shape = "x".join(str(v) for v in meta["input_shape"])
    info(f"wrote {path} ({args.format}, {size_mb:.1f} MB): input {meta['input']!r} {shape}, "
         f"{meta['num_classes']} classes", quiet=args.quiet)
    result = check_export(path, args.checkpoint, args.format) if args.check else None
    if args.json:
        print(json.dumps({"path": str(path), "format": args.format, "input": meta["input"],
                          "input_shape": meta["input_shape"], "num_classes": meta["num_classes"],
                          **(result or {})}, indent=2))
    elif result is not None:
        print(f"{path}: max |logit difference| {result['max_abs_diff']:.3g} against PyTorch "
              f"(logits up to {result['max_abs_logit']:.3g}, relative {result['relative']:.2g}; "
              f"batches {', '.join(map(str, result['batch_sizes']))})")
    else:
        print(path)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="write a checkpoint as ONNX, TorchScript or a torch.export program",
        description="Export CHECKPOINT (a .safetensors file or a run folder) to a single file with a dynamic "
                    "batch size, the class names and the input description in its metadata. By default the "
                    "input is the centre crop's pixels (float32 N x C x crop x crop, RGB, 0..255) and the "
                    "graph subtracts the checkpoint's mean and applies its scale; --raw-input exports the "
                    "bare network. docs/export.md has the details and the measured agreement.")
    p.add_argument("checkpoint", type=Spec(path="checkpoint"), help="checkpoint file or run folder")
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx, torchscript or exported-program")
    p.add_argument("-o", "--output", metavar="FILE", type=Spec(path="output"),
                   help="output file (default: the checkpoint's name with .onnx, .pt or .pt2)")
    p.add_argument("--raw-input", action="store_true",
                   help="export the network alone: the input is already mean-subtracted and scaled")
    p.add_argument("--check", action="store_true",
                   help="run the written file against the PyTorch model at two batch sizes and print "
                        "the largest logit difference")
    p.add_argument("--json", action="store_true", help="print what was written (and, with --check, the "
                                                       "comparison) as JSON")
    p.add_argument("--quiet", action="store_true", help="no note on stderr")
    p.set_defaults(func=_export)
