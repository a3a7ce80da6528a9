"""The loop on real images: every preset takes real optimisation steps, a small subset is
overfitted, a stall at chance is detected, the precision/compile options run, the host reads
device values only at log points, and a mid-epoch resume seeks to its batch."""

from __future__ import annotations

import json
import math
import tarfile

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from alexnet.data import build_loader, prepare
from alexnet.train import load_config, train
from alexnet.train.distributed import DistContext
from alexnet.train.trainer import Trainer
from train_support import prepared_cache, tiny_kwargs_arg


SMALL = {"widths": [16, 32, 48, 48, 32], "hidden": 128}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def preset_caches(fmnist_cache, shared_data, tmp_path_factory):
    """Each preset's data at the preset's stored size, a few real images per class."""
    base = tmp_path_factory.getbasetemp()
    woof = shared_data / "imagewoof2-160.tar"
    return {
        "fashion-mnist": fmnist_cache,
        "cifar10": (cifar := prepared_cache(base, "cifar10", shared_data / "cifar10-jpg.tar.gz", 32, 4)),
        "cifar10-ablations": cifar,
        "imagewoof": prepared_cache(base, "woof", woof, 128, 2),
        "paper-imagenet": ilsvrc_sample(shared_data, base),
    }


def ilsvrc_sample(shared_data, base):
    """The 500 original ILSVRC-2012 JPEGs at the paper's 256 px, labelled from their file names
    (``<wnid>_<name>.JPEG``) in the official 1000-class order."""
    out = base / "ilsvrc500-256"
    if not (out / "meta.json").is_file():
        tar = shared_data / "imagenet-sample-500.tar"
        with tarfile.open(tar) as tf:
            stems = [m.name.rsplit("/", 1)[-1].rsplit(".", 1)[0] for m in tf.getmembers() if m.isfile()]
        labels = base / "ilsvrc500-labels.txt"
        labels.write_text("".join(f"{s} {s.split('_', 1)[0]}\n" for s in stems))
        prepare(str(tar), out, size=256, labels=str(labels), classes=str(shared_data / "imagenet-classes.txt"),
                quiet=True, workers=2)
    return out


def fixed_batch_steps(config, steps: int) -> tuple[float, float]:
    """Loss on one real batch (eval mode: no dropout) before and after `steps` SGD steps on it,
    with the preset's own model, parameter groups, learning rate, precision and input pipeline."""
    trainer = Trainer(config, DistContext(), None)
    trainer._build()
    model, opt, fast = trainer.model, trainer.optimizer, trainer.fast
    trainer.train_loader.set_epoch(0)
    x, y = next(iter(trainer.train_loader))
    x = fast.prepare_input(x)     # the loader applies the InputSpec (mean, scale)

    def loss_now():
        model.eval()
        with torch.no_grad(), fast.autocast():
            return float(F.cross_entropy(model(x).float(), y))

    before = loss_now()
    model.train()
    for step in range(steps):
        trainer.schedule.apply(opt, step)          # the schedule's first steps (warm-up included)
        with fast.autocast():
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, loss_now()


@pytest.mark.slow
@pytest.mark.parametrize("preset, extra, steps", [
    ("fashion-mnist", [], 6),
    ("fashion-mnist", ["--train.precision", "fp32", "--train.channels_last", "false"], 6),
    ("fashion-mnist", ["--train.precision", "bf16", "--train.channels_last", "true"], 6),
    ("cifar10", [], 6),
    ("cifar10-ablations", [], 6),
    ("imagewoof", [], 6),
    # The paper's recipe unchanged (lr 0.01, momentum 0.9, N(0, 0.01) init, unit biases) on 16
    # real ILSVRC images of 16 classes; more steps on one fixed batch would overshoot with momentum.
    ("paper-imagenet", [], 2),
])
def test_every_preset_takes_real_steps_and_the_loss_falls(preset, extra, steps, preset_caches):
    config = load_config(preset, ["--data.cache", str(preset_caches[preset]), "--data.workers", "0",
                                  "--train.batch_size", "16", *extra])
    before, after = fixed_batch_steps(config, steps=steps)
    assert math.isfinite(before) and after < before, (before, after)
    if preset == "paper-imagenet":
        # the paper's initialisation starts near chance over the 1000 classes
        assert before == pytest.approx(math.log(1000), abs=0.1)


