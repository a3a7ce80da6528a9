"""Two runs on one run folder: the second refuses with one line (the lock); the first is unharmed.

The reference run of conftest.py is the first run. The instant it holds the folder's
lock, two already-imported commands are started on the same folder: a fresh
``alexnet train`` with the same ``--run.name`` and an ``alexnet train --resume``.
"Unharmed" is checked three ways: the first run finishes (exit 0), its log has each
step exactly once, and its final weights are bit-identical to the crash test's
killed-and-resumed lineage (test_crash.py), which shares nothing with it but the config.
"""

from __future__ import annotations

import json

import pytest

from .helpers import one_line_error, record

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
