"""`alexnet train` never gives a wrong or lost result without a word.

Each test is one way a run used to go wrong silently: a setting that did not mean what it
said, a failed start that left a run folder, a failed resume that damaged the folder, a
loss gone to NaN saved over the last good checkpoint, a full disk shown as a traceback,
and a prepare on rank 0 that outlasted the collective timeout of the other ranks.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.checkpoint import load_checkpoint
from alexnet.errors import UserError
from alexnet.train import train
from alexnet.train.config import RESUME_CHANGEABLE, check_launch, load_config
from conftest import run_cli
from train_support import CLI_ENV, one_line_error, train_args

FAST = ("--train.threads", "1", "--data.workers", "0", "--run.plots", "false")


def _in_process(cli_args: list[str]) -> list[str]:
    """``alexnet train`` arguments as ``train(overrides=...)`` takes them: no command, preset or --quiet."""
    return [a for a in cli_args[2:] if a != "--quiet"] + ["--run.progress", "false"]


def _finite_weights(path: Path) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in load_checkpoint(path).model_state.values())


# ----------------------------------------------------------------------------- settings

def test_a_string_false_for_lrn_is_refused_before_any_work(fashion_mnist_dir, tmp_path):
    """`False` is not TOML (its booleans are lowercase): the string "False" is truthy and trained WITH LRN.
    The source here is real and the cache missing: the refusal comes before any prepare or folder."""
    args = ["train", "fashion-mnist", "--data.source", fashion_mnist_dir, "--data.cache", tmp_path / "cache",
            "--run.out", tmp_path / "runs", "--quiet"]
    proc = run_cli(*args, "--model.kwargs.lrn", "False", env=CLI_ENV, timeout=60)
    one_line_error(proc, "model.kwargs.lrn", "'False'", "true or false", "lowercase")
    proc = run_cli(*args, "--model.name", "vgg", env=CLI_ENV, timeout=60)
    one_line_error(proc, "model.name", "'vgg'")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()


def test_bad_starts_leave_no_run_folder(fmnist_cache, tmp_path):
    """A start that fails (the builder's ValueError included) leaves nothing in run.out."""
    out = tmp_path / "runs"
    out.mkdir()
    cases = [(["--model.kwargs.activation", "gelu"], ["model 'alexnet_small'", "activation", "gelu"]),
             (["--model.kwargs.lrn", "False"], ["model.kwargs.lrn"]),
             (["--train.precision", "fp16"], ["fp16", "needs a CUDA device"])]
    for extra, fragments in cases:
        args = [a for a in train_args(fmnist_cache, out, "x", *FAST, *extra)]
        args[args.index("--run.name"):args.index("--run.name") + 2] = []     # the default <preset>-<time> name
        one_line_error(run_cli(*args, env=CLI_ENV, timeout=120), *fragments)
    assert list(out.iterdir()) == []


def test_towers_are_refused_with_more_than_one_process():
    """The two-tower model is not wrapped in DistributedDataParallel: its gradients would never be averaged."""
    config = load_config("fashion-mnist", ["--model.parallel", "towers", "--model.kwargs.groups", "2"])
    check_launch(config, 1)
    with pytest.raises(UserError, match=r"model.parallel = 'towers' cannot run under torchrun \(2 processes\)"):
        check_launch(config, 2)


def test_towers_under_torchrun_stop_with_one_line(fmnist_cache, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "alexnet",
           *map(str, train_args(fmnist_cache, tmp_path, "t", *FAST, "--model.parallel", "towers",
                                "--model.kwargs.groups", "2"))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.count("alexnet: error: model.parallel = 'towers' cannot run under torchrun") == 2, proc.stderr
    assert not (tmp_path / "t").exists()


# ----------------------------------------------------------------------------- resume

def test_a_refused_resume_leaves_the_run_as_it_was(fmnist_cache, tmp_path):
    run = tmp_path / "r"
    torch.set_num_threads(1)
    train("fashion-mnist", overrides=_in_process(train_args(fmnist_cache, tmp_path, "r", *FAST, "--train.max_steps", "2",
                                                            epochs=1)))
    config_before, last_before = (run / "config.toml").read_bytes(), (run / "last.safetensors").read_bytes()
    proc = run_cli("train", "--resume", run, "--model.name", "alexnet", "--quiet", env=CLI_ENV)
    one_line_error(proc, f"{run}: cannot resume with a different model.name")
    # the replay: batch size, seed, subsets; the model's options
    for extra, key in [(["--train.batch_size", "16"], "train.batch_size"), (["--train.seed", "1"], "train.seed"),
                       (["--data.train_subset", "100"], "data.train_subset"),
                       (["--model.kwargs.lrn", "false"], "model.kwargs.lrn"), (["--optim.lr", "0.5"], "optim.lr")]:
        with pytest.raises(UserError, match=f"cannot resume with a different {key} "):
            train(resume=run, overrides=extra)
    assert (run / "config.toml").read_bytes() == config_before
    assert (run / "last.safetensors").read_bytes() == last_before
    # a plain resume works; an allowed override is written back once the checkpoint is restored
    run_cli("train", "--resume", run, "--quiet", env=CLI_ENV, check=True)
    train(resume=run, overrides=["--train.epochs", "2", "--train.max_steps", "3", "--run.progress", "false"])
    assert load_config(run / "config.toml").train.epochs == 2
    assert load_checkpoint(run / "last.safetensors").meta["step"] == 3
    assert {"train.epochs", "data.workers", "run.progress"} <= RESUME_CHANGEABLE
    assert not RESUME_CHANGEABLE & {"train.batch_size", "train.seed", "data.train_subset", "data.val_subset",
                                    "model.name", "optim.lr", "schedule.kind", "train.precision"}


def test_a_new_length_for_a_cosine_schedule_is_said_on_resume(fmnist_cache, tmp_path, capfd):
    torch.set_num_threads(1)
    train("fashion-mnist", overrides=_in_process(train_args(fmnist_cache, tmp_path, "c", *FAST, "--train.max_steps", "1",
                                                            "--schedule.kind", "cosine", epochs=1)))
    capfd.readouterr()
    train(resume=tmp_path / "c", overrides=["--train.epochs", "2", "--train.max_steps", "2", "--run.progress", "false"])
    assert "alexnet: warning: train.epochs 1 -> 2: the cosine lr curve is stretched" in capfd.readouterr().err


# ----------------------------------------------------------------------------- divergence

# The lr is fine for the first epoch, then multiplied by 1e8: the loss goes to NaN early in epoch 2.
DIVERGE = ("--schedule.kind", "step", "--schedule.milestones", "[1]", "--schedule.factor", "1e8",
           "--train.precision", "fp32")


def test_a_diverging_run_stops_with_one_line_and_keeps_the_last_good_checkpoint(fmnist_cache, tmp_path):
    run = tmp_path / "d"
    proc = run_cli(*train_args(fmnist_cache, tmp_path, "d", *FAST, *DIVERGE, "--train.log_every", "1000",
                               epochs=3), env=CLI_ENV, timeout=120)
    one_line_error(proc, "training diverged: the loss is not finite at step", f"{run / 'last.safetensors'} keeps step 19")
    step = int(proc.stderr.split("at step ")[1].split()[0])
    assert 19 < step <= 38, "detected in epoch 2, at the step it happened"
    ck = load_checkpoint(run / "last.safetensors")
    assert ck.meta["step"] == 19 and ck.meta["epoch"] == 1 and _finite_weights(run / "last.safetensors")


def test_a_signal_at_the_divergent_step_does_not_save_nan_weights(fmnist_cache, tmp_path):
    """SIGTERM arrives during the forward pass that first produces a non-finite value; with log_every far
    away, the old loop saved that step's weights (NaN) over the last good checkpoint."""
    sent = []

    def hook(module, inputs, output):
        if not sent and isinstance(output, torch.Tensor) and not bool(torch.isfinite(output).all()):
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    overrides = _in_process(train_args(fmnist_cache, tmp_path, "s", *FAST, *DIVERGE, "--train.log_every", "1000",
                                       epochs=3))
    torch.set_num_threads(1)
    try:
        with pytest.raises(UserError, match="training diverged"):
            train("fashion-mnist", overrides=overrides)
    finally:
        handle.remove()
    assert sent, "the signal was sent"
    assert load_checkpoint(tmp_path / "s" / "last.safetensors").meta["step"] == 19
    assert _finite_weights(tmp_path / "s" / "last.safetensors")


# ----------------------------------------------------------------------------- full disk

def _limit_file_size(limit: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # EFBIG instead of death by signal, like ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def _cli_limited(limit: int, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alexnet", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, **CLI_ENV), timeout=120, preexec_fn=_limit_file_size(limit))


def test_a_full_disk_while_logging_is_one_line_and_keeps_the_checkpoint(fmnist_cache, tmp_path):
    """Resume a 1-epoch run whose steps.jsonl is just under the file-size limit: the first new record fails."""
    run = tmp_path / "f"
    run_cli(*train_args(fmnist_cache, tmp_path, "f", *FAST, "--schedule.kind", "constant", epochs=1), env=CLI_ENV,
            check=True)
    last = run / "last.safetensors"
    limit = last.stat().st_size + 4096      # checkpoints still fit
    steps = run / "steps.jsonl"
    pad = limit - steps.stat().st_size - 40
    with steps.open("a") as f:               # a record the resume keeps (step 1), padded to the limit
        f.write(json.dumps({"step": 1, "pad": "x" * pad}) + "\n")
    assert limit - 100 < steps.stat().st_size < limit
    before = last.read_bytes()
    proc = _cli_limited(limit, "train", "--resume", run, "--train.epochs", "2", "--quiet")
    one_line_error(proc, f"{steps}: cannot write", f"{last.name} is intact")
    assert last.read_bytes() == before and load_checkpoint(last).meta["step"] == 19
    assert not list(run.glob("*.tmp"))


def test_a_full_disk_while_writing_the_outputs_is_one_line(fmnist_cache, tmp_path):
    """The outputs are written last: with the file-size limit between the checkpoint's size and the
    curves plot's, the plot fails to be written."""
    probe = tmp_path / "probe"
    small = ("--train.threads", "1", "--data.workers", "0", "--train.max_steps", "2",
             "--model.kwargs.widths", "[4, 4, 4, 4, 4]", "--model.kwargs.hidden", "8")    # a checkpoint smaller than the plot
    run_cli(*train_args(fmnist_cache, tmp_path, "probe", *small, epochs=1), env=CLI_ENV, check=True)
    ck, png = (probe / "last.safetensors").stat().st_size, (probe / "curves.png").stat().st_size
    assert ck + 2048 < png, (ck, png)
    run = tmp_path / "g"
    proc = _cli_limited(ck + 1024, *train_args(fmnist_cache, tmp_path, "g", *small, epochs=1))
    one_line_error(proc, f"{run / 'curves.png'}: cannot write", "last.safetensors is intact")
    assert load_checkpoint(run / "last.safetensors").meta["step"] == 2


# ----------------------------------------------------------------------------- a slow prepare on rank 0

def _image_folder(root: Path, fashion_mnist_dir: Path, per_class: int) -> Path:
    """Real Fashion-MNIST images as a folder tree of PNGs (train/ and test/, one folder per class)."""
    with gzip.open(fashion_mnist_dir / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(fashion_mnist_dir / "train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    for c in range(10):
        index = np.flatnonzero(labels == c)[: 2 * per_class]
        for n, i in enumerate(index):
            split = "train" if n < per_class else "test"
            (root / split / f"class{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(root / split / f"class{c}" / f"{i}.png")
    return root


def test_ranks_wait_for_a_prepare_longer_than_the_collective_timeout(fashion_mnist_dir, tmp_path):
    """Rank 0 prepares the missing cache (400 real images, made to take 4 s more) while the collective
    timeout is 2 s: rank 1 waits for it under train.prepare_timeout instead, and the job trains."""
    source = _image_folder(tmp_path / "src", fashion_mnist_dir, 20)
    env = dict(os.environ, OMP_NUM_THREADS="1", ALEXNET_TEST_PREPARE_DELAY_S="4")
    args = train_args(tmp_path / "unused", tmp_path, "p", *FAST, "--train.max_steps", "2", "--train.dist_timeout",
                      "2", "--data.size", "28", "--data.crop", "24", "--train.batch_size", "16", epochs=1)
    i = args.index("--data.cache")
    args[i:i + 2] = ["--data.source", str(source), "--data.cache", str(tmp_path / "cache")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "alexnet",
           *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "cache" / "meta.json").is_file()
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
