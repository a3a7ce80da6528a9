"""``alexnet bench``: the benchmark suite (see alexnet.perf.suite and docs/performance.md)."""

from __future__ import annotations

import sys

from ..errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="benchmark suite: our paths beside plain PyTorch and the machine's limit",
        description="Run every benchmark side by side with its plain-PyTorch reference in one run; "
                    "print medians, spread and ratios, and save them as JSON.")
    p.add_argument("--quick", action="store_true", help="smaller batch, fewer rounds (under 2 minutes on 2 cores)")
    p.add_argument("--json", metavar="OUT", help="write the report as JSON to OUT")
    p.add_argument("--batch", type=int, help="batch size (default 128, --quick 32)")
    p.add_argument("--image-size", type=int, help="input size in pixels (default 224)")
    p.add_argument("--rounds", type=int, help="timed rounds per benchmark (default 5, --quick 3)")
    p.add_argument("--only", help="comma-separated groups: limits,lrn,train,infer,scaling,data,memory,loop")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd variants (adds minutes)")
    p.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                   help="bfloat16 rows: auto = only when bfloat16 matmul is native (fast) here")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=run_bench)


def run_bench(args) -> int:
    from .suite import run_suite   # lazy: the suite imports torch (~1 s) that other commands never need
    for name in ("batch", "image_size", "rounds"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')}: must be at least 1, got {value}")
    if args.image_size is not None and args.image_size < 63:
        raise UserError(f"--image-size: the paper's network needs at least 63 pixels, got {args.image_size}")
    groups = tuple(g.strip() for g in args.only.split(",") if g.strip()) if args.only else None
    run_suite(quick=args.quick, json_out=args.json, batch=args.batch, image_size=args.image_size,
              rounds=args.rounds, groups=groups, device=args.device, compile=args.compile, bf16=args.bf16,
              progress=not args.quiet and sys.stderr.isatty())
    return 0
