"""kill -9 at the worst moments: training resumes exactly, a cache is never half-trusted.

Training: one run is killed (SIGKILL: no handler runs, nothing is flushed) four times
- while ``best.safetensors`` is being copied, in the middle of an epoch, during the
validation pass, and while ``last.safetensors`` is being written - and resumed with
``alexnet train --resume`` after each kill. The moments are found by watching the run
folder (temporary checkpoint files, the step log), not by timers. After every kill
each checkpoint in the folder must load (checksum verified) and equal, bit for bit,
the reference run's checkpoint of the same epoch; at the end the weights, optimiser
state and best checkpoint must be bit-identical to the uninterrupted reference run.

Prepare: ``alexnet prepare`` is killed twice while writing; a partial cache must never
open (``open_cache`` refuses it), a cache that opens must be exactly the cache of an
uninterrupted run, and the next run must produce exactly that cache.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from .helpers import Primed, lock_holders, one_line_error, record, same_tensors, wait_for

pytestmark = [pytest.mark.shared, pytest.mark.slow]


def _steps(run_dir: Path) -> list[int]:
    try:
        return [json.loads(line)["step"] for line in (run_dir / "steps.jsonl").read_text().splitlines() if line]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def _epochs(run_dir: Path) -> int:
    try:
        return len((run_dir / "epochs.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def _tmp_files(run_dir: Path, pattern: str) -> list[Path]:
    try:
        return [run_dir / n for n in os.listdir(run_dir) if pattern in n]
    except FileNotFoundError:
        return []


def _check_checkpoints(run_dir: Path, reference: dict) -> list[str]:
    """Every checkpoint in the folder loads and equals the reference run's of the same epoch."""
    from alexnet.errors import UserError
    from alexnet.checkpoint import load_checkpoint
    problems = []
    for name in ("last.safetensors", "best.safetensors"):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            ck = load_checkpoint(path)
        except UserError as exc:
            problems.append(f"{name} does not load after the crash: {exc}")
            continue
        key = (ck.meta["epoch"], ck.meta["batch_in_epoch"])
        if key not in reference:
            problems.append(f"{name}: the reference has no checkpoint at epoch/batch {key}")
            continue
        diff = same_tensors(ck.tensors, load_checkpoint(reference[key]).tensors)
        if diff:
            problems.append(f"{name} (epoch {key}) loads but differs from the reference in {diff[:3]}")
    return problems


