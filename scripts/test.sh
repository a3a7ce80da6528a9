#!/usr/bin/env bash
# README command 2: set everything up, then run the whole test suite.
# pytest's own exit code is returned unchanged: 5 ("no tests collected") fails like any other.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
