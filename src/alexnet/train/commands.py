"""CLI: ``alexnet train [CONFIG] [--resume RUN_DIR] [--quiet] [--section.key VALUE ...]``.

Dotted settings may stand anywhere among the ordinary arguments, with their value as the
next token or after ``=``. argparse cannot take options it does not know with a separate
value (it would read ``0.02`` in ``--optim.lr 0.02`` as the CONFIG), so the command parses
in two passes: the ``train`` subcommand takes its arguments as they are, then
:func:`parse_train_args` splits off the dotted settings and gives the rest to an ordinary
parser. Unknown keys and bad values are reported by :func:`alexnet.train.config.load_config`.
"""

from __future__ import annotations

import argparse
import signal
import sys

from ..errors import UserError
from ..locations import preset_files
from .config import DEFAULT_PRESET, load_config

DESCRIPTION = ("Train with the paper's recipe scaled by a preset (presets: {presets}). Change any setting with "
               "a dotted option, e.g. --optim.lr 0.02 --train.epochs 5 --model.kwargs.lrn false. The run folder "
               "gets the resolved config, checkpoints (every epoch and best), JSONL metrics, plots, summary.json "
               "and report.md. Ctrl-C saves a checkpoint; continue with --resume RUN_DIR.")


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem and where to get help (as cli.py's)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"{self.prog}: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def split_settings(args: list[str]) -> tuple[list[str], list[str]]:
    """Separate dotted settings (``--optim.lr 0.02`` / ``--optim.lr=0.02``) from ordinary arguments."""
    rest, settings = [], []
    i = 0
    while i < len(args):
        token = args[i]
        if token.startswith("--") and "." in token.split("=", 1)[0]:
            settings.append(token)
            if "=" not in token:
                if i + 1 >= len(args):
                    raise UserError(f"{token}: missing value")
                settings.append(args[i + 1])
                i += 1
        else:
            rest.append(token)
        i += 1
    return rest, settings


def train_parser(prog: str = "alexnet train") -> argparse.ArgumentParser:
    presets = ", ".join(f"{n} (default)" if n == DEFAULT_PRESET else n for n in preset_files())
    p = _ArgumentParser(prog=prog, description=DESCRIPTION.format(presets=presets))
    p.add_argument("config", nargs="?", help="preset name or TOML file (default: fashion-mnist)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint; "
                   "'auto' (with a fixed --run.name): continue that run if it has a checkpoint, else start it - "
                   "the same command then survives restarts (torchrun --max-restarts)")
    p.add_argument("--init-from", metavar="CKPT", help="fine-tune from CKPT: its model and input normalisation, its "
                   "trained layers, a new output layer for the data's classes (the same as --train.init_from CKPT; "
                   "see docs/finetuning.md)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or status lines")
    return p


def parse_train_args(argv: list[str], prog: str = "alexnet train") -> argparse.Namespace:
    """``argv`` (what follows ``train``) -> namespace with config, resume, quiet and settings."""
    parser = train_parser(prog)
    try:
        rest, settings = split_settings(list(argv))
    except UserError as exc:
        parser.error(str(exc))
    args, unknown = parser.parse_known_args(rest)
    if unknown:     # worded as before the two passes: the program's own parser used to say it
        top = prog.split()[0]
        sys.stderr.write(f"{top}: error: unrecognized arguments: {' '.join(unknown)} (see '{top} --help')\n")
        raise SystemExit(2)
    args.settings = settings
    return args


def _train_command(args) -> int:
    from .trainer import train   # lazy: the trainer imports torch (~1 s) that other commands never need
    options = parse_train_args(args.train_argv, args.train_prog)
    settings = list(options.settings)
    if options.quiet:
        settings += ["--run.progress", "false"]
    if options.init_from:
        if options.resume:
            raise UserError(f"--init-from {options.init_from}: a resumed run continues from its own checkpoint; "
                            f"give --init-from to a fresh run only")
        settings += ["--train.init_from", options.init_from]
    if options.resume == "auto":        # = --run.resume auto: the folder is RUN.OUT/RUN.NAME of the config
        result = train(load_config(options.config, settings + ["--run.resume", "auto"]))
    elif options.resume:
        if options.config:
            raise UserError(f"{options.config}: give either a config or --resume RUN_DIR, not both "
                            f"(a resumed run uses the config saved in its folder)")
        result = train(resume=options.resume, overrides=settings or None)
    else:
        result = train(load_config(options.config, settings))
    if result.interrupted:
        return 128 + signal.SIGTERM if result.summary.get("signal") == "SIGTERM" else 130
    return 0


def register(sub) -> None:
    # The subcommand passes its arguments through untouched (no option prefix, no -h of its own):
    # parse_train_args parses them, help included, once the dotted settings are split off.
    p = sub.add_parser("train", help="train a model from a preset (default: fashion-mnist) and write a run folder",
                       prefix_chars="\0", add_help=False)
    p.add_argument("train_argv", nargs="*", metavar="ARGS")
    p.set_defaults(func=_train_command, train_prog=p.prog)
