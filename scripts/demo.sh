#!/usr/bin/env bash
# README command 1: set everything up, then train the default (AlexNet on Fashion-MNIST, CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -f "${ALEXNET_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}/train-images-idx3-ubyte.gz" ]; then
  # No Debian package: fetch the official IDX files (verified) and prepare them into the
  # cache 'alexnet train fashion-mnist' reads; a re-run finds that cache and does nothing.
  echo "demo: no Debian package dataset-fashion-mnist; using Fashion-MNIST from its official source instead" >&2
  if ! .venv/bin/alexnet prepare fashion-mnist --download; then
    echo "demo: could not get Fashion-MNIST; install the Debian package dataset-fashion-mnist, or run '.venv/bin/alexnet prepare fashion-mnist --download' where the internet is reachable" >&2
    exit 1
  fi
fi
exec .venv/bin/alexnet train fashion-mnist "$@"
