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

from train_support import CLI_ENV, prepared_cache, train_args

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ALEXNET_SHARED", REPO.parent / "shared"))
FASHION_MNIST = Path(os.environ.get("ALEXNET_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))


@pytest.fixture(scope="session", autouse=True)
def _default_cache_in_the_suites_temporary_folder(tmp_path_factory):
    """A data source given without a cache is prepared under $ALEXNET_CACHE (default ~/.cache/alexnet):
    for the suite, a folder of its own, so that it never writes the user's caches and two suites
    (CI's two lanes) never prepare into one folder at once. Tests that set it themselves still may."""
    previous = os.environ.get("ALEXNET_CACHE")
    os.environ["ALEXNET_CACHE"] = str(tmp_path_factory.mktemp("default-cache"))
    yield
    if previous is None:
        os.environ.pop("ALEXNET_CACHE", None)
    else:
        os.environ["ALEXNET_CACHE"] = previous


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


# ----------------------------------------------------------------------------- training fixtures

@pytest.fixture(scope="module")
def one_thread():
    """Small batches on a shared 2-core machine: one thread avoids OpenMP oversubscription stalls.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fmnist_cache(tmp_path_factory, fashion_mnist_dir) -> Path:
    """Fashion-MNIST, 28 px, 60 images per class (600 train, 600 test)."""
    return prepared_cache(tmp_path_factory.getbasetemp(), "fmnist", fashion_mnist_dir, 28, 60)


@pytest.fixture(scope="session")
def trained_run(fmnist_cache, tmp_path_factory) -> Path:
    """A real `alexnet train` run (1 epoch of the tiny model on 600 Fashion-MNIST images)."""
    out = tmp_path_factory.mktemp("trained")
    proc = run_cli(*train_args(fmnist_cache, out, "run", "--train.threads", "1", "--optim.lr", "0.02",
                               "--data.crop", "24", epochs=1), env=CLI_ENV)
    assert proc.returncode == 0, proc.stderr
    return out / "run"
