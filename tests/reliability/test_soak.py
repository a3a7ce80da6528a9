"""Soak: many epochs on a small real dataset; memory and open files stay flat.

24 epochs of the tiny configuration on the small CIFAR-10 cache, with 2 loader worker
processes (persistent), validation and two checkpoint writes every epoch. At the end of
each epoch (seen in epochs.jsonl) the test reads, for the trainer and its child
processes, the resident memory (VmRSS in /proc/PID/status) and the number of open file
descriptors (/proc/PID/fd).

Bounds: the median resident memory of the last 5 epochs is at most ``RSS_GROWTH_MB``
(50 MB) above that of epochs 4-8 (warm-up excluded: allocator pools and the page cache
of the memory-mapped cache fill during the first epochs). Open descriptors (files,
pipes, sockets; the shared-memory descriptors of batches in flight from the loader
workers come and go by design and are not counted): the median over the second half of
the run is no more than over epochs 4-12. A leak of one descriptor per epoch, or ~3 MB
per epoch, fails.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from .helpers import alexnet_cmd, cli_env, record, tiny_config, wait_for

pytestmark = [pytest.mark.shared, pytest.mark.slow]
EPOCHS = 24
RSS_GROWTH_MB = 50.0


def _tree(pid: int) -> list[int]:
    """pid and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _sample(pid: int) -> tuple[float, int] | None:
    rss_kb, fds = 0, 0
    for p in _tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
            rss_kb += int(status.split("VmRSS:")[1].split()[0])
            for fd in os.listdir(f"/proc/{p}/fd"):
                try:
                    target = os.readlink(f"/proc/{p}/fd/{fd}")
                except OSError:
                    continue
                # Batches travel from the loader workers through shared memory, one descriptor
                # per tensor in flight (7 at a time here, 14 when two batches are queued):
                # transient by design, so not counted. Files, pipes and sockets are.
                fds += not (target.startswith("/dev/shm/") or target.startswith("memfd:"))
        except (OSError, IndexError):
            continue
    return (rss_kb / 1024.0, fds) if rss_kb else None


def test_memory_and_files_stay_flat(small_cache, tmp_path):
    runs = tmp_path / "runs"
    config = tiny_config(tmp_path / "soak.toml", small_cache, runs, epochs=EPOCHS, batch=32, workers=2)
    epochs_file = runs / "soak" / "epochs.jsonl"
    with open(tmp_path / "soak.log", "w") as log:
        proc = subprocess.Popen(alexnet_cmd("train", config, "--run.name", "soak", "--train.log_every", "5"),
                                stdout=log, stderr=subprocess.STDOUT, env=cli_env())
        samples: list[tuple[float, int]] = []
        try:
            while len(samples) < EPOCHS and proc.poll() is None:
                want = len(samples) + 1
                if not wait_for(lambda: proc.poll() is not None or (epochs_file.exists() and len(
                        epochs_file.read_text().splitlines()) >= want), 120, 0.01):
                    break
                if proc.poll() is not None:
                    break
                time.sleep(0.05)            # past the epoch's checkpoint writes
                taken = [s for s in (_sample(proc.pid) for _ in range(3)) if s]   # 3 looks, 3 ms apart
                if taken:
                    samples.append((min(r for r, _ in taken), min(f for _, f in taken)))
            rc = proc.wait(300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert rc == 0, (tmp_path / "soak.log").read_text()[-3000:]
    assert len(samples) >= EPOCHS - 1, f"only {len(samples)} samples"
    half = len(samples) // 2
    early, late = samples[3:half], samples[half:]
    rss_growth = statistics.median(r for r, _ in late[-5:]) - statistics.median(r for r, _ in early[:5])
    fd_early, fd_late = statistics.median(f for _, f in early), statistics.median(f for _, f in late)
    record("soak", f"{EPOCHS} epochs, 2 loader workers", command="train",
           expected=f"RSS growth < {RSS_GROWTH_MB:.0f} MB after warm-up; open fds do not grow",
           outcome=f"RSS {statistics.median(r for r, _ in early):.0f} -> {statistics.median(r for r, _ in late):.0f} MB "
                   f"({rss_growth:+.1f} MB); fds {fd_early:.0f} -> {fd_late:.0f}",
           survived=rss_growth < RSS_GROWTH_MB and fd_late <= fd_early)
    assert rss_growth < RSS_GROWTH_MB, f"RSS per epoch (MB): {[round(r) for r, _ in samples]}"
    assert fd_late <= fd_early, f"open fds per epoch: {[f for _, f in samples]}"
