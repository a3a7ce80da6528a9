"""Helpers of the reliability suite (issue 7): running the CLI, judging its output, the ledger.

Everything runs the real ``alexnet`` commands as subprocesses on real files. Two
things keep the suite inside its budget on a 2-core machine:

* ``run_many``: several CLI invocations in *one* subprocess (``alexnet.cli.main`` called
  once per argument list, each with its own captured stdout/stderr and exit status;
  an uncaught exception is recorded as a crash with its traceback), so a dozen
  bad-input cases pay for one ``import torch``, not twelve.
* session-scoped data: the bad-data corpus and a small real CIFAR-10 cache are built
  once and shared.

The ledger: every case a test tries is recorded with its documented outcome and what
happened. A test announces its cases when it starts (:func:`pending`: "not reached",
not survived) and fills each in when its outcome is known (:func:`record`), so a test
that stops early leaves its unreached cases on the ledger as failures instead of
leaving them out; a failing test also adds a row of its own (conftest.py). With
``ALEXNET_RELIABILITY_REPORT=FILE`` the ledger is written to FILE as JSON at the end of
the session, with pytest's exit status (``python -m tests.reliability.report`` does
that and prints the tables of ``docs/reliability.md``).

A *case* is one distinct input or fault (``key``; by default the case's name); the same
input tried through several commands is one case with several tries, and the plain
valid files of the corpus are one case, however many files it has.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
LEDGER: list[dict] = []
CURRENT = {"test": None}          # the test running now (set by conftest.py)
NOT_REACHED = "not reached: the test stopped before this case's outcome was known"


def _row(area: str, case: str, command: str, expected: str, key: str | None) -> dict:
    return {"area": area, "case": case, "key": key or case, "command": command, "expected": expected,
            "outcome": NOT_REACHED, "survived": False, "lost": 0, "detail": "", "test": CURRENT["test"]}


def pending(area: str, case: str, *, command: str, expected: str, key: str | None = None) -> None:
    """Put a case on the ledger as the test starts: not survived until :func:`record` says otherwise."""
    LEDGER.append(_row(area, case, command, expected, key))


def record(area: str, case: str, *, command: str, expected: str, outcome: str, survived: bool,
           lost: int = 0, detail: str = "", key: str | None = None) -> None:
    """One case tried: what must happen, what did, and how many valid inputs were lost.
    Fills in the row :func:`pending` made for (area, case, command), or adds one."""
    row = next((r for r in LEDGER if r["area"] == area and r["case"] == case and r["command"] == command
                and r["outcome"] == NOT_REACHED and r["test"] == CURRENT["test"]), None)
    if row is None:
        row = _row(area, case, command, expected, key)
        LEDGER.append(row)
    row.update(expected=expected, outcome=outcome, survived=bool(survived), lost=int(lost), detail=detail[:300])
    if key:
        row["key"] = key


def write_ledger(exitstatus: int) -> None:
    path = os.environ.get("ALEXNET_RELIABILITY_REPORT")
    if path:
        Path(path).write_text(json.dumps({"exitstatus": int(exitstatus), "records": LEDGER}, indent=1,
                                         ensure_ascii=False))


# ----------------------------------------------------------------------------- running the CLI

def cli_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    env.update(extra or {})
    return env


def alexnet_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "alexnet", *map(str, args)]


def run(*args, timeout: float = 300, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """``alexnet ARGS`` as a real subprocess (stdout/stderr captured as text)."""
    return subprocess.run(alexnet_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env=cli_env(env), **kwargs)


_MANY = r"""
import contextlib, io, json, sys, traceback
from alexnet.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    crash = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            rc, crash = None, traceback.format_exc()
    results.append({"argv": argv, "rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue(), "crash": crash})
print(json.dumps(results))
"""


def run_many(argvs: list[list[str]], timeout: float = 300, env: dict | None = None) -> list[dict]:
    """Several ``alexnet`` invocations in one subprocess: [{"argv", "rc", "stdout", "stderr", "crash"}]."""
    proc = subprocess.run([sys.executable, "-c", _MANY, json.dumps([[str(a) for a in argv] for argv in argvs])],
                          capture_output=True, text=True, timeout=timeout, env=cli_env(env))
    assert proc.returncode == 0, f"runner failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("alexnet: error:")]


def one_line_error(rc, stderr: str, *must_contain: str, crash: str | None = None) -> str | None:
    """None when the outcome is the documented one: exit 2, exactly one ``alexnet: error:``
    line containing every string of ``must_contain``, and no traceback. Else what is wrong."""
    if crash:
        return f"crashed with a traceback: {crash.strip().splitlines()[-1]}"
    if "Traceback (most recent call last)" in stderr:
        return f"traceback on stderr: {stderr.strip().splitlines()[-1]}"
    if rc != 2:
        return f"exit status {rc}, expected 2; stderr: {stderr.strip()[-300:]}"
    lines = error_lines(stderr)
    if len(lines) != 1:
        return f"{len(lines)} error lines, expected 1: {lines[:3]}"
    missing = [s for s in must_contain if s.lower() not in lines[0].lower()]
    if missing:
        return f"error line lacks {missing}: {lines[0]}"
    return None


def wait_for(predicate, timeout: float, interval: float = 0.002):
    """Poll ``predicate`` until it returns something truthy; that value, or None on timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None




# ----------------------------------------------------------------------------- primed processes

_PRIMED = r"""
import json, sys
import torch                                  # the expensive imports happen before the go signal,
import alexnet.cli, alexnet.data, alexnet.train.trainer   # so the command starts the moment it is told to
argv = json.loads(sys.argv[1])
sys.stdin.readline()
raise SystemExit(alexnet.cli.main(argv))
"""


class Primed:
    """``alexnet ARGS`` in a subprocess that imports everything first, then waits for :meth:`go`.

    Lets a test start a command at a precise moment (a second run the instant the first
    holds its lock; the next resume the instant the previous process is killed) without
    paying ``import torch`` on the clock. Output goes to files (no pipe can fill up).
    """

    def __init__(self, *args, folder: Path, name: str, env: dict | None = None, preexec_fn=None):
        folder.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = folder / f"{name}.stdout", folder / f"{name}.stderr"
        self._out, self._err = open(self.out_path, "w"), open(self.err_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-c", _PRIMED, json.dumps([str(a) for a in args])],
                                     stdin=subprocess.PIPE, stdout=self._out, stderr=self._err, env=cli_env(env),
                                     preexec_fn=preexec_fn)
        self.pid = self.proc.pid

    def go(self) -> "Primed":
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.close()
        return self

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._out.close()
            self._err.close()

    def pause(self) -> None:
        """SIGSTOP: the process keeps everything it holds (its locks, its open files) but does
        no work until :meth:`carry_on`, so a test can act "while it runs" without a race."""
        self.proc.send_signal(signal.SIGSTOP)

    def carry_on(self) -> None:
        """SIGCONT: undo :meth:`pause`."""
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL (no handler runs) unless it has already exited; then reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.wait(30)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")


def lock_holders(path: Path) -> list[int]:
    """PIDs of processes with ``path`` open (read from /proc/*/fd)."""
    target, pids = str(path.resolve()), set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") == target:
                    pids.add(int(entry))
        except OSError:
            continue
    return sorted(pids)


def same_tensors(a: dict, b: dict) -> list[str]:
    """Names whose tensors differ in any bit (empty list: bit-identical)."""
    if a.keys() != b.keys():
        return sorted(set(a) ^ set(b))
    return [k for k in a if not (a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                                 and torch.equal(a[k].view(-1).view(torch.uint8), b[k].view(-1).view(torch.uint8)))]


def tiny_config(path: Path, cache: Path, runs: Path, *, epochs: int = 3, batch: int = 16, workers: int = 2,
                extra: str = "") -> Path:
    """A small real training configuration: alexnet_small (narrow) on the small CIFAR-10 cache."""
    path.write_text(f"""# reliability suite: a few seconds per epoch on 2 CPU cores
[data]
cache = "{cache}"
size = 32
crop = 28
mean = "channel"
scale = "std"
workers = {workers}

[model]
name = "alexnet_small"
kwargs = {{ widths = [16, 32, 48, 48, 32], hidden = 128 }}

[optim]
lr = 0.02

[train]
epochs = {epochs}
batch_size = {batch}
log_every = 1
stall_steps = 0

[run]
out = "{runs}"
progress = false
plots = false
{extra}""")
    return path
