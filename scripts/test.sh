#!/usr/bin/env bash
# README command 2: set everything up, then run the test suite's first lane: every test but the
# slow real runs and the docs' commands (15 minutes or less on 2 cores).
#   bash scripts/test.sh --lane 2     the second lane: those (tests marked slow or docs)
#   bash scripts/test.sh --lane all   both in one pytest run
# CI runs both lanes (.ci/run). Further arguments go to pytest (a later -m wins over the lane's).
# pytest's own exit code is returned unchanged: 5 ("no tests collected") fails like any other.
set -euo pipefail
cd "$(dirname "$0")/.."
lane=(-m "not slow and not docs")
if [ "${1:-}" = "--lane" ]; then
  case "${2:-}" in
    1) ;;
    2) lane=(-m "slow or docs") ;;
    all) lane=() ;;
    *) echo "test.sh: --lane takes 1, 2 or all, not '${2:-}'" >&2; exit 2 ;;
  esac
  shift 2
fi
bash scripts/setup.sh
exec .venv/bin/python -m pytest "${lane[@]}" "$@"