@pytest.mark.slow
@pytest.mark.parametrize("val_every, validated", [(2, [False, True, True]), (0, [False, False, True])])
def test_val_every_validates_every_nth_epoch_and_after_the_last(val_every, validated, fmnist_cache, tmp_path):
    result = train("fashion-mnist", overrides=[
        "--data.cache", str(fmnist_cache), "--data.train_subset", "64", "--data.val_subset", "32",
        "--model.kwargs", tiny_kwargs_arg(SMALL), "--train.epochs", "3", "--train.batch_size", "32",
        "--train.val_every", str(val_every), "--run.out", str(tmp_path), "--run.name", f"every{val_every}",
        "--run.progress", "false", "--run.plots", "false", "--train.threads", "1"])
    epochs = [json.loads(x) for x in (result.run_dir / "epochs.jsonl").read_text().splitlines()]
    assert [e.get("val_top1_err") is not None for e in epochs] == validated
    assert result.summary["val"]["top1_err"] == epochs[-1]["val_top1_err"]


@pytest.mark.slow
def test_without_a_test_split_the_final_evaluation_runs_on_val_with_the_test_views(preset_caches, tmp_path):
    """Imagewoof has train and val only: its preset's ten-view test must still happen (on val)."""
    cache = preset_caches["imagewoof"]                     # 2 real images per class and split
    result = train("imagewoof", overrides=[
        "--data.cache", str(cache), "--data.crop", "32", "--data.workers", "0", "--model.name", "alexnet_small",
        "--model.kwargs", tiny_kwargs_arg(SMALL), "--train.epochs", "1", "--train.batch_size", "10",
        "--run.out", str(tmp_path), "--run.name", "woof", "--run.progress", "false", "--run.plots", "false",
        "--train.threads", "1"])
    test = result.summary["test"]
    assert (test["split"], test["views"], test["count"]) == ("val", "ten", 20)
    assert any("no 'test' split" in note and "ten-view" in note for note in result.summary["notes"])


@pytest.mark.slow
def test_overfits_a_small_real_subset(fmnist_cache, tmp_path):
    result = train("fashion-mnist", overrides=[
        "--data.cache", str(fmnist_cache), "--data.train_subset", "64", "--data.val_subset", "64",
        "--data.flip", "false", "--model.kwargs", tiny_kwargs_arg({**SMALL, "dropout": 0.0}),
        "--train.epochs", "40", "--train.batch_size", "32", "--optim.lr", "0.01", "--optim.weight_decay", "0",
        "--schedule.kind", "constant", "--schedule.warmup_epochs", "0", "--run.out", str(tmp_path),
        "--run.name", "overfit", "--run.progress", "false", "--run.plots", "false", "--train.threads", "1"])
    epochs = [json.loads(x) for x in (result.run_dir / "epochs.jsonl").read_text().splitlines()]
    assert epochs[-1]["train_top1_err"] <= 1 / 64 and epochs[-1]["train_loss"] < 0.05
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"] / 10


def test_stall_at_chance_is_detected_with_the_papers_init(fmnist_cache, tmp_path, capfd):
    common = ["--data.cache", str(fmnist_cache), "--data.train_subset", "600", "--data.val_subset", "50",
              "--model.kwargs", tiny_kwargs_arg({**SMALL, "dropout": 0.0}), "--train.epochs", "1",
              "--train.batch_size", "32", "--schedule.kind", "constant", "--schedule.warmup_epochs", "0",
              "--train.stall_steps", "16", "--train.log_every", "4", "--run.out", str(tmp_path),
              "--run.progress", "false", "--run.plots", "false", "--train.threads", "1"]
    stalled = train("fashion-mnist", overrides=common + ["--model.kwargs.init", "paper", "--run.name", "paper"])
    err = capfd.readouterr().err
    line = next(x for x in err.splitlines() if "stalled" in x)
    assert line.startswith("alexnet: warning: training looks stalled at chance: mean loss")
    assert "ln C = 2.303" in line and "--model.kwargs.init kaiming" in line
    assert stalled.summary["warnings"]
    healthy = train("fashion-mnist", overrides=common + ["--run.name", "kaiming", "--optim.lr", "0.01"])
    assert "stalled" not in capfd.readouterr().err and not healthy.summary["warnings"]


def test_compile_failure_falls_back_to_eager(fmnist_cache, tmp_path, monkeypatch, capfd):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler found (simulated)")
    monkeypatch.setattr(torch, "compile", broken_compile)
    result = train("fashion-mnist", overrides=[
        "--data.cache", str(fmnist_cache), "--data.train_subset", "64", "--data.val_subset", "32",
        "--model.kwargs", tiny_kwargs_arg(), "--train.epochs", "1", "--train.compile", "true",
        "--run.out", str(tmp_path), "--run.name", "c", "--run.progress", "false", "--train.threads", "1"])
    assert "torch.compile failed (no C++ compiler found (simulated)); training eagerly instead" in capfd.readouterr().err
    assert result.summary["status"] == "finished" and result.summary["steps"] == 1


