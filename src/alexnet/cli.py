"""The ``alexnet`` command: argument parsing and dispatch only.

Each area of the system contributes its subcommands through a ``register(subparsers)``
function in its own ``commands`` module (listed in :data:`COMMAND_MODULES`); the work
itself lives in the Python API those modules call.

User errors (:class:`alexnet.errors.UserError`, bad options) print one line,
``alexnet: error: ...``, and exit non-zero; nothing else is caught.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import locations
from .errors import UserError

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


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem and where to get help."""

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"{self.prog}: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="alexnet",
        description="AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012): the paper's system, end to end.",
    )
    parser.add_argument("--version", action="version", version=f"alexnet {locations.version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .runtime import configure_process
    configure_process()
    parser = build_parser()
    args = parser.parse_args(argv)
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
