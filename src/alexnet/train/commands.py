"""CLI: ``alexnet train [CONFIG] [--resume RUN_DIR] [--section.key VALUE ...]``."""

from __future__ import annotations

import signal

from ..errors import UserError
from ..locations import preset_files
from .config import DEFAULT_PRESET


def _split_settings(args: list[str]) -> tuple[list[str], list[str]]:
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


def _with_settings(parser):
    """Make ``parser`` accept dotted settings anywhere; they land in ``args.settings``."""
    base = type(parser)

    def parse_known_args(self, args=None, namespace=None):
        try:
            rest, settings = _split_settings(list(args or []))
        except UserError as exc:
            self.error(str(exc))
        ns, extras = base.parse_known_args(self, rest, namespace)
        ns.settings = settings
        return ns, extras

    parser.__class__ = type("SettingsParser", (base,), {"parse_known_args": parse_known_args})
    return parser


def _train(args) -> int:
    from .config import load_config
    from .loop import train
    settings = list(args.settings)
    if args.quiet:
        settings += ["--run.progress", "false"]
    if args.resume:
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
    p = sub.add_parser(
        "train", help="train a model from a preset (default: fashion-mnist) and write a run folder",
        description="Train with the paper's recipe scaled by a preset (presets: "
                    + ", ".join(f"{n} (default)" if n == DEFAULT_PRESET else n for n in preset_files())
                    + "). Change any setting with a dotted option, e.g. "
                    "--optim.lr 0.02 --train.epochs 5 --model.kwargs.lrn false. The run folder gets the "
                    "resolved config, checkpoints (every epoch and best), JSONL metrics, plots, summary.json "
                    "and report.md. Ctrl-C saves a checkpoint; continue with --resume RUN_DIR.")
    p.add_argument("config", nargs="?", help="preset name or TOML file (default: fashion-mnist)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars or status lines")
    p.set_defaults(func=_train)
    _with_settings(p)
