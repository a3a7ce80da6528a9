"""Soak: many epochs on a small real dataset; memory and open files stay flat.

24 epochs of the tiny configuration on the small CIFAR-10 cache, with 2 loader worker
processes (persistent), validation and two checkpoint writes every epoch. At the end of
each epoch (seen in epochs.jsonl) the test reads, for the trainer and its child
processes, the resident memory (VmRSS in /proc/PID/status) and the number of open file
descriptors (/proc/PID/fd).

Bounds, after a warm-up of ``WARMUP`` epochs (allocator pools and the page cache of the
memory-mapped cache fill during the first epochs):

* resident memory: the (Theil-Sen, outlier-proof) slope of RSS against the epoch is at
  most ``RSS_SLOPE_MB`` (1 MB) per epoch. A leak of 3 MB per epoch fails (a bound on the
  total growth over the run let it pass);
* open descriptors that are files, pipes or sockets: the median over the second half
  of the run is no more than over epochs 4-12 (a leak of one per epoch fails);
* shared-memory descriptors (``/dev/shm``, ``memfd:``): batches travel from the loader
  workers through shared memory, one descriptor per tensor in flight (7 per batch), so
  their number at any moment is 0 to a few batches' worth. They are counted apart: the
  fewest *and* the most seen over the last third of the run may exceed those of epochs
  4-10 by at most ``SHM_SLACK`` (one batch's worth). A leak of one per epoch raises both
  by ~14 over that distance and fails.
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
WARMUP = 3
RSS_SLOPE_MB = 1.0
SHM_SLACK = 7


def _slope(ys: list[float]) -> float:
    """Theil-Sen slope of ys against 0, 1, 2, ... (per epoch): the median of the slopes between
    every pair of epochs. A steady leak sets it; one odd sample (the last epoch's look can
    catch the final evaluation allocating) does not, where a least-squares fit would follow it."""
    return statistics.median((ys[j] - ys[i]) / (j - i) for i in range(len(ys)) for j in range(i + 1, len(ys)))


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


def _sample(pid: int) -> tuple[float, int, int] | None:
    """(RSS in MB, file/pipe/socket descriptors, shared-memory descriptors) of pid and its children."""
    rss_kb, fds, shm = 0, 0, 0
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
                # counted apart from files, pipes and sockets.
                if target.startswith("/dev/shm/") or target.startswith("memfd:"):
                    shm += 1
                else:
                    fds += 1
        except (OSError, IndexError):
            continue
    return (rss_kb / 1024.0, fds, shm) if rss_kb else None


def test_memory_and_files_stay_flat(small_cache, tmp_path):
    runs = tmp_path / "runs"
    config = tiny_config(tmp_path / "soak.toml", small_cache, runs, epochs=EPOCHS, batch=32, workers=2)
    epochs_file = runs / "soak" / "epochs.jsonl"
    with open(tmp_path / "soak.log", "w") as log:
        proc = subprocess.Popen(alexnet_cmd("train", config, "--run.name", "soak", "--train.log_every", "5"),
                                stdout=log, stderr=subprocess.STDOUT, env=cli_env())
        samples: list[tuple[float, int, int]] = []
        try:
            while len(samples) < EPOCHS and proc.poll() is None:
                want = len(samples) + 1
                if not wait_for(lambda want=want: proc.poll() is not None or (epochs_file.exists() and len(
                        epochs_file.read_text().splitlines()) >= want), 120, 0.01):
                    break
                if proc.poll() is not None:
                    break
                time.sleep(0.05)            # past the epoch's checkpoint writes
                taken = [s for s in (_sample(proc.pid) for _ in range(3)) if s]   # 3 looks, 3 ms apart
                if taken:
                    samples.append(tuple(min(s[k] for s in taken) for k in range(3)))
            rc = proc.wait(300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert rc == 0, (tmp_path / "soak.log").read_text()[-3000:]
    assert len(samples) >= EPOCHS - 1, f"only {len(samples)} samples"
    half, third = len(samples) // 2, len(samples) - len(samples) // 3
    early, late = samples[WARMUP:half], samples[half:]
    rss_slope = _slope([r for r, _, _ in samples[WARMUP:]])
    fd_early, fd_late = statistics.median(f for _, f, _ in early), statistics.median(f for _, f, _ in late)
    shm_early = [s for _, _, s in samples[WARMUP:10]]
    shm_late = [s for _, _, s in samples[third:]]
    shm_ok = min(shm_late) <= min(shm_early) + SHM_SLACK and max(shm_late) <= max(shm_early) + SHM_SLACK
    ok = rss_slope <= RSS_SLOPE_MB and fd_late <= fd_early and shm_ok
    record("soak", f"{EPOCHS} epochs, 2 loader workers", command="train",
           expected=f"RSS slope <= {RSS_SLOPE_MB:.0f} MB/epoch after warm-up; files/pipes/sockets do not grow; "
                    f"shared-memory descriptors do not pile up",
           outcome=f"RSS {statistics.median(r for r, _, _ in early):.0f} -> "
                   f"{statistics.median(r for r, _, _ in late):.0f} MB (slope {rss_slope:+.2f} MB/epoch); "
                   f"fds {fd_early:.0f} -> {fd_late:.0f}; shared-memory fds (fewest-most) "
                   f"{min(shm_early)}-{max(shm_early)} -> {min(shm_late)}-{max(shm_late)}",
           survived=ok)
    assert rss_slope <= RSS_SLOPE_MB, f"RSS per epoch (MB): {[round(r) for r, _, _ in samples]}"
    assert fd_late <= fd_early, f"open fds per epoch: {[f for _, f, _ in samples]}"
    assert shm_ok, f"shared-memory fds per epoch: {[s for _, _, s in samples]}"
