#!/usr/bin/env bash
# README command 1: set everything up, then train the default (AlexNet on Fashion-MNIST, CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/alexnet train fashion-mnist "$@"
