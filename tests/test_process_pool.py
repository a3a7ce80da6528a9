"""``alexnet.data.process_pool``: results in task order, errors passed on, and never a hang.

Real worker processes throughout. The hangs it exists to prevent: a worker killed while it
writes a result (here: results of 4 MB, far above a pipe's 64 KB, that nobody reads for a
while, so the workers are blocked mid-message), workers that never answer while a stop is
requested (SIGSTOP), and workers left behind by a parent that was killed. Each such test
runs under ``signal.alarm``: a hang fails it instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from alexnet.data.process_pool import ProcessPool, WorkerDied
from data_helpers import process_alive

SAFETY_SECONDS = 60                 # far above any of these runs; reaching it means a hang


def square(x: int) -> int:
    time.sleep(0.001 * (x % 7))     # uneven durations, so that results arrive out of order
    return x * x


def fail_on_13(x: int) -> int:
    if x == 13:
        raise ValueError(f"task {x} refuses")
    return x


def big(x: int) -> np.ndarray:
    return np.full(1 << 22, x % 256, dtype=np.uint8)   # 4 MB: a result written in many pieces


@contextlib.contextmanager
def safety_net(what: str):
    def hung(signum, frame):
        raise AssertionError(f"{what}: no answer within {SAFETY_SECONDS} s (a hang)")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(SAFETY_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)



def test_results_come_in_task_order_and_equal_a_plain_map():
    pool = ProcessPool(2)
    pids = pool.pids
    try:
        with safety_net("imap"):
            got = list(pool.imap(((square, x) for x in range(200)), check=lambda: None, window=8))
    finally:
        pool.close()
    assert got == [x * x for x in range(200)]
    assert not any(process_alive(pid) for pid in pids)


def test_a_task_error_is_raised_in_the_parent_with_its_type_and_message():
    pool = ProcessPool(2)
    try:
        with safety_net("imap"), pytest.raises(ValueError, match="task 13 refuses"):
            for _ in pool.imap(((fail_on_13, x) for x in range(40)), check=lambda: None, window=8):
                pass
    finally:
        pool.close(kill=True)


def test_a_worker_killed_mid_message_is_reported_not_waited_for():
    pool = ProcessPool(2)
    pids = pool.pids
    try:
        with safety_net("a worker killed mid-message"):
            results = pool.imap(((big, x) for x in range(50)), check=lambda: None, window=8)
            assert next(results)[0] == 0
            time.sleep(0.5)    # not read: each worker blocks part-way through writing a result
            os.kill(pids[0], signal.SIGKILL)
            with pytest.raises(WorkerDied) as died:
                for _ in results:
                    pass
    finally:
        pool.close(kill=True)
    assert (died.value.pid, died.value.exitcode, died.value.signal_name) == (pids[0], -9, "SIGKILL")
    assert "signal 9" in str(died.value)
    assert not any(process_alive(pid) for pid in pids)


class Stop(Exception):
    pass


def test_a_stop_request_is_seen_while_no_worker_answers():
    pool = ProcessPool(2)
    pids = pool.pids
    requested = []

    def check():
        if requested:
            raise Stop

    try:
        with safety_net("a stop while the workers are stuck"):
            results = pool.imap(((big, x) for x in range(50)), check=check, window=8)
            next(results)
            for pid in pids:          # stuck, perhaps mid-message: nothing more will come
                os.kill(pid, signal.SIGSTOP)
            requested.append(True)
            with pytest.raises(Stop):
                for _ in results:
                    pass
            pool.close(kill=True)     # a stopped worker too
    finally:
        pool.close(kill=True)
    assert not any(process_alive(pid) for pid in pids)


def test_workers_end_when_their_parent_is_killed(tmp_path):
    script = textwrap.dedent("""
        import os, signal, sys
        from alexnet.data.process_pool import ProcessPool
        pool = ProcessPool(2)
        print(*pool.pids, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    with proc.stdout:                 # the workers hold it open too: read the line, not to the end
        pids = [int(p) for p in proc.stdout.readline().split()]
    assert proc.wait(SAFETY_SECONDS) == -9
    assert len(pids) == 2
    deadline = time.monotonic() + SAFETY_SECONDS
    while any(process_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [pid for pid in pids if process_alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "workers outlived their killed parent"
