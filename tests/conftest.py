"""Shared test fixtures: where the real data is, and how to run the CLI for real.

Real data lives beside the checkout in ``../shared/data`` (override with
``ALEXNET_SHARED=/path/to/shared``). Tests that need it take the ``shared_data``
fixture and are skipped, with the reason, when it is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ALEXNET_SHARED", REPO.parent / "shared"))
FASHION_MNIST = Path(os.environ.get("ALEXNET_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _no_run_folder_in_the_checkout():
    """Tests write only under their temporary folders: a new entry in ``runs/`` of the checkout (the
    default run.out of a train call that forgot its own) fails the test that made it."""
    folders = {Path.cwd() / "runs", REPO / "runs"}
    before = {f: set(os.listdir(f)) if f.is_dir() else None for f in folders}
    yield
    for f in folders:
        made = sorted(set(os.listdir(f)) - (before[f] or set())) if f.is_dir() else []
        if made or (f.is_dir() and before[f] is None):
            pytest.fail(f"the test left {f} ({', '.join(made) or 'empty'}) in the checkout; give it --run.out "
                        f"under tmp_path", pytrace=False)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    data = SHARED / "data"
    if not data.is_dir():
        pytest.skip(f"real data not found at {data} (set ALEXNET_SHARED to the folder holding data/)")
    return data


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not found at {FASHION_MNIST} (apt-get install dataset-fashion-mnist)")
    return FASHION_MNIST


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run ``alexnet ARGS...`` as a real subprocess of this interpreter."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "alexnet", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"alexnet {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def cli():
    return run_cli
