"""TensorBoard events of real training runs, read back with TensorBoard's own reader.

The reference is the run's JSONL logs: every number of every ``steps.jsonl`` and
``epochs.jsonl`` record must be in the event file at the record's step, as the float32
TensorBoard stores, once - also after a resume from an earlier checkpoint, where the
resumed run repeats steps an earlier attempt had logged (``purge_step``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from alexnet.models.kernels import kernel_grid
from alexnet.checkpoint import load_model
from alexnet.train.tensorboard_log import kernel_every

from conftest import run_cli
from train_support import CLI_ENV, train_args

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="the tensorboard package is not installed")
pytestmark = pytest.mark.usefixtures("one_thread")


def read_events(run_dir: Path):
    acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def expected_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """What the events must hold, written out from the JSONL logs: tag -> [(step, float32 value)]."""
    want: dict[str, list] = {}
    for prefix, name in (("step", "steps.jsonl"), ("epoch", "epochs.jsonl")):
        for record in jsonl(run_dir / name):
            for key, value in record.items():
                if key in ("step", "epoch") or value is None:
                    continue
                want.setdefault(f"{prefix}/{key}", []).append((record["step"], float(np.float32(value))))
    return want


def assert_events_equal_logs(run_dir: Path):
    acc = read_events(run_dir)
    want = expected_scalars(run_dir)
    got = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert sorted(got) == sorted(want)
    for tag in want:
        assert got[tag] == want[tag], tag
    return acc


def test_a_run_writes_its_logs_as_events_and_says_where(fmnist_cache, tmp_path):
    args = [a for a in train_args(fmnist_cache, tmp_path, "tb", "--data.crop", "24", epochs=3) if a != "--quiet"]
    proc = run_cli(*args, env=CLI_ENV)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "tb"
    first = proc.stderr.splitlines()[0]
    assert first.startswith("alexnet: training") and f"tensorboard --logdir {tmp_path}" in first
    acc = assert_events_equal_logs(run)
    tags = set(acc.Tags()["scalars"])
    # What the issue asks for: loss, train and val errors, lr, images/s.
    assert {"step/loss", "step/lr", "step/img_per_s", "epoch/train_loss", "epoch/train_top1_err",
            "epoch/val_top1_err", "epoch/val_top5_err", "epoch/lr", "epoch/img_per_s"} <= tags
    assert len(acc.Scalars("step/loss")) == len(jsonl(run / "steps.jsonl")) > 10
    # conv1 as an image: at the start, every kernel_every(3) = 1 epochs; the last one is the trained model's.
    images = acc.Images("conv1/kernels")
    epochs = jsonl(run / "epochs.jsonl")
    assert [i.step for i in images] == [0] + [r["step"] for r in epochs]
    model, _ = load_model(run / "last.safetensors")
    grid = kernel_grid(model)
    assert (images[-1].height, images[-1].width) == grid.shape[:2]


def test_kernel_images_come_every_few_epochs():
    assert [kernel_every(n) for n in (1, 5, 14, 16, 90)] == [1, 1, 1, 2, 9]


def test_a_resumed_run_shows_each_step_once(fmnist_cache, tmp_path):
    """A resume from step 10 of a finished 2-epoch run (as after a crash there): the events an
    earlier attempt wrote after step 10 are purged and written again, as the JSONL records are."""
    args = train_args(fmnist_cache, tmp_path, "tb", "--data.crop", "24", "--train.checkpoint_every_steps", "5",
                      "--train.keep_checkpoints", "100", epochs=2)
    assert run_cli(*args, env=CLI_ENV).returncode == 0
    run = tmp_path / "tb"
    steps_before = jsonl(run / "steps.jsonl")
    shutil.copyfile(run / "step-00000010.safetensors", run / "last.safetensors")
    (run / "summary.json").unlink()
    proc = run_cli("train", "--resume", run, "--quiet", env=CLI_ENV)
    assert proc.returncode == 0, proc.stderr
    assert len(list(run.glob("events.out.tfevents.*"))) == 2      # the first attempt's and the resume's
    acc = assert_events_equal_logs(run)
    assert [e.step for e in acc.Scalars("step/loss")] == [r["step"] for r in steps_before]   # once each
    assert [i.step for i in acc.Images("conv1/kernels")] == [0] + [r["step"] for r in jsonl(run / "epochs.jsonl")]


def test_events_can_be_turned_off(fmnist_cache, tmp_path):
    args = train_args(fmnist_cache, tmp_path, "off", "--data.crop", "24", "--run.tensorboard", "false", epochs=1)
    assert run_cli(*args, env=CLI_ENV).returncode == 0
    assert not list((tmp_path / "off").glob("events.out.tfevents.*"))
