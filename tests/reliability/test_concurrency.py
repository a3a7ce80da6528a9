"""Two runs on one folder: the second refuses with one line (the lock); the first is unharmed.

Training: the reference run of conftest.py is the first run. Once it holds the folder's lock it
is paused (SIGSTOP: it keeps the lock but cannot finish, so the overlap is certain on any
machine), and two already-imported commands are started on the same folder: a fresh
``alexnet train`` with the same ``--run.name`` and an ``alexnet train --resume``.
"Unharmed" is checked three ways: the first run finishes (exit 0), its log has each
step exactly once, and its final weights are bit-identical to the crash test's
killed-and-resumed lineage (test_crash.py), which shares nothing with it but the config.

Preparing: two ``alexnet prepare`` processes into the same cache folder. The second is
started once the first has its partial cache (the first paused, as above); it must refuse with one line (the
lock on ``OUT.lock``) while the first is still writing, and the first must finish with a
complete cache whose every file matches the checksum it recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alexnet.data import open_cache
from alexnet.data.cache import verify_cache

from .helpers import Primed, one_line_error, pending, record, wait_for

pytestmark = [pytest.mark.shared, pytest.mark.slow]


def test_second_run_on_same_folder_refuses(reference_run):
    ref = reference_run
    assert ref["locked"], "the reference run never took its lock"
    assert ref["overlapped"], "the reference run finished before the second runs were refused: no overlap tested"
    failures = []
    for case, (rc, stderr) in (("same --run.name", ref["second"]), ("--resume of the running folder", ref["resumer"])):
        problem = one_line_error(rc, stderr, "in use")
        record("concurrency", case, command="train (while another run holds the folder)",
               expected="refused with one line (lock)", outcome=problem or stderr.strip().splitlines()[-1],
               survived=problem is None)
        if problem:
            failures.append(f"{case}: {problem}")

    # The first run is unharmed: finished, every step logged once, config its own.
    run_dir = ref["run_dir"]
    steps = [json.loads(line)["step"] for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    config_text = (run_dir / "config.toml").read_text()
    unharmed = ref["rc"] == 0 and steps == list(range(1, len(steps) + 1)) and 'name = "ref"' in config_text
    record("concurrency", "first run", command="train", expected="finishes unharmed",
           outcome=f"exit {ref['rc']}, {len(steps)} steps logged once each", survived=unharmed)
    assert ref["rc"] == 0, ref["stderr"][-3000:]
    assert steps == list(range(1, len(steps) + 1)), steps
    assert not failures, "\n".join(failures)


def test_second_prepare_into_the_same_folder_refuses(shared_data, tmp_path):
    case, command = "second prepare into the same folder", "prepare (while another prepare writes it)"
    expected = "refused with one line (lock) while the first writes; the first finishes, cache verified"
    pending("concurrency", case, command=command, expected=expected)
    out = tmp_path / "woof"
    partial = Path(str(out) + ".partial")
    source = shared_data / "imagewoof2-160.tar"
    args = ("prepare", source, out, "--size", "64", "--limit", "50", "--workers", "1", "--quiet")
    first = Primed(*args, folder=tmp_path, name="first")
    second = Primed(*args, folder=tmp_path, name="second")
    try:
        first.go()
        assert wait_for(lambda: partial.exists() or first.proc.poll() is not None, 120)
        first.pause()          # holds its lock and its partial cache; cannot finish before the second answers
        rc_second = second.go().wait(120)
        overlapped = first.proc.poll() is None        # the first was still writing when the second gave up
        first.carry_on()
        rc_first = first.wait(300)
    finally:
        first.kill()
        second.kill()
    problem = one_line_error(rc_second, second.stderr, str(out), "another 'alexnet prepare'")
    same = False
    if rc_first == 0:        # complete: 50 per class and split, every file as prepare recorded it
        verify_cache(out, quiet=True)
        same = {s: len(open_cache(out).split(s)) for s in ("train", "val")} == {"train": 500, "val": 500}
    lock_gone = not Path(str(out) + ".lock").exists()
    record("concurrency", case, command=command, expected=expected,
           outcome=(problem or second.stderr.strip().splitlines()[-1]) + f"; first still writing: {overlapped}; "
                   f"first: exit {rc_first}, cache {'complete and verified' if same else 'INCOMPLETE'}",
           survived=problem is None and overlapped and same and lock_gone)
    assert problem is None, problem
    assert overlapped, "the first prepare finished before the second one was refused: nothing was tested"
    assert same, first.stderr[-2000:]
    assert lock_gone
