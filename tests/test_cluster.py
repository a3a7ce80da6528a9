"""What clusters expect: restarts that resume by themselves, another world size, periodic checkpoints, two nodes.

Real jobs only: ``torchrun`` (gloo, CPU) with real worker processes, real SIGKILLs, real files.
The tiny model of tests/train_support.py on 320 Fashion-MNIST images, batch 16: 20 steps
an epoch, a checkpoint every 5 steps (``step-*.safetensors``, the newest 2 kept). A kill waits
for a step marker in ``steps.jsonl`` after the first periodic checkpoint and then asserts that it
landed (the process was still running and died of the signal; the resume line names the batch).
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alexnet.checkpoint import load_checkpoint
from alexnet.errors import UserError
from alexnet.train import config as config_module
from alexnet.train.config import ALLOWED, RESUME_CHANGEABLE, load_config, resume_config
from alexnet.train.rundir import RunFolder
from train_support import checkpoint_tensors, last_step, one_line_error, tiny_kwargs_arg, wait_for

pytestmark = pytest.mark.slow
STEPS_PER_EPOCH = 20         # 320 images / batch 16
EVERY = 5
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def run_args(cache: Path, out: Path, name: str, *extra: str, epochs: int = 2) -> list[str]:
    """A small deterministic run with periodic checkpoints; no --quiet: the tests read its status lines."""
    return ["train", "fashion-mnist", "--data.cache", str(cache), "--run.out", str(out), "--run.name", name,
            "--model.kwargs", tiny_kwargs_arg(), "--train.epochs", str(epochs), "--train.batch_size", "16",
            "--train.log_every", "1", "--train.threads", "1", "--optim.lr", "0.02", "--data.workers", "0",
            "--data.train_subset", "320", "--data.val_subset", "64", "--run.plots", "false",
            "--train.checkpoint_every_steps", str(EVERY), "--train.keep_checkpoints", "2", *extra]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "alexnet", *args]


def torchrun(*args: str, nproc: int = 2, launcher: tuple[str, ...] = ("--standalone",)) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher, f"--nproc-per-node={nproc}",
            "-m", "alexnet", *args]


def run(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants_with_rank(pid: int, rank: int) -> list[int]:
    """Processes started by ``pid`` whose environment says RANK=rank (torchrun's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid and f"RANK={rank}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def assert_same_weights(run_dir: Path, reference: Path) -> None:
    a = checkpoint_tensors(reference / "last.safetensors")
    b = checkpoint_tensors(run_dir / "last.safetensors")
    assert a.keys() == b.keys() and len(a) > 20
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ from the uninterrupted run: {different[:5]}"


def steps_logged(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "steps.jsonl").read_text().splitlines()]


def kill_after_checkpoint(proc: subprocess.Popen, run_dir: Path, victim, checkpoint: int = EVERY) -> int:
    """SIGKILL ``victim()`` (a pid) once the checkpoint of step ``checkpoint`` is kept and a later step is
    logged; returns the step logged at the kill."""
    wait_for(lambda: last_step(run_dir) > checkpoint and (run_dir / f"step-{checkpoint:08d}.safetensors").is_file(),
             timeout=240, proc=proc, interval=0.01)
    pid = victim()
    os.kill(pid, signal.SIGKILL)
    return last_step(run_dir)


@pytest.fixture(scope="module")
def references(fmnist_cache, tmp_path_factory):
    """Uninterrupted runs (made once, on first use): 'single' (1 process) and 'ddp' (torchrun, 2)."""
    out = tmp_path_factory.mktemp("cluster-ref")
    made = {}

    def get(kind: str) -> Path:
        if kind not in made:
            args = run_args(fmnist_cache, out, kind)
            run(torchrun(*args) if kind == "ddp" else cli(*args))
            made[kind] = out / kind
        return made[kind]
    return get


# ----------------------------------------------------------------------------- periodic checkpoints

