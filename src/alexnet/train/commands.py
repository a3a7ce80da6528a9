"""CLI: ``alexnet train [CONFIG] [--resume RUN_DIR] [--init-from CKPT] [--quiet] [--section.key VALUE ...]``.

Dotted settings may stand anywhere among the ordinary arguments, with their value as the
next token or after ``=``; the CLI splits them off before argparse sees the rest
(:func:`alexnet.options.split_settings`) and :func:`alexnet.train.config.load_config` checks
each against its declaration, before any work.
"""

from __future__ import annotations

import argparse
import signal

from ..errors import UserError
from ..locations import preset_files
from ..options import OneLineParser, Spec, split_settings
from .config import DEFAULT_PRESET, load_config

DESCRIPTION = ("Train with the paper's recipe scaled by a preset (presets: {presets}). Change any setting with "
               "a dotted option, e.g. --optim.lr 0.02 --train.epochs 5 --model.kwargs.lrn false (docs/training.md "
               "lists them all); train on your own images with --data.source FOLDER. The run folder "
               "gets the resolved config, checkpoints (every epoch and best), JSONL metrics, plots, summary.json "
               "and report.md. Ctrl-C saves a checkpoint; continue with --resume RUN_DIR.")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", type=Spec(path="preset"),
                   help="preset name or TOML file (default: fashion-mnist)")
    p.add_argument("--resume", metavar="RUN_DIR", type=Spec(path="run", special=("auto",)),
                   help="continue the run in RUN_DIR from its last checkpoint; 'auto' (with a fixed --run.name): "
                        "continue that run if it has a checkpoint, else start it - the same command then survives "
                        "restarts (torchrun --max-restarts)")
    p.add_argument("--init-from", metavar="CKPT", type=Spec(path="checkpoint"),
                   help="fine-tune: start from the layers of CKPT that match by name and shape (the same as "
                        "--train.init_from CKPT; see docs/finetuning.md)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or status lines")


def parse_train_args(argv: list[str], prog: str = "alexnet train") -> argparse.Namespace:
    """``argv`` (what follows ``train``) -> namespace with config, resume, init_from, quiet and settings."""
    parser = OneLineParser(prog=prog)
    add_train_arguments(parser)
    try:
        rest, settings = split_settings(list(argv))
    except UserError as exc:
        parser.error(str(exc))
    args = parser.parse_args(rest)
    args.settings = settings
    return args


def _train_command(args) -> int:
    from .trainer import train   # lazy: the trainer imports torch (~1 s) that other commands never need
    settings = list(args.settings)
    if args.quiet:
        settings += ["--run.progress", "false"]
    if args.init_from:
        if args.resume:
            raise UserError(f"--init-from {args.init_from}: a resumed run continues from its own checkpoint; "
                            f"give --init-from to a fresh run only")
        settings += ["--train.init_from", args.init_from]
    if args.resume == "auto":        # = --run.resume auto: the folder is RUN.OUT/RUN.NAME of the config
        result = train(load_config(args.config, settings + ["--run.resume", "auto"]))
    elif args.resume:
        if args.config:
            raise UserError(f"{args.config}: give either a config or --resume RUN_DIR, not both "
                            f"(a resumed run uses the config saved in its folder)")
        result = train(resume=args.resume, overrides=settings or None)
    else:
        result = train(load_config(args.config, settings))
    if result.interrupted:
        return 128 + signal.SIGTERM if result.summary.get("signal") == "SIGTERM" else 130
    return 0


def register(sub) -> None:
    presets = ", ".join(f"{n} (default)" if n == DEFAULT_PRESET else n for n in preset_files())
    p = sub.add_parser("train", help="train a model from a preset (default: fashion-mnist) and write a run folder",
                       description=DESCRIPTION.format(presets=presets))
    add_train_arguments(p)
    p.set_defaults(func=_train_command, takes_settings=True)
