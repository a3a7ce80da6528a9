"""A data-parallel job whose rank dies must stop, not hang.

Two real jobs on the small CIFAR-10 cache, gloo backend, CPU:

* one ``torchrun --nproc_per_node 2``: rank 1 is killed (SIGKILL) mid-training;
* two single-process "nodes" (``torchrun --nnodes 2 --node_rank 0/1``, static
  rendezvous on localhost): node 1 (its agent and its worker) is killed, so node 0's
  worker is left waiting in a collective with nobody at the other end - the case that
  hangs forever without a timeout or error detection.

Expected: the surviving side exits non-zero within a bounded time (``BOUND_S``; the
job's ``train.dist_timeout`` is 20 s), and its output says which rank failed or why.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import cli_env, record, tiny_config, wait_for

pytestmark = [pytest.mark.shared, pytest.mark.slow]
BOUND_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children_with_rank(pid: int, rank: int) -> list[int]:
    """PIDs of descendants of ``pid`` whose environment says RANK=rank."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != pid:
                continue
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() in env:
                found.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _torchrun(*args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *map(str, args)]


def _steps(run_dir: Path) -> int:
    try:
        return len((run_dir / "steps.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def _train_args(config: Path, runs: Path, name: str) -> list[str]:
    return ["-m", "alexnet", "train", str(config), "--run.name", name, "--run.out", str(runs),
            "--data.workers", "0", "--train.dist_timeout", "20", "--train.epochs", "20"]


def test_killed_rank_stops_the_job(small_cache, tmp_path):
    runs = tmp_path / "runs"
    config = tiny_config(tmp_path / "tiny.toml", small_cache, runs)
    log = open(tmp_path / "job.log", "w")
    job = subprocess.Popen(_torchrun("--nproc_per_node", 2, "--master_port", _free_port(),
                                     *_train_args(config, runs, "ddp")),
                           stdout=log, stderr=subprocess.STDOUT, env=cli_env(), start_new_session=True)
    try:
        assert wait_for(lambda: _steps(runs / "ddp") >= 3 or job.poll() is not None, 240, 0.05), "never trained"
        assert job.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
        victims = _children_with_rank(job.pid, 1)
        assert victims, "rank 1 not found"
        os.kill(victims[0], signal.SIGKILL)
        killed_at = time.monotonic()
        rc = job.wait(BOUND_S + 60)
        took = time.monotonic() - killed_at
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
        log.close()
    text = (tmp_path / "job.log").read_text(errors="replace")
    says = any(s in text for s in ("rank 1", "rank: 1", "local_rank: 1", "Signal 9", "SIGKILL", "exitcode: -9"))
    ok = rc != 0 and took < BOUND_S and says
    record("distributed", "torchrun 2 processes, rank 1 killed", command="torchrun ... alexnet train",
           expected=f"job exits non-zero within {BOUND_S:.0f} s naming the failure",
           outcome=f"exit {rc} after {took:.1f} s; message names the rank/signal: {says}", survived=ok)
    assert rc != 0
    assert took < BOUND_S, took
    assert says, text[-3000:]


def test_killed_node_stops_the_other_node(small_cache, tmp_path):
    runs = tmp_path / "runs"
    config = tiny_config(tmp_path / "tiny.toml", small_cache, runs)
    port = _free_port()
    logs, nodes = [], []
    for rank in (0, 1):
        logs.append(open(tmp_path / f"node{rank}.log", "w"))
        nodes.append(subprocess.Popen(
            _torchrun("--nnodes", 2, "--node_rank", rank, "--nproc_per_node", 1, "--master_addr", "127.0.0.1",
                      "--master_port", port, *_train_args(config, runs, "nodes")),
            stdout=logs[-1], stderr=subprocess.STDOUT, env=cli_env(), start_new_session=True))
    try:
        assert wait_for(lambda: _steps(runs / "nodes") >= 3 or any(n.poll() is not None for n in nodes), 240, 0.05)
        assert all(n.poll() is None for n in nodes), (tmp_path / "node0.log").read_text()[-3000:]
        # The whole node: its worker (torchrun starts workers in their own session) and its agent.
        for pid in _children_with_rank(nodes[1].pid, 1):
            os.kill(pid, signal.SIGKILL)
        os.killpg(nodes[1].pid, signal.SIGKILL)
        nodes[1].wait()
        killed_at = time.monotonic()
        try:
            rc = nodes[0].wait(BOUND_S)
        except subprocess.TimeoutExpired:
            rc = None
        took = time.monotonic() - killed_at
    finally:
        for n in nodes:
            if n.poll() is None:
                os.killpg(n.pid, signal.SIGKILL)
                n.wait()
        for f in logs:
            f.close()
    text = (tmp_path / "node0.log").read_text(errors="replace")
    lines = [l for l in text.splitlines() if "alexnet: error:" in l]
    ok = rc not in (None, 0) and took < BOUND_S
    record("distributed", "2 nodes, node 1 killed", command="torchrun --nnodes 2 ... alexnet train",
           expected=f"node 0 exits non-zero within {BOUND_S:.0f} s with a clear message",
           outcome=(f"exit {rc} after {took:.1f} s; " + (lines[0][:200] if lines else "no 'alexnet: error:' line"))
           if rc is not None else f"STILL RUNNING after {BOUND_S:.0f} s (hang)", survived=ok and bool(lines))
    assert rc is not None, f"node 0 still running {BOUND_S:.0f} s after node 1 died: a hang"
    assert rc != 0
    assert lines, "no clear one-line message from the surviving worker:\n" + text[-3000:]
