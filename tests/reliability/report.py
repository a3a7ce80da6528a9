"""Run the reliability suite and print (or write into docs/reliability.md) its figures.

    python -m tests.reliability.report                 # run tests/reliability, print the tables
    python -m tests.reliability.report --update-docs   # ... and rewrite the figures in docs/reliability.md
    python -m tests.reliability.report --from FILE     # tables from a ledger written earlier

Every test of the suite records each case it tries (helpers.record): the documented
outcome, what happened, whether that is the documented outcome ("survived") and how
many valid inputs were lost. The suite writes that ledger as JSON when
ALEXNET_RELIABILITY_REPORT names a file; this script sets it, runs pytest, and turns
the ledger into the tables of docs/reliability.md.
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


def tables(records: list[dict]) -> str:
    areas: OrderedDict[str, list[dict]] = OrderedDict()
    for r in records:
        areas.setdefault(r["area"], []).append(r)
    lines = ["| area | cases tried | documented outcome | not (known defects) | valid inputs lost |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for area, rs in areas.items():
        ok = sum(r["survived"] for r in rs)
        lines.append(f"| {area} | {len(rs)} | {ok} | {len(rs) - ok} | {sum(r['lost'] for r in rs)} |")
    ok = sum(r["survived"] for r in records)
    lines.append(f"| **all** | **{len(records)}** | **{ok}** | **{len(records) - ok}** | "
                 f"**{sum(r['lost'] for r in records)}** |")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", type=Path, help="a ledger JSON written earlier (do not run the suite)")
    parser.add_argument("--json", type=Path, help="also keep the ledger here")
    parser.add_argument("--update-docs", action="store_true", help=f"rewrite the figures section of {DOC}")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    rc = 0
    if args.source:
        records = json.loads(args.source.read_text())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            ledger = Path(tmp) / "ledger.json"
            rc = run_suite(ledger, args.pytest_args)
            if not ledger.exists():
                print("the suite recorded nothing", file=sys.stderr)
                return rc or 1
            records = json.loads(ledger.read_text())
    if args.json:
        args.json.write_text(json.dumps(records, indent=1, ensure_ascii=False))
    text = tables(records)
    print(text)
    if args.update_docs:
        update_docs(text)
        print(f"\nwrote the figures into {DOC}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
