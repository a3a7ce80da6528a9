"""The commands in README.md and docs/*.md, read the way a user reads them.

Rules (docs/architecture.md says the same to writers):

* Every fenced code block is a block of commands when one of its lines starts with a
  command (``alexnet``, ``torchrun``, ``bash``, ``python``, ``.venv/bin/...``,
  ``source .venv/``, ``tensorboard``, or a file tool: ``mkdir``, ``tar``, ``cp``, ``curl``). Each such line runs, in document order, in one sandbox per document, so
  a later command may use what an earlier one made (``runs/demo`` after a training run).
* When a block holds a ``$ `` prompt, only its ``$`` lines are commands and the rest is
  their output.
* The line just above the opening fence may mark the block:
  ``<!-- illustrative -->`` - a synopsis or a sketch, not run;
  ``<!-- needs: REASON -->`` - run only where REASON holds (``gpu``, ``ilsvrc-2012``,
  ``internet``, ``cluster``); here it is skipped, and the reason is shown.
* A command that runs names real things: a placeholder (``runs/NAME``, ``CKPT``, ``[--flag]``)
  belongs in an illustrative block.
* A trailing ``# comment`` is the reader's, not the shell's. A line ending in ``\\`` goes on
  on the next line.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

PROGRAMS = ("alexnet", "torchrun", "bash", "python", "python3", ".venv/bin/", "source .venv/", "tensorboard",
            "scripts/")                                 # the repository's scripts, named by their path
FILE_TOOLS = ("mkdir", "tar", "cp", "curl")          # run by the shell, as written
PLACEHOLDER = re.compile(r"^\[|(^|[/=])[A-Z][A-Z0-9_]{2,}(/|$)|\.\.\.\]?$")
ENV_PREFIX = re.compile(r"^(?:[A-Za-z_]\w*=\S*\s+)+")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
MARK = re.compile(r"^<!--\s*(illustrative|needs:\s*([\w.-]+(?:\s*,\s*[\w.-]+)*))\s*-->$")


@dataclass
class Command:
    doc: str
    line: int                 # 1-based line of the command in its document
    text: str                 # as the shell reads it, quoted (continuations joined, comment kept out)
    argv: list[str]
    source: str = ""          # as written (continuations joined), for the shell
    needs: tuple[str, ...] = ()


@dataclass
class Block:
    doc: str
    line: int                 # the opening fence's line
    lines: list[tuple[int, str]] = field(default_factory=list)
    mark: str | None = None   # "illustrative", "needs: ...", or None


def is_command(text: str) -> bool:
    text = text.strip()
    if text.startswith("$ "):
        text = text[2:].lstrip()
    text = ENV_PREFIX.sub("", text)             # VAR=value ... command
    return any(text == p.rstrip("/") or text.startswith(p if p.endswith(("/", " ")) else p + " ")
               for p in PROGRAMS + FILE_TOOLS)


def placeholders(argv: list[str]) -> list[str]:
    """The words of a command that stand for something the reader supplies (``runs/NAME``, ``[--x]``)."""
    return [a for a in argv if PLACEHOLDER.search(a)]


def blocks(path: Path, root: Path) -> list[Block]:
    """Every fenced block of a markdown file, with the marker above it."""
    doc = path.relative_to(root).as_posix()
    out: list[Block] = []
    current: Block | None = None
    previous = ""
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if current is None:
            if FENCE.match(raw):
                mark = MARK.match(previous.strip())
                current = Block(doc, number, mark=mark.group(1) if mark else None)
            elif raw.strip():
                previous = raw
            continue
        if raw.strip().startswith("```"):
            out.append(current)
            current, previous = None, ""
            continue
        current.lines.append((number, raw))
    return out


def commands(block: Block) -> list[Command]:
    """The commands of one block (none for an illustrative or a non-command block)."""
    if block.mark == "illustrative" or not any(is_command(t) for _, t in block.lines):
        return []
    needs = tuple(n.strip() for n in block.mark.split(":", 1)[1].split(",")) if block.mark else ()
    prompt = any(t.lstrip().startswith("$ ") for _, t in block.lines)
    found: list[Command] = []
    pending: tuple[int, str] | None = None
    for number, raw in block.lines:
        text = raw.strip()
        if pending is None:
            if prompt:
                if not text.startswith("$ "):
                    continue                      # output shown under a prompt
                text = text[2:].lstrip()
            if not text or text.startswith("#"):
                continue
            if not is_command(text) and not needs:       # a block not run here may use any shell form
                raise ValueError(f"{block.doc}:{number}: {text[:60]!r} is not a command, in a block of commands: "
                                 f"show output under '$ ' prompts, or mark the block <!-- illustrative -->")
            pending = (number, "")
        start, sofar = pending
        sofar = f"{sofar} {text}".strip()
        if sofar.endswith("\\"):
            pending = (start, sofar[:-1].rstrip())
            continue
        pending = None
        argv = shlex.split(sofar, comments=True)
        shown = " ".join(shlex.quote(a) for a in argv)
        found.append(Command(block.doc, start, shown, argv, needs=needs, source=sofar))
    if pending is not None:
        raise ValueError(f"{block.doc}:{pending[0]}: a command ends in a line continuation")
    return found


def document_commands(path: Path, root: Path) -> list[Command]:
    return [c for b in blocks(path, root) for c in commands(b)]
