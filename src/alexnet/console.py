"""What the program says to a person: one-line notes and warnings on stderr, and the first
line of an exception, the form every user-facing message takes.

Floor 1: imports nothing from alexnet. Progress bars are tqdm's, written to stderr and
shown only on a terminal; machine-readable output goes to files (alexnet.report).
"""

from __future__ import annotations

import sys


def info(message: str, quiet: bool = False) -> None:
    """``alexnet: MESSAGE`` on stderr, unless ``quiet``."""
    if not quiet:
        sys.stderr.write(f"alexnet: {message}\n")
        sys.stderr.flush()


def warn(message: str) -> None:
    """``alexnet: warning: MESSAGE`` on stderr."""
    sys.stderr.write(f"alexnet: warning: {message}\n")
    sys.stderr.flush()


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's text (its type name when it has none), at most ``limit`` chars."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def progress(total: int | None, desc: str, unit: str, *, initial: int = 0, disable: bool = False, leave: bool = True):
    """A tqdm bar (rate and ETA) on stderr, shown only when stderr is a terminal."""
    from tqdm import tqdm   # lazy: tqdm's import costs ~50 ms that one-shot commands never need
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, dynamic_ncols=True,
                file=sys.stderr, disable=disable or not sys.stderr.isatty())
