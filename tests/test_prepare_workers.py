"""``alexnet prepare`` with decoding worker processes that die or stall: never a hang.

A real ``alexnet prepare --workers 2`` of 600 Imagewoof JPEGs runs as a subprocess. Once its
progress file shows images done, the prepare process itself is paused (SIGSTOP), so that the
run cannot finish whatever the machine's speed; then its decoding workers (its child processes
running the same command line, found in /proc) are harmed, and the prepare process continues
(SIGCONT):

* one worker is killed with SIGKILL (what the kernel's out-of-memory killer sends; a segfault
  in a decoder ends a worker the same way): prepare must stop with exactly one line saying that
  a decoding worker died and how (signal 9), exit 2, and keep its partial cache;
* every worker is stopped (a decoder stuck on a file: no result ever comes) and prepare gets
  SIGTERM: it must stop as for Ctrl-C (exit 130, "interrupted") and leave no worker behind.

Each time a re-run must resume (``resumed after N images``) and give exactly the cache of an
uninterrupted prepare. The timeouts are safety nets far above the work's duration (a hang
fails the test instead of hanging it), never a measure of speed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from alexnet import UserError, open_cache, prepare
from data_helpers import process_alive

pytestmark = [pytest.mark.shared, pytest.mark.slow]

LIMIT = 30                       # per class and split: 10 classes x 2 splits x 30 = 600 images
ARGS = ("--size", "64", "--limit", str(LIMIT), "--workers", "2", "--quiet")
HANG = 120                       # seconds: far above the whole run; reaching it means a hang


@pytest.fixture(scope="module")
def source(shared_data) -> Path:
    return shared_data / "imagewoof2-160.tar"


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory) -> Path:
    """The same cache prepared without interruption, in this process with one worker."""
    out = tmp_path_factory.mktemp("reference") / "cache"
    prepare(source, out, size=64, limit=LIMIT, workers=1, quiet=True)
    return out


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (scanning /proc/*/stat: no psutil needed)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:   # fields after "(comm)": state, ppid
                kids.append(int(entry))
    return kids


def _workers(pid: int) -> list[int]:
    """The decoding workers of prepare ``pid``: its children forked from it (same command line)."""
    try:
        own = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    found = []
    for kid in _children(pid):
        try:
            if Path(f"/proc/{kid}/cmdline").read_bytes() == own:
                found.append(kid)
        except OSError:
            pass
    return found



def _done(partial: Path) -> int:
    """Images done according to the partial cache's progress file (0 before the first one)."""
    try:
        with np.load(partial / "progress.npz", allow_pickle=False) as z:
            return int(sum(z[k].sum() for k in z.files if k.startswith("done.")))
    except (OSError, ValueError, KeyError, EOFError):
        return 0


def _start_and_pause(source: Path, out: Path) -> tuple[subprocess.Popen, list[int]]:
    """Start prepare; once images are done and its workers exist, SIGSTOP it. -> (process, workers)."""
    env = dict(os.environ, ALEXNET_PREPARE_CHECKPOINT_SECONDS="0")   # a progress file after every chunk
    proc = subprocess.Popen([sys.executable, "-m", "alexnet", "prepare", str(source), str(out), *ARGS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)           # its own process group, to clean up after it
    partial = Path(f"{out}.partial")
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline and proc.poll() is None:
        workers = _workers(proc.pid)
        if len(workers) == 2 and _done(partial) > 0:
            os.kill(proc.pid, signal.SIGSTOP)
            workers = _workers(proc.pid)          # as they are now that it cannot start others
            assert len(workers) == 2, workers
            assert _done(partial) < 20 * LIMIT, "prepare finished before it was paused: nothing would be tested"
            return proc, workers
        time.sleep(0.002)
    _kill_group(proc)
    pytest.fail(f"prepare never had 2 workers and images done (exit {proc.poll()}): {proc.stderr.read()[-2000:]}")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _finish(proc: subprocess.Popen, what: str) -> tuple[str, str]:
    """Let the paused prepare continue; its (stdout, stderr), or a failure if it hangs."""
    os.kill(proc.pid, signal.SIGCONT)
    try:
        return proc.communicate(timeout=HANG)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        pytest.fail(f"prepare hung after {what} (no exit within {HANG} s)")


def _assert_resumes_to(source: Path, out: Path, reference: Path) -> None:
    """The partial cache never opens; a re-run resumes it and gives exactly the reference cache."""
    with pytest.raises(UserError, match="interrupted prepare left"):
        open_cache(out)
    run = subprocess.run([sys.executable, "-m", "alexnet", "prepare", str(source), str(out), *ARGS],
                         capture_output=True, text=True, timeout=HANG)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "resumed after" in run.stdout, run.stdout
    got, want = open_cache(out), open_cache(reference)
    assert got.classes == want.classes and set(got.splits) == set(want.splits) == {"train", "val"}
    for split in want.splits:
        assert len(got.split(split)) == len(want.split(split)) == 10 * LIMIT
        np.testing.assert_array_equal(np.asarray(got.split(split).images), np.asarray(want.split(split).images))
        np.testing.assert_array_equal(got.split(split).labels, want.split(split).labels)
        assert list(got.split(split).files) == list(want.split(split).files)
    assert set(got.stats) == set(want.stats)
    for key in want.stats:
        np.testing.assert_array_equal(got.stats[key], want.stats[key])


def test_a_killed_worker_stops_prepare_with_one_line_and_a_rerun_resumes(source, reference, tmp_path):
    out = tmp_path / "cache"
    proc, workers = _start_and_pause(source, out)
    os.kill(workers[0], signal.SIGKILL)
    _, err = _finish(proc, "a decoding worker was killed")
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    line = lines[0]
    assert line.startswith("alexnet: error: ") and str(out) in line, line
    assert "decoding worker" in line and "died" in line and "signal 9" in line, line
    assert "re-run resumes" in line, line
    assert not any(process_alive(w) for w in workers), "a decoding worker outlived prepare"
    _assert_resumes_to(source, out, reference)


def test_sigterm_stops_prepare_while_its_workers_are_stuck(source, reference, tmp_path):
    out = tmp_path / "cache"
    proc, workers = _start_and_pause(source, out)
    for worker in workers:               # decoders that never return: no result will ever come
        os.kill(worker, signal.SIGSTOP)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = _finish(proc, "SIGTERM while its workers were stuck")
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["alexnet: interrupted"], err
    deadline = time.monotonic() + HANG           # ended by prepare (SIGKILL), reaped by init
    while any(process_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.01)
    left = [w for w in workers if process_alive(w)]
    for w in left:
        os.kill(w, signal.SIGKILL)
    assert not left, f"prepare left its stuck workers {left} behind"
    _assert_resumes_to(source, out, reference)
