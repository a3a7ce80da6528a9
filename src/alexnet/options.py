"""One declaration per option: its type, its allowed values and its meaning, checked before any work.

Two kinds of option, one mechanism:

* a **setting** of the training configuration (``--optim.lr 0.02``, a key of a preset file) is a
  field of the dataclasses in :mod:`alexnet.train.config`, declared with :func:`setting`::

      lr: float = setting(0.01, ge=0, help="learning rate at the batch size of the preset")

* a **flag** of a command is an argparse argument whose ``type`` is a :class:`Spec`::

      p.add_argument("--top", type=Spec(int, ge=1), default=5, help="how many classes to show")

Either way the declaration says the type (the annotation, or the Spec's first argument), the
range (``ge``/``gt``/``le``/``lt``; numbers are finite), the choices, a pattern for names, or
what a path must be (:data:`PATH_KINDS`: an existing file, a checkpoint, a file or folder the
command may write...). :meth:`Spec.check` refuses anything else with one line naming the option,
the value and what is allowed (:class:`~alexnet.errors.UserError`); argparse applies a flag's
Spec while it parses, and :func:`alexnet.train.config.load_config` every setting's as it merges
it, so a bad value is refused before a run folder, a cache or a download exists.
``tests/test_options_schema.py`` reads these declarations to generate bad values for every
option of every command, so an option added later is covered without anyone remembering to.

Also here, because every command shares them: :func:`conform`, the one typed-value checker
(settings, model options), :class:`OneLineParser` (argparse with one-line usage errors) and
:func:`warn_once` for input that is legal but suspicious.
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import math
import os
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .console import warn
from .errors import UserError
from .locations import expand_source, preset_files

# What a path option must be. "" = not a path. An empty string always passes (it means "none"
# or "the default" wherever a path option may be empty).
PATH_KINDS = {
    "file": "an existing file",
    "dir": "an existing folder",
    "exists": "an existing file or folder",
    "checkpoint": "a checkpoint file or run folder",
    "output": "a file to write (its folder is created)",
    "out-dir": "a folder to write into (created if missing)",
    "cache": "a cache folder (an existing one, or one to create)",
    "run": "a run folder (holding config.toml)",
    "preset": "a preset name or a TOML file",
    "data": "a cache folder, or a source to prepare: an image folder, an archive or a dataset name",
}

DEVICE = dict(pattern=r"(cpu|cuda|mps|xpu|meta)(:\d+)?", what="a torch device: cpu, cuda, cuda:N, mps, xpu")
SPLIT = dict(pattern=r"[A-Za-z0-9_.-]+", what="a split name (train, val, test)")
NAME = dict(pattern=r"(?!\.\.?$)[^/\\]+", what="a name without / (a folder name)")


class Mismatch(Exception):
    """A value does not have the declared type (internal to :func:`conform`)."""


def conform(value: Any, kind: Any) -> Any:
    """``value`` as the annotated type ``kind`` (an int widened to float for a float), or Mismatch.

    The one typed-value checker: the settings of the configuration and the options a model
    builder takes (``alexnet.models.registry.check_model_options``) both go through it. A bool is
    never an int, a string never a bool (``"False"`` is truthy); unions take their first member
    that fits; lists and tuples are checked item by item.
    """
    if kind is None or kind is Any or kind is typing.Any:
        return value
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        for member in args:
            try:
                return conform(value, member)
            except Mismatch:
                continue
        raise Mismatch
    if kind is type(None):
        if value is None:
            return value
    elif kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple, collections.abc.Sequence) or kind in (list, tuple):
        if isinstance(value, (list, tuple)):
            if origin is tuple and args and args[-1] is not Ellipsis:
                if len(value) != len(args):
                    raise Mismatch
                return type(value)(conform(v, a) for v, a in zip(value, args, strict=True))
            return type(value)(conform(v, args[0]) for v in value) if args else value
    elif origin is dict or kind is dict:
        if isinstance(value, dict):
            return value
    elif isinstance(kind, type):
        if isinstance(value, kind):
            return value
    else:
        return value
    raise Mismatch


def type_name(kind: Any) -> str:
    """``int`` -> "an integer", ``list[int]`` -> "a list of integers", ``bool | str`` -> "true or false or a string"."""
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "none",
             dict: "a table of settings", list: "a list", tuple: "a list"}
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin in (tuple, list, collections.abc.Sequence):
        n = f"{len(args)} " if origin is tuple and args and args[-1] is not Ellipsis else ""
        item = type_name(args[0]) if args else "values"
        plural = {"an integer": "integers", "a number": "numbers", "a string": "strings",
                  "true or false": "true/false values"}.get(item, item)
        return f"a list of {n}{plural}"
    if origin is dict:
        return names[dict]
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def shown(value: Any) -> str:
    """A value as a user typed it: TOML's ``true``/``false``, strings quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _fmt(number: float) -> str:
    return f"{number:g}" if isinstance(number, float) else str(number)