def test_periodic_checkpoints_keep_the_newest_k_besides_last_and_best(references):
    run_dir = references("single")
    kept = sorted(p.name for p in run_dir.glob("*.safetensors"))
    # 40 steps, a checkpoint every 5 (the epoch ends, 20 and 40, among them): the newest two stay.
    assert kept == ["best.safetensors", "last.safetensors", "step-00000035.safetensors", "step-00000040.safetensors"]
    assert (run_dir / "step-00000040.safetensors").read_bytes() == (run_dir / "last.safetensors").read_bytes()
    mid = load_checkpoint(run_dir / "step-00000035.safetensors").meta
    assert (mid["step"], mid["epoch"], mid["batch_in_epoch"], mid["samples_in_epoch"]) == (35, 1, 15, 15 * 16)
    assert mid["status"] == "running" and mid["partial"]["seen"] == 15 * 16


def test_checkpoints_every_m_minutes_land_mid_epoch(fmnist_cache, tmp_path):
    # 30 ms between checkpoints, none by steps, all kept: a 20-step epoch takes 0.2 s or more here.
    run(cli(*run_args(fmnist_cache, tmp_path, "timed", "--train.checkpoint_every_steps", "0",
                      "--train.checkpoint_every_minutes", "0.0005", "--train.keep_checkpoints", "0", epochs=1)))
    steps = sorted(int(p.name[5:13]) for p in (tmp_path / "timed").glob("step-*.safetensors"))
    assert steps[-1] == STEPS_PER_EPOCH and len(steps) >= 3, steps     # the epoch end and timed ones
    for step in steps[:-1]:
        meta = load_checkpoint(tmp_path / "timed" / f"step-{step:08d}.safetensors").meta
        assert (meta["epoch"], meta["batch_in_epoch"], meta["step"]) == (0, step, step)
    times = [json.loads(x)["step"] for x in (tmp_path / "timed" / "steps.jsonl").read_text().splitlines()]
    assert times == list(range(1, STEPS_PER_EPOCH + 1))


def folder_bytes(run_dir: Path) -> dict[str, bytes]:
    """Every file of ``run_dir`` by name: a refusal must leave this unchanged."""
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file()}


