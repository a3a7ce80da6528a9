#!/usr/bin/env bash
# The device check (docs/gpu.md): everything that needs a GPU, in one command of about five minutes.
#
#   scripts/gpu-check.sh --pack            here (with ../shared and a package index): fill .device/
#   scripts/gpu-check.sh [--out DIR]       on the GPU machine: run the check, results in DIR
#   scripts/gpu-check.sh --cpu [--out DIR] anywhere: every code path with tiny sizes on the CPU
#
# The GPU machine has python3 with torch, torchvision, numpy, Pillow, safetensors, tqdm and
# matplotlib but no package index and no ../shared: .device/ carries the simplejpeg wheel
# (installed into /tmp/site) and the real images (.device/shared/data/). The project runs
# from the source tree (PYTHONPATH=src). Other arguments go to benchmarks/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PACK=.device
PY=${PYTHON:-python3}

if [[ "${1:-}" == "--pack" ]]; then
    shared=${ALEXNET_SHARED:-../shared}
    pip=${PIP:-pip}
    command -v "$pip" >/dev/null || pip=.venv/bin/pip
    mkdir -p "$PACK/wheels" "$PACK/shared/data"
    printf '*\n' >"$PACK/.gitignore"          # git ignores the folder; the device tool carries it
    rm -f "$PACK"/wheels/simplejpeg-*.whl
    "$pip" download --quiet --no-deps --only-binary=:all: --implementation cp --python-version 3.12 \
        --abi cp312 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_28_x86_64 -d "$PACK/wheels" "simplejpeg>=1.7"
    install -m 0644 "$shared/data/imagenet-sample-500.tar" "$shared/data/imagenet-classes.txt" "$PACK/shared/data/"
    du -sh "$PACK"
    ls -l "$PACK/wheels" "$PACK/shared/data"
    exit 0
fi

out=${OUT:-out}/gpu-check
args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
mkdir -p "$out"

if ! "$PY" -c "import simplejpeg" 2>/dev/null; then
    wheel=$(ls "$PACK"/wheels/simplejpeg-*cp312*.whl 2>/dev/null | head -n 1 || true)
    if [[ -z "$wheel" ]]; then
        echo "gpu-check: simplejpeg is not installed and no wheel in $PACK/wheels (run scripts/gpu-check.sh --pack)" >&2
        exit 2
    fi
    "$PY" -m pip install --quiet --no-index --no-deps --target /tmp/site "$wheel" \
        || "$PY" -m zipfile -e "$wheel" /tmp/site                 # a wheel is a zip file
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
if [[ -z "${ALEXNET_SHARED:-}" ]]; then
    if [[ -f "$PACK/shared/data/imagenet-sample-500.tar" ]]; then
        ALEXNET_SHARED=$PWD/$PACK/shared
    else
        ALEXNET_SHARED=$(cd .. && pwd)/shared
    fi
fi
export ALEXNET_SHARED PYTHONUNBUFFERED=1
# The check keeps its own budget (340 s on a GPU); the hard stop is a safety net below six minutes.
set -o pipefail
timeout --kill-after=5 355 "$PY" benchmarks/gpu_check.py --out "$out" "${args[@]+"${args[@]}"}" 2>&1 | tee "$out/gpu-check.log"
