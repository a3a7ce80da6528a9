"""Shared helpers for the training / evaluation / checkpoint tests (real data, real processes).

Small real caches are prepared once per test session under pytest's base temp folder
(``prepare(..., limit=N)`` keeps N images per class of every split) and reused by every
test module that asks for them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alexnet.data import prepare
from alexnet.train.config import parse_override_value

REPO = Path(__file__).resolve().parents[1]

# A narrow alexnet_small: every structural feature of the paper (towers, LRN, overlapping
# pooling, dropout), small enough that a test epoch takes about a second.
TINY = {"widths": [8, 16, 24, 24, 16], "hidden": 64}


def one_line_error(proc, *fragments):
    """The documented outcome of a user error: exit 2, one ``alexnet: error:`` line with every fragment
    (after any ``alexnet: warning:`` lines about legal settings, e.g. a small batch at the preset's lr)."""
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("alexnet: warning: ")]
    assert len(lines) == 1 and lines[0].startswith("alexnet: error: "), proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def tiny_kwargs_arg(kwargs: dict = TINY) -> str:
    inner = ", ".join(f"{k} = {list(v) if isinstance(v, (list, tuple)) else v!r}".replace("'", '"')
                      for k, v in kwargs.items())
    return "{" + inner + "}"


def prepared_cache(base: Path, name: str, source: str | Path, size: int, limit: int) -> Path:
    """A real cache of ``source`` with at most ``limit`` images per class per split (built once)."""
    out = base / f"{name}-{size}-{limit}"
    if not (out / "meta.json").is_file():
        prepare(str(source), out, size=size, limit=limit, quiet=True, workers=2)
    return out


def train_args(cache: Path, out: Path, name: str, *extra: str, epochs: int = 2, batch: int = 32) -> list[str]:
    """``alexnet train`` arguments for a small, fast, fully deterministic run on ``cache``."""
    return ["train", "fashion-mnist", "--data.cache", str(cache), "--run.out", str(out), "--run.name", name,
            "--model.kwargs", tiny_kwargs_arg(), "--train.epochs", str(epochs), "--train.batch_size", str(batch),
            "--train.log_every", "1", "--quiet", *extra]


def popen_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "alexnet", *map(str, args)], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout: float = 120.0, proc: subprocess.Popen | None = None, interval: float = 0.02):
    """Poll until ``predicate()`` is truthy; fail (showing the process output) on timeout or early exit."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process exited {proc.returncode} before the condition held:\n{out}\n{err}")
        time.sleep(interval)
    if proc is not None:
        proc.kill()
    raise AssertionError("timed out waiting")


def last_step(run_dir: Path) -> int:
    path = run_dir / "steps.jsonl"
    if not path.is_file():
        return 0
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    try:
        return json.loads(lines[-1])["step"] if lines else 0
    except (ValueError, KeyError):
        return 0


def checkpoint_tensors(path: Path, prefixes=("model.", "optim.")) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(path)).items() if k.startswith(prefixes)}


CLI_ENV = {"OMP_NUM_THREADS": "1"}      # small CLI runs on a shared 2-core machine: no oversubscription