@dataclass(frozen=True)
class Spec:
    """What one option accepts. Called with a string (argparse's ``type=``), it parses and checks it."""

    type: Any = str                 # an annotation: bool, int, float, str, list[int], bool | str, ...
    ge: float | None = None         # numbers (and each number of a list): value >= ge
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple = ()             # the only values allowed
    pattern: str = ""               # a string must match it whole (device names, run names)
    path: str = ""                  # one of PATH_KINDS: what a path must be, checked on disk
    special: tuple = ()             # values allowed besides the rules ("auto", "native", "" for none)
    what: str = ""                  # the allowed values in words, where the rules above say it badly
    help: str = ""                  # what the option means (config settings; a flag keeps argparse's help)

    def __post_init__(self):
        if self.path and self.path not in PATH_KINDS:
            raise ValueError(f"unknown path kind {self.path!r} (known: {', '.join(PATH_KINDS)})")

    # ------------------------------------------------------------------ what is allowed

    def describe(self) -> str:
        """What the option allows, in words: "a number >= 0", "an integer in [0, 1)", "one of center, ten"."""
        if self.what:
            return self.what
        text = self._rules()
        return text + "".join(f" or {c!r}" for c in self.special if c != "")

    def _rules(self) -> str:
        if self.choices:
            return "one of " + ", ".join(shown(c) if not isinstance(c, str) else c or '""' for c in self.choices)
        if self.path:
            return PATH_KINDS[self.path]
        text = "a finite number" if self.type is float else type_name(self.type)
        low = (f"[{_fmt(self.ge)}" if self.ge is not None else f"({_fmt(self.gt)}" if self.gt is not None else None)
        high = (f"{_fmt(self.le)}]" if self.le is not None else f"{_fmt(self.lt)})" if self.lt is not None else None)
        if low and high:
            text += f" in {low}, {high}"
        elif low:
            text += f" {'>=' if self.ge is not None else '>'} {_fmt(self.ge if self.ge is not None else self.gt)}"
        elif high:
            text += f" {'<=' if self.le is not None else '<'} {_fmt(self.le if self.le is not None else self.lt)}"
        if self.pattern:
            text += f" matching {self.pattern}"
        return text

    def _numbers(self, value: Any) -> list:
        if isinstance(value, (list, tuple)):
            return [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []

    def problem(self, value: Any) -> tuple[Any, str | None]:
        """(the value as its declared type, None) or (value, what is wrong with it)."""
        if any(value == v and type(value) is type(v) for v in self.special):
            return value, None
        try:
            value = conform(value, self.type)
        except Mismatch:
            return value, f"expected {self.describe()}"
        items = value if isinstance(value, (list, tuple)) else [value]
        if self.choices and not all(any(v == c and type(v) is type(c) for c in self.choices) for v in items):
            return value, f"expected {self.describe()}"
        for number in self._numbers(value):
            bad = (not math.isfinite(number) or (self.ge is not None and number < self.ge)
                   or (self.gt is not None and number <= self.gt) or (self.le is not None and number > self.le)
                   or (self.lt is not None and number >= self.lt))
            if bad:
                return value, f"expected {self.describe()}"
        strings = value if isinstance(value, (list, tuple)) else [value]
        if self.pattern and any(isinstance(v, str) and not re.fullmatch(self.pattern, v) for v in strings):
            return value, f"expected {self.describe()}"
        if self.path and isinstance(value, str):
            trouble = path_problem(self.path, value)
            if trouble:
                return value, trouble
        return value, None

    def check(self, value: Any, name: str) -> Any:
        """``value`` as its declared type, or UserError: ``NAME: got VALUE, expected WHAT``."""
        value, trouble = self.problem(value)
        if trouble:
            raise UserError(f"{name}: {_got(value, trouble)}")
        return value

    # ------------------------------------------------------------------ argparse

    def parse(self, text: str) -> Any:
        """A command-line string as the declared type (Mismatch when it is not one); a list is
        written comma-separated (``0.003,0.01``)."""
        if text in self.special:
            return text
        kind, args = self.type, typing.get_args(self.type)
        if typing.get_origin(kind) is list:
            items = [t.strip() for t in text.split(",") if t.strip()]
            if not items:
                raise Mismatch
            return [dataclasses.replace(self, type=args[0] if args else str).parse(t) for t in items]
        try:
            if kind is int:
                return int(text)
            if kind is float:
                return float(text)
            if kind is bool:
                return {"true": True, "false": False}[text.lower()]
        except (ValueError, KeyError):
            raise Mismatch from None
        return text

    def __call__(self, text: str) -> Any:
        try:
            value = self.parse(text)
        except Mismatch:
            raise argparse.ArgumentTypeError(f"got {text!r}, expected {self.describe()}") from None
        value, trouble = self.problem(value)
        if trouble:
            raise argparse.ArgumentTypeError(_got(text, trouble))
        return value

    @property
    def __name__(self) -> str:     # argparse names a type by it in some messages
        return type_name(self.type)


def _got(value: Any, trouble: str) -> str:
    return trouble if not trouble.startswith("expected") else f"got {shown(value)}, {trouble}"


# ----------------------------------------------------------------------------- paths

def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable_place(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (missing folders included), or None."""
    base = _nearest_existing(folder)
    if not base.is_dir():
        return f"{base} is a file, not a folder"
    if not os.access(base, os.W_OK | os.X_OK):
        return f"cannot write in {base} (permission denied)"
    return None


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """What a file given as a checkpoint really is, when it is a format the importers read: a PyTorch
    pickle (torchvision's .pth) or a Caffe model says how to import it. None for anything else."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return None
    # safetensors: an 8-byte little-endian header length (any first byte, 0x80 included), then "{".
    if head[8:9] == b"{":
        return None
    if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        return (f"{path} is a PyTorch pickle (a .pth state dict), not an alexnet checkpoint: import it first with "
                f"'alexnet import torchvision {path} -o {path.with_suffix('.safetensors').name}'")
    if path.suffix == ".caffemodel":
        return (f"{path} is a Caffe model, not an alexnet checkpoint: import it first with "
                f"'alexnet import caffe {path} -o {path.with_suffix('.safetensors').name}'")
    return None


def path_problem(kind: str, text: str) -> str | None:
    """Why ``text`` is not a path of ``kind`` (one of :data:`PATH_KINDS`), in words naming it; None when it is."""
    if not text:
        return f"got '', expected {PATH_KINDS[kind]}"
    path = Path(os.path.expanduser(text))
    if kind == "preset":
        names = preset_files()
        if path.is_file() or text.removesuffix(".toml") in names:
            return None
        return f"{text}: no such preset or TOML file (presets: {', '.join(names)})"
    if kind == "data":
        expanded = Path(os.path.expanduser(expand_source(text)))
        looks_like_path = os.sep in text or text.startswith(".") or "." in Path(text).name
        if looks_like_path and not expanded.exists():
            return f"{text}: no such file or folder"
        return None
    if kind == "run":
        if not path.is_dir():
            return f"{text}: no such run folder"
        if not (path / "config.toml").is_file():
            return f"{text}: not a run folder (no config.toml)"
        return None
    if kind in ("file", "dir", "exists", "checkpoint"):
        if not path.exists():
            return f"{text}: no such {'folder' if kind == 'dir' else 'file' if kind == 'file' else 'file or folder'}"
        if kind == "file" and not path.is_file():
            return f"{text} is a folder, not a file"
        if kind == "dir" and not path.is_dir():
            return f"{text} is a file, not a folder"
        if kind == "checkpoint":
            if path.is_dir():
                if any(path.glob("*.npy")) and not any(path.glob("*.safetensors")):
                    return (f"{text} holds .npy files, not a checkpoint: import theano_alexnet weights first "
                            f"with 'alexnet import theano-alexnet {text} -o theano.safetensors'")
                return None
            return checkpoint_problem(path)
        return None
    if kind == "output":
        if path.is_dir():
            return f"{text} is a folder; give a file name"
        if path.exists() and not os.access(path, os.W_OK):
            return f"cannot overwrite {text} (permission denied)"
        trouble = _writable_place(path.parent)
        return f"cannot write {text}: {trouble}" if trouble else None
    if kind in ("out-dir", "cache"):
        if path.exists() and not path.is_dir():
            return f"{text} is a file, not a folder"
        if kind == "cache" and path.is_dir():
            return None             # an existing cache is read, and may be read-only
        trouble = _writable_place(path)
        return f"cannot write in {text}: {trouble}" if trouble else None
    raise ValueError(kind)


def output_file(path: str | os.PathLike) -> Path:
    """``path`` as a file about to be written, for the Python API as for ``-o``: refused in one line
    where it cannot be (a folder, under a file, not writable: :func:`path_problem`), its missing
    folders made (docs/cli.md, rule 1)."""
    trouble = path_problem("output", str(path))
    if trouble:
        raise UserError(trouble)
    make_parents(path)
    return Path(os.path.expanduser(str(path)))


def make_parents(*paths: str | os.PathLike | None) -> None:
    """Create the folders output files go in (their Spec has checked that this can be done)."""
    for p in paths:
        if p:
            Path(p).expanduser().parent.mkdir(parents=True, exist_ok=True)


# ----------------------------------------------------------------------------- settings (dataclass fields)

def setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, help: str = "",
            **rules: Any) -> Any:
    """A dataclass field declared as an option: its default, its rules (the keyword arguments of
    :class:`Spec` but ``type``, which is the field's annotation) and its ``help``."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"spec": Spec(**rules, help=help)})


def spec_of(field: dataclasses.Field, hints: dict) -> Spec:
    """The Spec of a dataclass field: its declared rules with the field's annotation as the type."""
    declared = field.metadata.get("spec") or Spec()
    return dataclasses.replace(declared, type=hints[field.name])


def settings_of(cls: type, prefix: str = "") -> dict[str, Spec]:
    """Every setting of a (nested) dataclass by dotted key: ``{"optim.lr": Spec(float, ge=0, ...)}``."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Spec] = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            out.update(settings_of(kind, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = spec_of(f, hints)
    return out


# ----------------------------------------------------------------------------- argparse and warnings

class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem and where to get help; no abbreviations
    (``--out`` never silently means ``--out-dir``); and a command line holding a renamed flag or command
    is told its new name (``renamed={"--out": "--out-dir DIR"}`` on the parser that renamed it, docs/cli.md)."""

    renames: dict[str, dict[str, str]] = {}     # prog ("alexnet experiment ablations") -> {old: new}
    hint = ""                                   # for the command line being parsed: rename_hint()

    def __init__(self, *args, renamed: dict[str, str] | None = None, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        if renamed:
            OneLineParser.renames[self.prog] = dict(renamed)

    def error(self, message: str):  # noqa: D401 - argparse API
        top = self.prog.split()[0]
        sys.stderr.write(f"{top}: error: {message}{OneLineParser.hint} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def rename_hint(argv: list[str]) -> str:
    """`` (--epochs is now --train.epochs: docs/cli.md)`` when ``argv`` holds an old spelling of the
    command it names, else ""."""
    seen = {token.split("=", 1)[0] for token in argv}
    hints = [f"{old} is now {new}" for prog, table in OneLineParser.renames.items()
             if set(prog.split()[1:]) <= seen for old, new in table.items()
             if old in seen and (old.startswith("-") or argv[:1] == [old])]     # a command: as the first word
    return f" ({'; '.join(hints)}: docs/cli.md)" if hints else ""


def split_settings(args: list[str]) -> tuple[list[str], list[str]]:
    """Separate dotted settings (``--optim.lr 0.02`` / ``--optim.lr=0.02``) from a command's own arguments.

    argparse cannot take options it does not know with a separate value (it would read ``0.02``
    in ``--optim.lr 0.02`` as a positional argument), so the CLI splits them off first: they may
    stand anywhere among the ordinary arguments. UserError when one has no value."""
    rest, settings = [], []
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            rest += args[i:]
            break
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


_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """``alexnet: warning: MESSAGE``, once per process (legal but suspicious input)."""
    if message not in _WARNED:
        _WARNED.add(message)
        warn(message)
