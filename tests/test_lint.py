"""ruff's pyflakes (F) and bugbear (B) rules hold over the package, the tests and the benchmarks:
no unused import or variable, no zip that silently drops a tail, no closure over a loop variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_pyflakes_and_bugbear_are_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "F,B", "--output-format",
                           "concise", "src", "tests", "benchmarks", "hubconf.py"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert "No module named ruff" not in proc.stderr, "ruff is a test dependency: bash scripts/setup.sh installs it"
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
