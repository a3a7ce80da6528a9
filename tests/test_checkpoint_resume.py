"""Interrupted-and-resumed runs end bit-identical to uninterrupted ones (real processes, real signals).

A reference run trains 2 epochs. Other runs of the same config are stopped mid-way -
gracefully (SIGTERM / SIGINT: finish the step, save, exit with a resume hint) or hard
(SIGKILL: nothing saved since the last epoch) - and continued with ``--resume``. On a
CPU the final weights and optimiser state must equal the reference bit for bit, in float32
and in bfloat16 autocast (the default on CPUs with native bfloat16).
"""

from __future__ import annotations

import json
import signal

import pytest
import torch

from alexnet.checkpoint import load_checkpoint
from train_support import checkpoint_tensors, last_step, popen_cli, train_args, wait_for
from conftest import run_cli

pytestmark = pytest.mark.slow
EXTRA = ("--train.threads", "1", "--optim.lr", "0.02", "--data.train_subset", "320", "--data.val_subset", "200")
STEPS_PER_EPOCH = 10          # 320 images / batch 32
CANONICAL = {"fp32": "float32", "bf16": "bfloat16"}


def extra(precision: str) -> tuple[str, ...]:
    return (*EXTRA, "--train.precision", precision)


@pytest.fixture(scope="module")
def reference_for(fmnist_cache, tmp_path_factory):
    """The uninterrupted 2-epoch run of each precision (made once, on first use)."""
    made = {}

    def get(precision: str):
        if precision not in made:
            out = tmp_path_factory.mktemp(f"resume-ref-{precision}")
            run_cli(*train_args(fmnist_cache, out, "full", *extra(precision), epochs=2), check=True)
            made[precision] = out / "full"
        return made[precision]
    return get


def assert_identical(run_dir, reference):
    a = checkpoint_tensors(reference / "last.safetensors")
    b = checkpoint_tensors(run_dir / "last.safetensors")
    assert a.keys() == b.keys() and len(a) > 20
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ after resume: {different[:5]}"
    ref_epochs = [json.loads(line) for line in (reference / "epochs.jsonl").read_text().splitlines()]
    epochs = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2]
    for key in ("val_top1_err", "val_loss", "lr", "step"):
        assert [e[key] for e in epochs] == [e[key] for e in ref_epochs]


@pytest.mark.parametrize("sig, precision", [(signal.SIGTERM, "fp32"), (signal.SIGTERM, "bf16"), (signal.SIGINT, "bf16")])
def test_graceful_stop_mid_epoch_then_resume_is_bit_identical(fmnist_cache, tmp_path, reference_for, sig, precision):
    proc = popen_cli(*train_args(fmnist_cache, tmp_path, "cut", *extra(precision), epochs=2))
    run_dir = tmp_path / "cut"
    wait_for(lambda: last_step(run_dir) >= STEPS_PER_EPOCH + 3, proc=proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert f"continue with: alexnet train --resume {run_dir}" in err
    ck = load_checkpoint(run_dir / "last.safetensors")
    assert ck.meta["epoch"] == 1 and 0 < ck.meta["batch_in_epoch"] < STEPS_PER_EPOCH, "expected a mid-epoch save"
    assert ck.meta["status"] == "interrupted" and ck.meta["fast_path"]["precision"] == CANONICAL[precision]
    before_cut = ck.meta["partial"]["time"]          # the epoch's training time up to the signal
    assert before_cut > 0
    if sig == signal.SIGINT:
        return                # the same path as SIGTERM from here on; one resume is enough
    resumed = run_cli("train", "--resume", run_dir, "--quiet", check=True)
    assert resumed.returncode == 0
    assert_identical(run_dir, reference_for(precision))
    # The cut epoch's time (and so its images/s) counts both halves, not only the resumed one:
    # the epochs' times add up to the run's training time, which includes the part before the cut.
    epochs = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert sum(e["epoch_time_s"] for e in epochs) == pytest.approx(summary["train_time_s"], rel=1e-9)
    assert epochs[1]["epoch_time_s"] > before_cut
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_hard_kill_then_resume_from_last_epoch_is_bit_identical(fmnist_cache, tmp_path, reference_for, precision):
    proc = popen_cli(*train_args(fmnist_cache, tmp_path, "killed", *extra(precision), epochs=2))
    run_dir = tmp_path / "killed"
    wait_for(lambda: (run_dir / "epochs.jsonl").is_file() and last_step(run_dir) >= STEPS_PER_EPOCH + 2, proc=proc)
    proc.kill()                                        # SIGKILL: no handler, no save
    proc.communicate(timeout=60)
    ck = load_checkpoint(run_dir / "last.safetensors")  # the end-of-epoch checkpoint is intact
    assert ck.meta["batch_in_epoch"] == 0 and ck.meta["epoch"] >= 1
    assert ck.meta["fast_path"]["precision"] == CANONICAL[precision]
    run_cli("train", "--resume", run_dir, "--quiet", check=True)
    assert_identical(run_dir, reference_for(precision))
    steps = [json.loads(line)["step"] for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 2 * STEPS_PER_EPOCH + 1)), "the resumed log repeats no step and skips none"