def test_deterministic_kernels_on_request_and_the_process_restored(fmnist_cache, tmp_path):
    """``train.deterministic``: deterministic kernels while the run trains (on a CPU the same
    numbers as without), and the process's setting as it was afterwards."""
    common = ["--data.cache", str(fmnist_cache), "--data.train_subset", "64", "--data.val_subset", "32",
              "--model.kwargs", tiny_kwargs_arg(SMALL), "--train.epochs", "1", "--train.batch_size", "32",
              "--run.out", str(tmp_path), "--run.progress", "false", "--run.plots", "false", "--train.threads", "1"]
    seen = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda *_: seen.append(torch.are_deterministic_algorithms_enabled()))
    try:
        on = train("fashion-mnist", overrides=common + ["--run.name", "on", "--train.deterministic", "true"])
    finally:
        hook.remove()
    assert seen and all(seen)
    assert not torch.are_deterministic_algorithms_enabled()
    off = train("fashion-mnist", overrides=common + ["--run.name", "off"])
    assert on.summary["test"]["top1_err"] == off.summary["test"]["top1_err"]
    assert on.summary["test"]["loss"] == off.summary["test"]["loss"]


# ----------------------------------------------------------------------------- no host sync per step

class ScalarReads(TorchFunctionMode):
    """Counts reads of tensor values into Python made in this thread (``item``, ``tolist``, ``bool``,
    ``float``, ``int``, formatting): on a GPU each one waits for the queued work, so the loop may make
    them only at log points. Independent of the loop's own bookkeeping (``Trainer.host_reads``)."""

    READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "__format__"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("log_every", [1, 4])
def test_the_loop_reads_device_values_only_at_log_points(fmnist_cache, tmp_path, log_every):
    """One epoch of 19 steps (600 images, batch 32): the host reads device values once per log point
    (every log_every steps and the epoch's last) plus two fixed reads at the epoch end (the epoch's sums,
    the checkpoint's finite-weights check), all through ``Trainer.host_read``. Counted independently of
    that bookkeeping, the steps between two step records read nothing but the log point's one transfer.
    The loader's host stage (its own CPU tensors) runs in a worker process, as on a GPU machine.
    The per-step reads of earlier versions (a finite-loss flag each step, the progress bar's loss)
    made both counts grow with the steps."""
    steps = 19
    config = load_config("fashion-mnist", [
        "--data.cache", str(fmnist_cache), "--data.workers", "1", "--model.kwargs", tiny_kwargs_arg(),
        "--train.epochs", "1", "--train.batch_size", "32", "--train.log_every", str(log_every),
        "--run.out", str(tmp_path), "--run.name", "reads", "--run.progress", "false", "--run.plots", "false",
        "--train.threads", "1"])
    trainer = Trainer(config, DistContext(), None)
    reads = ScalarReads()
    at_step_records = []
    trainer.subscribers.append(lambda kind, record: at_step_records.append(reads.count) if kind == "step" else None)
    with reads:
        result = trainer.run()
    log_points = -(-steps // log_every)
    loop = result.summary["loop"]
    assert (loop["steps"], loop["host_reads"]) == (steps, log_points + 2)
    assert len(at_step_records) == log_points
    between = [b - a for a, b in zip(at_step_records[:-1], at_step_records[1:], strict=True)]
    assert between == [1] * (log_points - 1), between


# ----------------------------------------------------------------------------- a resume that seeks

@pytest.mark.parametrize("data_path, workers", [("host", 0), ("host", 1), ("device", 0)])
def test_a_loader_started_at_batch_k_yields_the_uninterrupted_batches_from_k(fmnist_cache, data_path, workers):
    """``set_epoch(epoch, start_batch=k)``: the pass yields exactly batches k.. of the uninterrupted pass,
    bit for bit (crops, flips, colour noise, labels, indices), without reading a batch before k; the next
    ``set_epoch`` starts at batch 0 again."""
    loader = build_loader(fmnist_cache, "train", batch_size=32, train=True, crop=24, seed=3, workers=workers,
                          with_index=True, data_path=data_path)
    epoch, k = 2, 15
    loader.set_epoch(epoch)
    whole = [tuple(t.clone() for t in batch) for batch in loader]
    if workers == 0:                       # the batches the pass asks its reader for
        asked, reader = [], loader.reader
        loader.reader = lambda key: asked.append(key) or reader(key)
    loader.set_epoch(epoch, start_batch=k)
    tail = [tuple(t.clone() for t in batch) for batch in loader]
    assert len(whole) == 19 and len(tail) == len(whole) - k
    for expected, got in zip(whole[k:], tail, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    if workers == 0:
        assert asked == [(epoch, b) for b in range(k, len(whole))]
    loader.set_epoch(epoch + 1)
    assert len(list(loader)) == len(whole)