def killed_after_two_checkpoints(cache: Path, out: Path, name: str, *extra: str) -> tuple[Path, int]:
    """A run SIGKILLed after its checkpoint of step 10 (steps 5 and 10 kept): (folder, newest kept step)."""
    run_dir = out / name
    proc = subprocess.Popen(cli(*run_args(cache, out, name, *extra)), env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    at = kill_after_checkpoint(proc, run_dir, lambda: proc.pid, 2 * EVERY)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before the kill landed"
    assert at < 2 * STEPS_PER_EPOCH
    kept = sorted(int(p.name[5:13]) for p in run_dir.glob("step-*.safetensors"))
    assert len(kept) == 2, kept                   # an older one to fall back to by mistake
    assert load_checkpoint(run_dir / "last.safetensors").meta["step"] >= kept[-1]
    return run_dir, kept[-1]


@pytest.mark.parametrize("damage, resume", [("torn", "dir"), ("missing", "auto")])
def test_a_corrupt_or_missing_last_falls_back_to_the_newest_valid_checkpoint(fmnist_cache, tmp_path, references,
                                                                             damage, resume):
    """``last`` cut in half (``--resume RUN``), or gone (deleted, lost with a disk: ``--resume auto``, the
    restarted job): the resume takes the newest valid step file, says so, and ends as an uninterrupted run.
    A folder with step files but no ``last`` is never taken for a fresh one: a plain start there is
    refused, and so is ``--resume auto`` when none of its checkpoints is valid; both write nothing."""
    extra = ("--resume", "auto") if resume == "auto" else ()
    run_dir, newest = killed_after_two_checkpoints(fmnist_cache, tmp_path, "cut", *extra)
    last = run_dir / "last.safetensors"
    if damage == "torn":
        with open(last, "r+b") as f:
            f.truncate(last.stat().st_size // 2)
        problem = f"alexnet: warning: {last}: "
    else:
        last.unlink()
        problem = f"alexnet: warning: {last}: no such checkpoint file; "
        before = folder_bytes(run_dir)
        fresh = subprocess.run(cli(*run_args(fmnist_cache, tmp_path, "cut")), capture_output=True, text=True,
                               env=ENV, timeout=120)
        one_line_error(fresh, f"{run_dir}: already holds a run; continue it with --resume")
        broken = tmp_path / "broken"                 # the same folder with every checkpoint torn
        shutil.copytree(run_dir, broken)
        for step_file in broken.glob("step-*.safetensors"):
            with open(step_file, "r+b") as f:
                f.truncate(100)
        broken_before = folder_bytes(broken)
        refused = subprocess.run(cli(*run_args(fmnist_cache, tmp_path, "broken", *extra)), capture_output=True,
                                 text=True, env=ENV, timeout=120)
        one_line_error(refused, f"{broken}: holds checkpoints but none is valid", "will not start the run over")
        assert folder_bytes(broken) == broken_before and folder_bytes(run_dir) == before
    same_command = run_args(fmnist_cache, tmp_path, "cut", *extra)
    resumed = run(cli(*(same_command if resume == "auto" else ["train", "--resume", str(run_dir)])))
    notes = [line for line in resumed.stderr.splitlines() if "newest valid checkpoint" in line]
    assert len(notes) == 1, resumed.stderr[-3000:]
    assert notes[0].startswith(problem), notes[0]
    assert f"step-{newest:08d}.safetensors (step {newest})" in notes[0]
    assert f"resuming {run_dir} at epoch {newest // STEPS_PER_EPOCH + 1}, step {newest}" in resumed.stderr
    assert_same_weights(run_dir, references("single"))
    assert steps_logged(run_dir) == list(range(1, 2 * STEPS_PER_EPOCH + 1))


# ----------------------------------------------------------------------------- torchrun --max-restarts

def test_torchrun_restart_resumes_by_itself_and_ends_as_an_uninterrupted_run(fmnist_cache, tmp_path, references):
    run_dir = tmp_path / "elastic"
    command = torchrun(*run_args(fmnist_cache, tmp_path, "elastic", "--resume", "auto"),
                       launcher=("--standalone", "--max-restarts=1"))
    proc = subprocess.Popen(command, env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    victims = []

    def rank1():
        victims.extend(descendants_with_rank(proc.pid, 1))
        assert len(victims) == 1, victims
        return victims[0]
    at = kill_after_checkpoint(proc, run_dir, rank1)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-4000:]
    assert at < 2 * STEPS_PER_EPOCH, "the run ended before the kill landed"
    assert "failed (exitcode: -9) local_rank: 1" in err, err[-3000:]          # torchrun saw the kill...
    resumed = [line for line in err.splitlines() if f"resuming {run_dir}" in line]
    assert len(resumed) == 1 and "after torchrun restart 1" in resumed[0], err[-3000:]   # ...and restarted
    assert "(batch " in resumed[0], f"expected a mid-epoch resume: {resumed[0]}"
    assert_same_weights(run_dir, references("ddp"))
    assert steps_logged(run_dir) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert json.loads((run_dir / "summary.json").read_text())["world_size"] == 2


def test_resume_auto_and_resume_dir_continue_and_refuse_by_one_rule(fmnist_cache, tmp_path, references):
    """``--resume auto`` (the job restarted) and ``--resume RUN``: both continue the run with a changed
    setting that a resume may change (reporting, workers, length) and both refuse, in one line naming
    the key and writing nothing, one that it may not (the learning rate)."""
    base = run_args(fmnist_cache, tmp_path, "auto", "--resume", "auto")
    run_dir, newest = killed_after_two_checkpoints(fmnist_cache, tmp_path, "auto", "--resume", "auto")
    before = folder_bytes(run_dir)
    for command in (base, ["train", "--resume", str(run_dir)]):
        other = subprocess.run(cli(*command, "--optim.lr", "0.05"), capture_output=True, text=True, env=ENV,
                               timeout=120)
        one_line_error(other, f"{run_dir}: cannot resume with a different optim.lr (0.02 in the run, 0.05 here)",
                       *(["--resume auto continues only the same run"] if "auto" in command else []))
        assert folder_bytes(run_dir) == before
    restarted = run(cli(*base, "--train.log_every", "2", "--data.workers", "1"))
    assert f"resuming {run_dir} at epoch 1, step {newest} (batch {newest} of the epoch)" in restarted.stderr, \
        restarted.stderr[-2000:]
    assert_same_weights(run_dir, references("single"))          # continued, not started over
    saved = json.loads((run_dir / "config.json").read_text())
    assert (saved["train"]["log_every"], saved["data"]["workers"]) == (2, 1)
    by_dir = run(cli("train", "--resume", str(run_dir), "--train.epochs", "3", "--data.workers", "0"))
    assert f"resuming {run_dir} at epoch 3, step {2 * STEPS_PER_EPOCH}" in by_dir.stderr, by_dir.stderr[-2000:]
    assert load_checkpoint(run_dir / "last.safetensors").meta["step"] == 3 * STEPS_PER_EPOCH

    no_name = list(base)
    no_name[no_name.index("--run.name") + 1] = ""
    unnamed = subprocess.run(cli(*no_name), capture_output=True, text=True, env=ENV, timeout=120)
    assert unnamed.returncode == 2 and "needs a fixed --run.name" in unnamed.stderr


def changed_value(key: str, value):
    """Another valid value for the setting ``key`` (None when no other value passes load_config)."""
    if key == "data.size":
        return None               # the run's existing cache fixes it: load_config refuses another (data.cache)
    new = _changed_value(key, value)
    spec = config_module.SETTINGS.get(key)         # None for a model option (model.kwargs.*)
    valid = new is not None and (spec is None or spec.problem(new)[1] is None)       # within its declared range
    if valid:
        return new
    # train.init_from names a checkpoint that must exist: not changed here (a resume refuses it like any setting)
    return {"optim.momentum": lambda: value / 2, "train.device": lambda: "cpu",
            "schedule.milestones": lambda: [1]}.get(key, lambda: None)()


def _changed_value(key: str, value):
    allowed = ALLOWED.get(tuple(key.split(".")))
    if allowed:
        return next(a for a in allowed if not (a == value and type(a) is type(value)))
    if key == "train.val_every":
        return None               # 1 is the only value the plateau schedule takes
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value - 1 if key == "data.crop" else value + 1      # crop <= size
    if isinstance(value, float):
        return value + 0.5
    if isinstance(value, str):
        return {"run.resume": "auto", "model.name": "alexnet"}.get(key, value + "-other")
    if isinstance(value, list):
        return [v + 1 for v in value] if value and isinstance(value[0], int) else (value or ["cpu", "cpu"])[:1] * 2
    raise AssertionError(f"{key}: no other value for {value!r}")


def nested(key: str, value) -> dict:
    out: dict = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


# Settings that only apply with train.init_from: refused alone before any resume check.
INIT_FROM_ONLY = {"data.stats_from", "train.freeze_epochs", "train.freeze_loaded", "train.loaded_lr_scale"}


def test_resume_auto_and_resume_dir_agree_on_every_setting(references):
    """For every setting of the configuration, changed alone on a real run folder: ``--resume auto``'s
    check (RunFolder.auto_resume) and ``--resume RUN``'s (resume_config) give the same verdict, and it is the
    allow-list's - continue for the keys of RESUME_CHANGEABLE, refuse naming the key for all others."""
    run_dir = references("single")
    toml = run_dir / "config.toml"
    assert RunFolder(run_dir).auto_resume(load_config(toml).to_dict()) is True       # unchanged: the same run
    flat = config_module._flatten(load_config(toml).to_dict())
    flat.pop("preset")
    checked, verdicts = set(), {}
    for key, value in flat.items():
        new = changed_value(key, value)
        if new is None:
            continue
        overrides = nested(key, new)
        try:
            wanted = load_config(toml, overrides)
        except UserError as exc:     # a fine-tuning setting means nothing without train.init_from
            assert "train.init_from" in str(exc) and key in INIT_FROM_ONLY, (key, str(exc))
            continue
        outcomes = []
        checks = (lambda wanted=wanted: RunFolder(run_dir).auto_resume(wanted.to_dict()),
                  lambda overrides=overrides: resume_config(run_dir, overrides))
        for check in checks:
            try:
                check()
                outcomes.append("continue")
            except UserError as exc:
                assert f"cannot resume with a different {key} (" in str(exc), (key, str(exc))
                outcomes.append("refuse")
        verdicts[key] = outcomes
        checked.add(key)
    expected = {k: ["continue"] * 2 if k in RESUME_CHANGEABLE else ["refuse"] * 2 for k in checked}
    assert verdicts == expected
    assert RESUME_CHANGEABLE - {"train.val_every"} <= checked and len(checked) > 50, sorted(checked)


# ----------------------------------------------------------------------------- another world size

def sample_records(run_dir: Path) -> dict[int, list[dict]]:
    return {int(p.stem.rsplit("rank", 1)[1]): [json.loads(x) for x in p.read_text().splitlines()]
            for p in run_dir.glob("samples-rank*.jsonl")}


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_resume_on_another_world_size_sees_every_image_of_the_epoch_once(fmnist_cache, tmp_path, before, after):
    run_dir = tmp_path / "resize"
    args = run_args(fmnist_cache, tmp_path, "resize", "--train.log_samples", "true", epochs=1)
    proc = subprocess.Popen(torchrun(*args) if before == 2 else cli(*args), env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    victim = (lambda: descendants_with_rank(proc.pid, 1)[0]) if before == 2 else (lambda: proc.pid)
    at = kill_after_checkpoint(proc, run_dir, victim)
    proc.communicate(timeout=120)
    assert proc.returncode != 0 and at < STEPS_PER_EPOCH, "the run ended before the kill landed"
    cut = load_checkpoint(run_dir / "last.safetensors").meta
    assert cut["world_size"] == before and cut["epoch"] == 0 and 0 < cut["batch_in_epoch"] < STEPS_PER_EPOCH
    resume = ["train", "--resume", str(run_dir)]
    second = run(torchrun(*resume) if after == 2 else cli(*resume))
    assert f"resuming a run of {before} processes on {after}" in second.stderr, second.stderr[-3000:]
    records = sample_records(run_dir)
    assert sorted(records) == [0, 1]
    k = cut["step"]
    first_half = [r for rank in range(before) for r in records[rank] if r["step"] <= k]
    second_half = [r for rank in range(after) for r in records[rank] if r["step"] > k]
    assert len(first_half) == before * k and len(second_half) == after * (STEPS_PER_EPOCH - k)
    assert all(r["epoch"] == 0 for r in first_half + second_half)
    seen = collections.Counter(i for r in first_half + second_half for i in r["indices"])
    assert seen == collections.Counter(range(320)), "an image of the epoch was skipped or seen twice"
    assert sum(len(r["indices"]) for r in first_half) == 16 * k
    assert json.loads((run_dir / "summary.json").read_text())["world_size"] == after


# ----------------------------------------------------------------------------- two nodes

def test_two_torchrun_agents_on_one_machine_equal_one_two_process_node(fmnist_cache, tmp_path, references):
    port = free_port()
    args = run_args(fmnist_cache, tmp_path, "nodes")
    agents = []
    for node in (0, 1):
        agents.append(subprocess.Popen(
            torchrun(*args, nproc=1, launcher=("--nnodes=2", f"--node-rank={node}", "--rdzv-backend=c10d",
                                               f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=alexnet-nodes")),
            env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True))
    try:
        outputs = [a.communicate(timeout=300) for a in agents]
    finally:
        for a in agents:
            if a.poll() is None:
                os.killpg(a.pid, signal.SIGKILL)
                a.wait()
    for a, (_, err) in zip(agents, outputs, strict=True):
        assert a.returncode == 0, err[-4000:]
    summary = json.loads((tmp_path / "nodes" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2 * STEPS_PER_EPOCH
    assert_same_weights(tmp_path / "nodes", references("ddp"))
