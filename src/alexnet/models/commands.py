"""CLI: ``alexnet models`` and ``alexnet summary``."""

from __future__ import annotations

import json
import re

from ..errors import UserError
from ..options import Spec
from .registry import MODELS, build_model, get_model_info, list_models
from .summary import format_table, layer_table, rows_as_dicts, totals


def parse_input_size(text: str) -> tuple[int, int, int]:
    """'3x224x224' -> (3, 224, 224); also accepts 'CxS' shorthand for square inputs ('1x28')."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)(?:\s*[xX,]\s*(\d+))?\s*", text)
    if not match:
        raise UserError(f"--input {text!r}: expected CxHxW, e.g. 3x224x224 (or CxS for a square image, e.g. 1x28)")
    c, h, w = match.group(1), match.group(2), match.group(3) or match.group(2)
    size = (int(c), int(h), int(w))
    if min(size) < 1:
        raise UserError(f"--input {text!r}: every dimension must be at least 1")
    return size


def _models(args) -> int:
    for name in list_models():
        info = MODELS[name]
        c, h, w = info.input_size
        print(f"{name:<14} {info.params_1000:>12,} params  input {c}x{h}x{w} (min {info.min_input} px)  {info.summary}")
    return 0


def _summary(args) -> int:
    info = get_model_info(args.model)
    size = parse_input_size(args.input) if args.input else info.input_size
    if min(size[1:]) < info.min_input:
        raise UserError(f"--input {args.input}: {args.model} needs images of at least {info.min_input}x{info.min_input} px")
    model = build_model(args.model, num_classes=args.num_classes, in_channels=size[0])
    rows = layer_table(model, size)
    if args.json:
        print(json.dumps({"model": args.model, "input": size, "num_classes": args.num_classes,
                          "layers": rows_as_dicts(rows), "totals": totals(rows)}, indent=2))
    else:
        print(format_table(rows, title=f"{args.model}  input {'x'.join(map(str, size))}  {args.num_classes} classes"))
        if info.deviations:
            print("\ndepartures from the paper: " + "; ".join(info.deviations))
    return 0


def register(sub) -> None:
    p = sub.add_parser("models", help="list the registered models with their parameter counts",
                       description="List every registered model: parameters at 1000 classes, input size, source.")
    p.set_defaults(func=_models)

    p = sub.add_parser("summary", help="print a model's layer table (shapes, parameters, multiply-adds, neurons)",
                       description="Print the layer table of MODEL: per layer output shape, parameters, "
                                   "multiply-adds and neurons, with totals.")
    p.add_argument("model", choices=list_models(), metavar="MODEL", help=f"model name ({', '.join(list_models())})")
    p.add_argument("--input", metavar="CxHxW", type=Spec(pattern=r"\s*\d+\s*[xX,]\s*\d+(\s*[xX,]\s*\d+)?\s*",
                                                         what="CxHxW or CxS, e.g. 3x224x224"), help="input size, e.g. 3x224x224 (default: the model's own)")
    p.add_argument("--num-classes", type=Spec(int, ge=1), default=1000, metavar="N", help="classes in fc8 (default 1000)")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(func=_summary)
