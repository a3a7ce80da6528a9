"""Run the reliability suite and print (or write into docs/reliability.md) its figures.

    python -m tests.reliability.report                 # run tests/reliability, print the tables
    python -m tests.reliability.report --update-docs   # ... and rewrite the figures in docs/reliability.md
    python -m tests.reliability.report --from FILE     # tables from a ledger written earlier

Every test of the suite records each case it tries (helpers.record): the documented
outcome, what happened, whether that is the documented outcome ("survived") and how
many valid inputs were lost. The suite writes that ledger as JSON when
ALEXNET_RELIABILITY_REPORT names a file; this script sets it, runs pytest, and turns
the ledger into the tables of docs/reliability.md.

Counting: a *case* is one distinct input or fault (a row's ``key``); the same input
tried through several commands is one case with several *tries*, and it survived only
if every try did. ``--update-docs`` refuses a run in which pytest failed (or a ledger
that says so): the figures in the docs only ever come from a green run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "reliability.md"
START, END = "<!-- figures:start (python -m tests.reliability.report --update-docs) -->", "<!-- figures:end -->"


def run_suite(ledger: Path, pytest_args: list[str]) -> int:
    env = dict(os.environ, ALEXNET_RELIABILITY_REPORT=str(ledger))
    cmd = [sys.executable, "-m", "pytest", str(REPO / "tests" / "reliability"), "-q", "-p", "no:warnings", *pytest_args]
    return subprocess.call(cmd, cwd=REPO, env=env)


def _cell(text: str) -> str:
    text = re.sub(r"/tmp/pytest-of-[^/]+/pytest-\d+/", "<tmp>/", str(text))   # pytest's temporary folders
    return text.replace("|", "\\|").replace("\n", " ")


def cases(records: list[dict]) -> OrderedDict:
    """(area, key) -> the rows (tries) of that one input or fault, in ledger order."""
    out: OrderedDict[tuple, list[dict]] = OrderedDict()
    for r in records:
        out.setdefault((r["area"], r.get("key") or r["case"]), []).append(r)
    return out


def tables(records: list[dict]) -> str:
    areas: OrderedDict[str, list[list[dict]]] = OrderedDict()
    for (area, _), tries in cases(records).items():
        areas.setdefault(area, []).append(tries)
    lines = ["| area | cases tried | tries (case x command) | survived | not (known defects) | valid inputs lost |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    totals = [0, 0, 0, 0]
    for area, groups in areas.items():
        n, tries = len(groups), sum(len(g) for g in groups)
        ok = sum(all(r["survived"] for r in g) for g in groups)
        lost = sum(r["lost"] for g in groups for r in g)
        lines.append(f"| {area} | {n} | {tries} | {ok} | {n - ok} | {lost} |")
        totals = [totals[0] + n, totals[1] + tries, totals[2] + ok, totals[3] + lost]
    n, tries, ok, lost = totals
    lines.append(f"| **all** | **{n}** | **{tries}** | **{ok}** | **{n - ok}** | **{lost}** |")
    lines[:0] = [f"**{n} cases tried ({tries} tries), {ok} survived, {n - ok} not; valid inputs lost: {lost}.**", ""]
    lines += ["", "Every case:", "",
              "| area | case | command | expected | outcome | ok |", "| --- | --- | --- | --- | --- | :---: |"]
    for r in records:
        case = r["case"] + (f" ({r['detail']})" if r.get("detail") else "")
        outcome = _cell(r["outcome"])
        outcome = outcome if len(outcome) <= 160 else outcome[:157] + "..."
        lines.append(f"| {r['area']} | {_cell(case)} | {_cell(r['command'])} | {_cell(r['expected'])} | "
                     f"{_cell(outcome)} | {'yes' if r['survived'] else '**no**'} |")
    return "\n".join(lines)


def update_docs(text: str) -> None:
    doc = DOC.read_text(encoding="utf-8")
    if START not in doc or END not in doc:
        raise SystemExit(f"{DOC}: markers {START!r} ... {END!r} not found")
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{START}\n{text}\n{END}{tail}", encoding="utf-8")


def read_ledger(path: Path) -> tuple[int | None, list[dict]]:
    """(pytest's exit status or None for an old ledger, the records)."""
    data = json.loads(path.read_text())
    if isinstance(data, list):
        return None, data
    return data.get("exitstatus"), data["records"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", type=Path, help="a ledger JSON written earlier (do not run the suite)")
    parser.add_argument("--json", type=Path, help="also keep the ledger here")
    parser.add_argument("--update-docs", action="store_true", help=f"rewrite the figures section of {DOC}")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    rc = 0
    if args.source:
        status, records = read_ledger(args.source)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            ledger = Path(tmp) / "ledger.json"
            rc = run_suite(ledger, args.pytest_args)
            if not ledger.exists():
                print("the suite recorded nothing", file=sys.stderr)
                return rc or 1
            status, records = read_ledger(ledger)
            if args.json:
                args.json.write_text(ledger.read_text())
    text = tables(records)
    print(text)
    if args.update_docs:
        failed_tests = sorted({r["test"] for r in records if r.get("case", "").startswith("test failed:")})
        if rc or status or status is None or failed_tests:
            why = f"pytest exit status {rc or status}" if (rc or status) else \
                "the ledger has no exit status" if status is None else f"failed: {', '.join(failed_tests)}"
            print(f"\nnot updating {DOC}: the suite did not pass ({why}); the docs take figures from a green run only",
                  file=sys.stderr)
            return rc or 1
        update_docs(text)
        print(f"\nwrote the figures into {DOC}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