def test_kill9_and_resume_is_bit_identical(reference_run, tmp_path):
    ref = reference_run
    assert ref["rc"] == 0, ref["stderr"][-3000:]
    config, runs = ref["config"], tmp_path / "runs"
    run_dir = runs / "crash"
    spe = max(s for s in _steps(ref["run_dir"])) // 3          # steps per epoch of the 3-epoch reference
    logs = tmp_path / "logs"

    # Where to kill, in order along the run (each predicate watches the folder).
    points = [
        ("while best.safetensors is copied (end of epoch 1)",
         lambda pid: _tmp_files(run_dir, "best.safetensors.tmp")
         or ((run_dir / "best.safetensors").exists() and "late")),
        ("mid-epoch (epoch 2)", lambda pid: any(s >= spe + spe // 2 for s in _steps(run_dir))),
        ("during validation (end of epoch 2)",
         lambda pid: 2 * spe in _steps(run_dir) and _epochs(run_dir) < 2
         and not _tmp_files(run_dir, f"last.safetensors.tmp-{pid}")),
        ("while last.safetensors is written (end of epoch 2)",
         lambda pid: _tmp_files(run_dir, f"last.safetensors.tmp-{pid}")),
    ]
    procs = [Primed("train", config, "--run.name", "crash", "--run.out", runs, folder=logs, name="start")]
    procs += [Primed("train", "--resume", run_dir, folder=logs, name=f"resume{i}") for i in range(len(points))]
    failures = []
    try:
        for i, (where, predicate) in enumerate(points):
            proc = procs[i].go()
            hit = wait_for(lambda: predicate(proc.pid) or proc.proc.poll() is not None, timeout=240, interval=0.0005)
            proc.kill()         # and the next resume starts at once (test_resume_right_after_kill9)
            exact = "late" if hit == "late" else ("in the window" if hit and proc.proc.returncode == -9 else "missed")
            if exact == "in the window" and "written" in where or "copied" in where:
                left = _tmp_files(run_dir, ".tmp")
                exact += f", temporary file left: {[p.name for p in left]}" if left else ", write had just finished"
            problems = _check_checkpoints(run_dir, ref["snapshots"])
            if proc.proc.returncode != -9:
                problems.append(f"the process had already exited ({proc.proc.returncode}) before the kill")
            record("crash", f"kill -9 {where}", command="train, then train --resume",
                   expected="every checkpoint loads and is right; resume continues",
                   outcome=f"killed ({exact}); " + ("; ".join(problems) or "checkpoints load and match the reference"),
                   survived=not problems)
            failures += [f"{where}: {p}" for p in problems]
        last = procs[-1].go()
        rc = last.wait(300)
        assert rc == 0, last.stderr[-3000:]
    finally:
        for p in procs:
            p.kill()

    # The end: bit-identical to the uninterrupted run, weights and optimiser and best checkpoint.
    from alexnet.checkpoint import load_checkpoint
    final, reference = load_checkpoint(run_dir / "last.safetensors"), load_checkpoint(ref["run_dir"] / "last.safetensors")
    diff_all = same_tensors(final.tensors, reference.tensors)
    diff_model = same_tensors(final.model_state, reference.model_state)
    ref_best = load_checkpoint(ref["run_dir"] / "best.safetensors")
    if (run_dir / "best.safetensors").exists():
        best = load_checkpoint(run_dir / "best.safetensors")
        best_epoch = best.meta["epoch"]
        best_ok = best_epoch == ref_best.meta["epoch"] and not same_tensors(best.model_state, ref_best.model_state)
    else:
        best_epoch, best_ok = "missing", False
    summary = json.loads((run_dir / "summary.json").read_text())
    ref_summary = json.loads((ref["run_dir"] / "summary.json").read_text())
    record("crash", "final weights after 4 kills", command="train --resume",
           expected="bit-identical to the uninterrupted run (CPU)",
           outcome=f"{len(diff_model)} of {len(final.model_state)} weight tensors differ; "
                   f"{len(diff_all)} of {len(final.tensors)} tensors in all (optimiser, random states)",
           survived=not diff_all)
    record("crash", "best checkpoint after 4 kills", command="train --resume",
           expected="same epoch and weights as the uninterrupted run's best",
           outcome=f"best epoch {best_epoch} vs {ref_best.meta['epoch']}", survived=best_ok)
    assert not diff_model, f"weights differ from the uninterrupted run: {diff_model[:5]}"
    assert not diff_all, f"tensors differ from the uninterrupted run: {diff_all[:5]}"
    assert summary.get("test") == ref_summary.get("test"), (summary.get("test"), ref_summary.get("test"))
    assert best_ok, f"best.safetensors: epoch {best_epoch}, the reference's best is epoch {ref_best.meta['epoch']}"
    assert not failures, "\n".join(failures)


def test_kill9_prepare_never_leaves_a_cache_that_opens_wrong(corpus, tmp_path):
    """``prepare --skip-bad`` of the bad-data corpus killed while writing (as the partial
    cache appears, and a moment later): the partial cache never opens, the final one
    opens only if it is complete and exactly the cache of an uninterrupted ``prepare``
    (run in this process); the next run gives exactly that cache."""
    from alexnet.data import open_cache, prepare
    from alexnet.errors import UserError
    prepare(corpus.root, tmp_path / "reference", size=64, skip_bad=True, workers=1, quiet=True)
    want = open_cache(tmp_path / "reference")

    def same_as_reference(path: Path) -> bool:
        got = open_cache(path)
        return got.classes == want.classes and set(got.splits) == set(want.splits) and all(
            np.array_equal(np.asarray(got.split(s).images), np.asarray(want.split(s).images))
            and np.array_equal(got.split(s).labels, want.split(s).labels)
            and list(got.split(s).files) == list(want.split(s).files) for s in want.splits) and all(
            np.array_equal(got.stats[k], want.stats[k]) for k in want.stats)

    out = tmp_path / "cache"
    partial = Path(str(out) + ".partial")
    args = ("prepare", corpus.root, out, "--size", "64", "--skip-bad", "--workers", "1", "--quiet")
    procs = [Primed(*args, folder=tmp_path / "logs", name=f"p{i}") for i in range(3)]
    failures = []
    try:
        for i, (where, delay) in enumerate((("as the partial cache appears", 0.0), ("a moment later", 0.3))):
            if out.exists():              # the previous kill came after the final rename: start afresh
                shutil.rmtree(out)
            proc = procs[i].go()
            assert wait_for(lambda: partial.exists() or out.exists() or proc.proc.poll() is not None, 120, 0.0005)
            if delay:
                wait_for(lambda: proc.proc.poll() is not None, delay)
            proc.kill()
            outcomes, survived = [], proc.proc.returncode == -9
            try:
                open_cache(partial)
                outcomes.append("partial cache OPENS")
                survived = False
            except UserError:
                outcomes.append("partial cache refused")
            try:
                open_cache(out)
                right = same_as_reference(out)
                outcomes.append("cache complete and identical" if right else "cache OPENS but DIFFERS")
                survived = survived and right
            except UserError:
                outcomes.append("cache refused")
            record("crash", f"kill -9 prepare {where}", command="prepare",
                   expected="no cache opens unless complete and right", survived=survived,
                   outcome=", ".join(outcomes) + f" (exit {proc.proc.returncode})")
            if not survived:
                failures.append(f"{where}: {outcomes}, exit {proc.proc.returncode}")
        rc = procs[2].go().wait(300)
        assert rc == 0, procs[2].stderr[-3000:]
    finally:
        for p in procs:
            p.kill()
    same = same_as_reference(out)
    record("crash", "prepare re-run after 2 kills", command="prepare", expected="identical to an uninterrupted prepare",
           outcome="identical" if same else "DIFFERENT", survived=same)
    assert same
    assert not failures, "\n".join(failures)


def test_resume_right_after_kill9(reference_run, tmp_path):
    """A user who kills a run (kill -9, OOM killer) and resumes at once is not told the
    folder is in use by the dead process. (It was: the run-folder lock was a ``flock``,
    shared with the DataLoader worker processes forked after it was taken, which outlive
    their parent by up to ~5 s. Fixed by taking a POSIX ``lockf`` lock, which forked
    children do not inherit.)"""
    ref = reference_run
    runs = tmp_path / "runs"
    run_dir = runs / "k"
    first = Primed("train", ref["config"], "--run.name", "k", "--run.out", runs, folder=tmp_path, name="first")
    again = Primed("train", "--resume", run_dir, "--train.epochs", "1", folder=tmp_path, name="again")
    try:
        first.go()
        # after the first checkpoint, mid-way through epoch 2 (the loader workers are running)
        spe = max(_steps(ref["run_dir"])) // 3
        assert wait_for(lambda: any(s > spe + 1 for s in _steps(run_dir)) or first.proc.poll() is not None, 240)
        first.kill()
        holders = lock_holders(run_dir / ".lock")
        rc = again.go().wait(300)
    finally:
        first.kill()
        again.kill()
    refused = one_line_error(rc, again.stderr, "in use") is None
    record("crash", "resume immediately after kill -9", command="train --resume",
           expected="resumes (the dead run's lock is gone)",
           outcome=(f"refused: {again.stderr.strip().splitlines()[-1]} (lock still held by orphaned "
                    f"processes {holders})") if refused else f"exit {rc}", survived=rc == 0)
    assert rc == 0, again.stderr[-2000:]


def test_best_checkpoint_survives_a_crash_between_last_and_best(reference_run, tmp_path):
    """The on-disk state of a kill -9 between the two renames at the end of epoch 1 (last
    written, best not yet), produced exactly: a 1-epoch run, minus its best.safetensors.
    With lr = 0 the validation error never improves after epoch 1, so epoch 1 stays the
    best; after resuming to 3 epochs, best.safetensors must hold epoch 1. (It stayed
    missing: best was only copied on a later improvement. Fixed: resume repairs it.)"""
    from alexnet.checkpoint import load_checkpoint
    runs = tmp_path / "runs"
    run_dir = runs / "b"
    first = Primed("train", reference_run["config"], "--run.name", "b", "--run.out", runs, "--train.epochs", "1",
                   "--optim.lr", "0", "--schedule.kind", "constant", folder=tmp_path, name="first")
    again = Primed("train", "--resume", run_dir, "--train.epochs", "3", folder=tmp_path, name="again")
    try:
        assert first.go().wait(300) == 0, first.stderr[-2000:]
        (run_dir / "best.safetensors").unlink()
        assert again.go().wait(300) == 0, again.stderr[-2000:]
    finally:
        first.kill()
        again.kill()
    summary = json.loads((run_dir / "summary.json").read_text())
    best = run_dir / "best.safetensors"
    epoch = load_checkpoint(best).meta["epoch"] if best.exists() else "missing"
    record("crash", "kill -9 between last and best (exact state)", command="train --resume",
           expected="best.safetensors repaired: holds the best epoch", outcome=f"best.safetensors: epoch {epoch}, "
           f"summary best_epoch {summary.get('best_epoch')}", survived=epoch == summary.get("best_epoch") == 1)
    assert epoch == summary.get("best_epoch") == 1, (epoch, summary.get("best_epoch"))
