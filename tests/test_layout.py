"""The package's layout stays true: import floors that only point down, no circles, imports at the top.

The floors (docs/architecture.md), lowest first. A module may import from a lower floor
and from its own package, never from a higher floor or from another package of its own
floor. The rule is read from the source with ``ast`` (every ``import`` statement,
wherever it is), so a lazy import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "alexnet"

FLOORS: list[set[str]] = [
    {"errors"},                                                     # the one user-error type
    {"console", "signals", "runtime", "locations", "files"},        # basics
    {"report", "options"},          # logs, tables, plots (atomic writes); one declaration per option, the one-line parser
    {"models"},
    {"data"},
    {"checkpoint"},
    {"fastpath", "weights"},   # weights: the importers (checkpoint, data, models below them)
    {"eval"},
    {"train"},
    {"analysis", "perf", "export", "serve"},
    {"entry"},      # cli.py, __main__.py and the package root's re-exports
]
FLOOR_OF = {unit: level for level, units in enumerate(FLOORS) for unit in units}

# Where an import inside a function is allowed: command modules build the whole CLI parser on
# every invocation, so they import their implementation when a command runs; the entry point
# configures the allocator before anything heavy is imported.
LAZY_ALLOWED = {"cli.py"}


def unit_of(module: str) -> str:
    """``alexnet.data.cache`` -> ``data``; ``alexnet``, ``alexnet.cli``, ``alexnet.__main__`` -> ``entry``."""
    parts = module.split(".")
    unit = parts[1] if len(parts) > 1 else "__init__"
    return "entry" if unit in ("cli", "__main__", "__init__") else unit


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, source: str | None = None) -> list[tuple[int, str, bool]]:
    """(line, absolute alexnet module, inside a function) for every alexnet import in ``path``
    (its text, or ``source`` read as if it were that file)."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(sub) for sub in ast.walk(node) if isinstance(sub, (ast.Import, ast.ImportFrom)))
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from . import checkpoint``: each name may itself be a module
            targets = [f"{mod}.{a.name}" if (SRC.parent / (mod.replace('.', '/') + '/' + a.name)).exists()
                       or (SRC.parent / (mod.replace('.', '/') + '/' + a.name + '.py')).exists() else mod
                       for a in node.names]
        for t in targets:
            if t == "alexnet" or t.startswith("alexnet."):
                found.append((node.lineno, t, id(node) in inside))
    return found


MODULES = sorted(p for p in SRC.rglob("*.py"))


def test_every_package_has_a_floor():
    units = {unit_of(module_name(p)) for p in MODULES}
    assert units - set(FLOOR_OF) == set(), "give each new module or package a floor in FLOORS (and docs/architecture.md)"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down_only(path):
    here = unit_of(module_name(path))
    bad = []
    for line, target, _ in imported_modules(path):
        there = unit_of(target)
        if there == here:
            continue
        if FLOOR_OF[there] >= FLOOR_OF[here]:
            bad.append(f"line {line}: imports {target} (floor {FLOOR_OF[there]}: {there}) from floor {FLOOR_OF[here]} ({here})")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_cross_package_imports_are_at_the_top(path):
    if path.name == "commands.py" or path.name in LAZY_ALLOWED:
        return
    here = unit_of(module_name(path))
    lazy = [f"line {line}: {target}" for line, target, in_function in imported_modules(path)
            if in_function and unit_of(target) != here]
    assert not lazy, "move these imports to the top of the file:\n" + "\n".join(lazy)


def test_no_import_cycles_between_modules():
    graph = {module_name(p): {t for _, t, _ in imported_modules(p)} for p in MODULES}
    graph = {m: {t for t in deps if t in graph and t != m} for m, deps in graph.items()}
    # A package's __init__ re-exporting its own modules is not a cycle of mechanisms.
    for m in graph:
        graph[m] = {t for t in graph[m] if not (t != m and m.startswith(t + ".") and t.count(".") >= 1)}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_checker_sees_a_violation():
    """The rule itself can fail: an upward import written in a module of ``data`` is reported."""
    found = imported_modules(SRC / "data" / "_layout_probe.py", source="def f():\n    from ..train import config\n")
    assert found == [(2, "alexnet.train", True)] or found == [(2, "alexnet.train.config", True)]
    assert FLOOR_OF[unit_of(found[0][1])] > FLOOR_OF["data"]


def test_the_architecture_doc_shows_these_floors():
    """docs/architecture.md's floor table is this file's FLOORS, floor for floor."""
    doc = (SRC.parents[1] / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| (\d+) \| ([a-z_, ]+) \|", doc, flags=re.M)
    shown = {int(level): {u.strip() for u in units.split(",")} for level, units in rows}
    assert shown == dict(enumerate(FLOORS)), "update the floor table in docs/architecture.md"
