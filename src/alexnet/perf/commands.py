"""``alexnet bench``: the benchmark suite (see alexnet.perf.suite and docs/performance.md)."""

from __future__ import annotations

import json
import sys

from ..options import DEVICE, Spec, make_parents

# The suite's groups (alexnet.perf.suite.GROUPS; not imported here: the suite imports torch).
GROUPS = ("limits", "lrn", "train", "infer", "scaling", "data", "memory", "loop")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", renamed={"--json": "a switch (JSON on standard output); write the report with -o FILE"},
        help="benchmark suite: our paths beside plain PyTorch and the machine's limit",
        description="Run every benchmark side by side with its plain-PyTorch reference in one run; "
                    "print medians, spread and ratios (--json: as JSON), and save them with -o FILE.")
    p.add_argument("--quick", action="store_true", help="smaller batch, fewer rounds (under 2 minutes on 2 cores)")
    p.add_argument("-o", "--output", metavar="FILE", type=Spec(path="output"),
                   help="also write the report as JSON to FILE (updated after every group)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    p.add_argument("--batch", type=Spec(int, ge=1), help="batch size (default 128, --quick 32)")
    p.add_argument("--image-size", type=Spec(int, ge=63), help="input size in pixels (default 224; the paper's "
                                                               "network needs at least 63)")
    p.add_argument("--rounds", type=Spec(int, ge=1), help="timed rounds per benchmark (default 5, --quick 3)")
    p.add_argument("--only", type=Spec(list[str], choices=GROUPS), metavar="GROUPS",
                   help=f"comma-separated groups: {','.join(GROUPS)}")
    p.add_argument("--device", type=Spec(**DEVICE), help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd variants (adds minutes)")
    p.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                   help="bfloat16 rows: auto = only when bfloat16 matmul is native (fast) here")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=run_bench)


def run_bench(args) -> int:
    from .suite import format_table, run_suite   # lazy: the suite imports torch (~1 s) that other commands never need
    make_parents(args.output)
    report = run_suite(quick=args.quick, json_out=args.output, batch=args.batch, image_size=args.image_size,
                       rounds=args.rounds, groups=tuple(args.only) if args.only else None, device=args.device,
                       compile=args.compile, bf16=args.bf16, progress=not args.quiet and sys.stderr.isatty())
    print(json.dumps(report, indent=1) if args.json else format_table(report))
    return 0
