"""The ``alexnet`` command: argument parsing and dispatch only.

Each area of the system contributes its subcommands through a ``register(subparsers)``
function in its own ``commands`` module (listed in :data:`COMMAND_MODULES`); the work
itself lives in the Python API those modules call. Every flag declares its type and its
allowed values with a :class:`alexnet.options.Spec`, so argparse refuses a bad value while
it parses, before any work; docs/cli.md has the conventions every command follows.

Dotted settings (``--optim.lr 0.02``) are split off before argparse sees the arguments
(:func:`alexnet.options.split_settings`) and handed to the commands that train
(``set_defaults(takes_settings=True)``) as ``args.settings``; any other command refuses them.

User errors (:class:`alexnet.errors.UserError`, bad options) print one line,
``alexnet: error: ...``, and exit non-zero; nothing else is caught.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import locations
from .errors import UserError
from .options import OneLineParser, rename_hint, split_settings

COMMAND_MODULES = (
    "alexnet.models.commands",
    "alexnet.data.commands",
    "alexnet.train.commands",
    "alexnet.eval.commands",
    "alexnet.analysis.commands",
    "alexnet.perf.commands",
    "alexnet.export.commands",
    "alexnet.weights.commands",
    "alexnet.serve.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="alexnet", renamed={"--out": "-o/--output FILE (a file) or --out-dir DIR (a folder)",
                                 **{old: f"'experiment {old}'" for old in ("filters", "neighbors", "towers")}},
        description="AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012): the paper's system, end to end.",
        epilog="Conventions (docs/cli.md): -o/--output FILE writes a file, --out-dir DIR a folder, --json prints "
               "JSON on standard output, the commands that train take --section.key settings.")
    parser.add_argument("--version", action="version", version=f"alexnet {locations.version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line as a namespace, ``settings`` holding its dotted settings (as tokens)."""
    parser = build_parser()
    OneLineParser.hint = rename_hint(list(argv))
    try:
        rest, settings = split_settings(list(argv))
    except UserError as exc:
        parser.error(str(exc))
    args = parser.parse_args(rest)
    if settings and not getattr(args, "takes_settings", False):
        parser.error(f"{settings[0]}: --section.key settings are for the commands that train "
                     f"(train, experiment ablations), not '{args.command}'")
    args.settings = settings
    return args


def main(argv: list[str] | None = None) -> int:
    from .runtime import configure_process
    configure_process()
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        sys.stderr.write(f"alexnet: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("alexnet: interrupted\n")
        return 130
    except BrokenPipeError:
        return 141


if __name__ == "__main__":
    raise SystemExit(main())
