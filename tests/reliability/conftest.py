"""Fixtures of the reliability suite (issue 7); the helpers are in helpers.py."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

from alexnet.checkpoint import load_checkpoint

from . import helpers
from .corpus import build_corpus
from .helpers import Primed, run, tiny_config, wait_for, write_ledger


def pytest_sessionfinish(session, exitstatus):
    write_ledger(exitstatus)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(autouse=True)
def _ledger_rows(request):
    """Tie each ledger row to its test; a failing (or erroring) test adds a row of its own,
    not survived, so the ledger never shows a failed run as all green."""
    nodeid = request.node.nodeid
    helpers.CURRENT["test"] = nodeid
    yield
    reports = [getattr(request.node, f"report_{w}", None) for w in ("setup", "call")]
    failed = [r for r in reports if r is not None and r.failed]
    if failed:
        text = str(failed[0].longrepr).strip().splitlines()
        own = [r["area"] for r in helpers.LEDGER if r["test"] == nodeid]
        area = own[-1] if own else request.node.module.__name__.rsplit(".", 1)[-1][5:].replace("_", " ")
        helpers.LEDGER.append({**helpers._row(area, f"test failed: {request.node.name}", "pytest", "the test passes",
                                              None), "outcome": (text[-1] if text else "failed")[:300]})
    helpers.CURRENT["test"] = None


# ----------------------------------------------------------------------------- shared data

@pytest.fixture(scope="session")
def corpus(shared_data, tmp_path_factory):
    """The full bad-data corpus as a folder tree (see corpus.py)."""
    return build_corpus(tmp_path_factory.mktemp("corpus") / "dataset", shared_data)


@pytest.fixture(scope="session")
def small_cache(shared_data, tmp_path_factory) -> Path:
    """A small real cache: CIFAR-10 (the shared JPEG tarball), 16 images per class and
    split, stored at 32 px (160 + 160 images). Built once by the real ``alexnet prepare``."""
    out = tmp_path_factory.mktemp("cifar") / "cifar10-small"
    proc = run("prepare", shared_data / "cifar10-jpg.tar.gz", out, "--size", "32", "--limit", "16", "--quiet")
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="session")
def reference_run(small_cache, tmp_path_factory) -> dict:
    """An uninterrupted tiny training run (3 epochs), the reference for every crash test.

    While it runs (paused, holding its lock), two more commands are pointed at its run
    folder: a fresh run with the same name and a ``--resume`` of it (both must refuse,
    test_concurrency.py). A watcher copies ``last.safetensors`` each time it is replaced,
    so the per-epoch checkpoints of the reference are kept for comparison.
    """


    base = tmp_path_factory.mktemp("reference")
    runs = base / "runs"
    config = tiny_config(base / "tiny.toml", small_cache, runs)
    run_dir = runs / "ref"
    logs = base / "logs"
    main = Primed("train", config, "--run.name", "ref", folder=logs, name="ref")
    second = Primed("train", config, "--run.name", "ref", folder=logs, name="second")
    resumer = Primed("train", "--resume", run_dir, folder=logs, name="resumer")
    snapshots = base / "snapshots"
    snapshots.mkdir()
    stop = threading.Event()

    def watch():
        last, seen = run_dir / "last.safetensors", None
        while not stop.is_set():
            try:
                stamp = last.stat().st_mtime_ns, last.stat().st_ino
            except FileNotFoundError:
                stamp = None
            if stamp and stamp != seen:
                seen = stamp
                try:
                    shutil.copyfile(last, snapshots / f"last-{len(list(snapshots.iterdir())):03d}.safetensors")
                except FileNotFoundError:
                    seen = None
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    main.go()
    try:
        locked = wait_for(lambda: (run_dir / ".lock").exists() and (run_dir / "config.toml").exists(), 120)
        # Paused, the first run keeps its lock but cannot finish, however fast this machine
        # is: the overlap is certain, not a race. It carries on once both have answered.
        if locked:
            main.pause()
        second.go()
        resumer.go()
        rc_second, rc_resumer = second.wait(120), resumer.wait(120)
        still_running_after = main.proc.poll() is None
        main.carry_on()
        rc_main = main.wait(300)
    finally:
        stop.set()
        watcher.join()
        for p in (main, second, resumer):
            p.kill()
    by_epoch = {}
    for snap in sorted(snapshots.iterdir()):
        ck = load_checkpoint(snap)
        by_epoch[(ck.meta["epoch"], ck.meta["batch_in_epoch"])] = snap
    return {"config": config, "run_dir": run_dir, "rc": rc_main, "stderr": main.stderr, "locked": bool(locked),
            "second": (rc_second, second.stderr), "resumer": (rc_resumer, resumer.stderr),
            "overlapped": still_running_after, "snapshots": by_epoch, "base": base}
