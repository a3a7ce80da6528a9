#!/usr/bin/env bash
# Creates .venv, installs the project with its test extras, and the Debian data/runtime
# packages it uses (Fashion-MNIST for the demo, jemalloc for the allocator). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PYTHON" -m venv .venv
fi

# Re-install only when pyproject.toml or constraints.txt changed since the last install.
stamp=.venv/.alexnet-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing alexnet and its dependencies into .venv" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]' \
    2> >(grep -v "^WARNING: Location 'file:" >&2)
  echo "$want" > "$stamp"
fi

# Debian packages: Fashion-MNIST (the demo's data, no download from the web), jemalloc, and
# Chromium (the browser the test of `alexnet serve`'s page drives; Playwright never downloads one).
# Where they cannot be installed (no apt-get, neither root nor sudo, or apt-get fails),
# setup goes on without them, saying so in one line: jemalloc is optional (the system allocator
# runs instead), scripts/demo.sh then downloads Fashion-MNIST from its official source, and the
# browser test skips, saying why.
# ALEXNET_FASHION_MNIST, ALEXNET_CHROMIUM: where the package's files are looked for (the tests
# point them elsewhere).
fashion_mnist=${ALEXNET_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
chromium=${ALEXNET_CHROMIUM:-/usr/bin/chromium}
need=()
[ -f "$fashion_mnist/train-images-idx3-ubyte.gz" ] || need+=(dataset-fashion-mnist)
ls /usr/lib/*/libjemalloc.so.2 >/dev/null 2>&1 || need+=(libjemalloc2)
[ -x "$chromium" ] || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  SUDO="" why=""
  if ! command -v apt-get >/dev/null 2>&1; then
    why="no apt-get"
  elif [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else why="not root and no sudo"; fi
  fi
  without="the demo downloads Fashion-MNIST instead, jemalloc is optional, the browser test skips"
  if [ -n "$why" ]; then
    echo "setup: cannot install ${need[*]} here ($why); install them with your package manager (Debian: apt-get install ${need[*]}), or go on without: $without" >&2
  else
    echo "setup: apt-get install ${need[*]}" >&2
    if ! { $SUDO apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null; }; then
      echo "setup: apt-get install ${need[*]} failed; going on without them ($without)" >&2
    fi
  fi
fi
