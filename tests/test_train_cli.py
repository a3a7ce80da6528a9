"""`alexnet train` as a user runs it: the run folder it leaves, and one line for every bad input."""

from __future__ import annotations

import json
import signal
import sys
import tarfile
from pathlib import Path

import pytest

from alexnet.cli import parse_args
from alexnet.errors import UserError
from alexnet.train import train
from alexnet.train.commands import parse_train_args
from conftest import run_cli
from train_support import one_line_error, CLI_ENV, last_step, popen_cli, train_args, wait_for

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def test_a_run_leaves_everything_a_user_needs(trained_run):
    run = trained_run
    for name in ("config.toml", "config.json", "last.safetensors", "best.safetensors", "steps.jsonl",
                 "epochs.jsonl", "epochs.csv", "curves.png", "summary.json", "report.md"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["test"]["count"] == 600
    assert 0 <= summary["test"]["top1_err"] <= 1 and summary["epochs_done"] == 1
    steps = [json.loads(x) for x in (run / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 20)) and all("img_per_s" in s for s in steps)
    assert "# Run `run`" in (run / "report.md").read_text()
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "crop = 24" in (run / "config.toml").read_text()


def test_the_run_prints_where_the_report_and_plots_are(fmnist_cache, tmp_path):
    proc = run_cli(*train_args(fmnist_cache, tmp_path, "r", "--train.threads", "1", "--train.max_steps", "3",
                               epochs=1), env=CLI_ENV, check=True)
    assert f"report: {tmp_path / 'r' / 'report.md'}" in proc.stderr
    assert f"plots: {tmp_path / 'r' / 'curves.png'}" in proc.stderr


@pytest.mark.parametrize("args, fragments", [
    (["--optim.lrr", "0.1"], ["unknown key 'optim.lrr'"]),                    # rejected while parsing
    (["--model.name", "vgg"], ["model.name", "'vgg'", "alexnet_small"]),       # names the registered models
])
def test_bad_settings(fmnist_cache, tmp_path, args, fragments):
    one_line_error(run_cli(*train_args(fmnist_cache, tmp_path, "x", *args), env=CLI_ENV), *fragments)


@pytest.mark.parametrize("args, fragments", [
    (["--train.epochs", "ten"], ["train.epochs", "'ten'", "integer"]),
    (["--train.precision", "fp16"], ["fp16", "needs a CUDA device"]),
    (["--model.kwargs.lrn_size", "3"], ["model.kwargs.lrn_size", "has no option 'lrn_size'"]),
])
def test_bad_settings_in_process(fmnist_cache, tmp_path, args, fragments):
    with pytest.raises(UserError) as err:
        overrides = [a for a in train_args(fmnist_cache, tmp_path, "x", *args)[2:] if a != "--quiet"]
        train("fashion-mnist", overrides=overrides)
    assert all(f in str(err.value) for f in fragments) and "\n" not in str(err.value)


def test_bad_commands(tmp_path):
    one_line_error(run_cli("train", "imagenet-22k"), "imagenet-22k", "preset")
    one_line_error(run_cli("train", "--resume", tmp_path / "nothing"), str(tmp_path / "nothing"), "run folder")
    one_line_error(run_cli("train", "fashion-mnist", "--data.cache", tmp_path / "none", "--data.source",
                           tmp_path / "missing-dataset", "--run.out", tmp_path / "runs"), "no such file or directory")
    assert not (tmp_path / "runs").exists(), "a failed start leaves no run folder"


def test_a_busy_or_finished_run_folder_refuses(fmnist_cache, tmp_path):
    first = popen_cli(*train_args(fmnist_cache, tmp_path, "busy", "--train.threads", "1", epochs=30), env=CLI_ENV)
    try:
        wait_for(lambda: last_step(tmp_path / "busy") >= 1, proc=first)
        second = run_cli("train", "--resume", tmp_path / "busy", env=CLI_ENV)
        one_line_error(second, "run folder is in use by process", str(first.pid))
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    again = run_cli(*train_args(fmnist_cache, tmp_path, "busy"), env=CLI_ENV)
    one_line_error(again, "already holds a run; continue it with --resume")
    # another model: refused before anything is opened (tests/test_train_safety.py)
    other = run_cli("train", "--resume", tmp_path / "busy", "--model.name", "alexnet", env=CLI_ENV)
    one_line_error(other, "cannot resume with a different model.name")


def test_a_fresh_run_in_a_folder_with_stale_logs_starts_fresh_logs_and_names_its_fast_path(fmnist_cache, tmp_path):
    """An earlier attempt left logs but no checkpoint (it died before its first epoch ended):
    a fresh run there writes its own logs, not after the stale ones. The first status line
    and summary.json name the precision and memory format the run chose ("auto" here)."""
    run = tmp_path / "again"
    run.mkdir()
    (run / "steps.jsonl").write_text(json.dumps({"step": 999, "loss": 9.9}) + "\n")
    (run / "epochs.jsonl").write_text(json.dumps({"epoch": 7, "step": 999}) + "\n")
    args = [a for a in train_args(fmnist_cache, tmp_path, "again", "--train.threads", "1", "--train.max_steps", "3",
                                  "--run.plots", "false", epochs=1) if a != "--quiet"]
    proc = run_cli(*args, env=CLI_ENV, check=True)
    assert [json.loads(x)["step"] for x in (run / "steps.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert [json.loads(x)["epoch"] for x in (run / "epochs.jsonl").read_text().splitlines()] == [1]
    flags = open("/proc/cpuinfo").read()
    native = " avx512_bf16" in flags or " amx_bf16" in flags
    chosen = "bfloat16 autocast, channels-last" if native else "float32, channels-last"
    first = proc.stderr.splitlines()[0]
    assert first.startswith("alexnet: training alexnet_small on ") and f" in {chosen}, eager (auto: " in first, first
    summary = json.loads((run / "summary.json").read_text())
    assert summary["precision"] == ("bfloat16" if native else "float32")
    assert summary["fast_path"]["description"].startswith(chosen) and summary["fast_path"]["channels_last"] is True
    assert set(summary["machine"]) >= {"cpu", "vector_extensions", "cores"}


def test_dotted_settings_stand_anywhere_among_the_arguments():
    args = parse_args(["train", "--optim.lr", "0.02", "cifar10", "--quiet", "--train.epochs=3"])
    assert (args.config, args.quiet, args.resume) == ("cifar10", True, None)
    assert args.settings == ["--optim.lr", "0.02", "--train.epochs=3"]
    options = parse_train_args(["--optim.lr", "0.02", "cifar10", "--quiet", "--train.epochs=3"])
    assert (options.config, options.settings) == ("cifar10", args.settings)


def test_bad_arguments_are_one_line_usage_errors():
    proc = run_cli("train", "--train.epochs")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith("alexnet: error: --train.epochs") and "missing value" in proc.stderr
    proc = run_cli("train", "cifar10", "--optim.lr", "0.02", "extra")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith("alexnet: error: ") and "extra" in proc.stderr
    proc = run_cli("summary", "alexnet", "--optim.lr", "0.02")            # settings only where training happens
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and "--optim.lr" in proc.stderr
    assert "--resume RUN_DIR" in run_cli("train", "--help", check=True).stdout


# ----------------------------------------------------------------------------- your own images

def photo_folder(shared_data: Path, root: Path, classes: int, per_split: dict[str, int]) -> Path:
    """A folder of real photos as a user's own would be: split/class/image.JPEG (Imagewoof's)."""
    wanted: dict[tuple[str, str], int] = {}
    with tarfile.open(shared_data / "imagewoof2-160.tar") as tar:
        for m in tar:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 3 or parts[0] not in per_split:
                continue
            split, cls, name = parts
            names = sorted({c for s, c in wanted} | {cls})[:classes]
            if cls not in names or wanted.get((split, cls), 0) >= per_split[split]:
                continue
            wanted[(split, cls)] = wanted.get((split, cls), 0) + 1
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            (root / split / cls / name).write_bytes(tar.extractfile(m).read())
    return root


def test_train_on_a_folder_of_your_own_images(shared_data, tmp_path):
    """The README's recipe on a real folder: prepared once at the preset's size, the run named after the
    folder, validated on its val/ images, and predict names the folder's classes."""
    photos = photo_folder(shared_data, tmp_path / "my_photos", 3, {"train": 8, "val": 4})
    env = {**CLI_ENV, "ALEXNET_CACHE": str(tmp_path / "cache-root")}
    proc = run_cli("train", "cifar10", "--data.source", photos, "--train.epochs", "1", "--train.batch_size", "8",
                   "--optim.lr", "0.00125", "--train.threads", "1", "--data.workers", "0", "--train.test_views", "center",
                   "--run.out", tmp_path / "runs", "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr                 # the lr was scaled with the batch: nothing to warn about
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("my_photos-"), run.name
    config = tomllib.loads((run / "config.toml").read_text())
    assert config["data"]["size"] == 32 and config["data"]["source"] == str(photos)
    assert (tmp_path / "cache-root" / "my_photos-32" / "meta.json").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["test"]["split"] == "val" and summary["test"]["count"] == 12
    image = next((photos / "val").rglob("*.JPEG"))
    predicted = run_cli("predict", run, image, "--json", env=env)
    assert predicted.returncode == 0, predicted.stderr
    top = json.loads(predicted.stdout)[0]["top"]
    assert {t["class"] for t in top} == {p.name for p in (photos / "train").iterdir()}

    # A cache of the folder at its own size: the run reads it at that size and is named after it.
    cache = tmp_path / "mine-40"
    run_cli("prepare", photos, cache, "--size", "40", "--quiet", check=True, env=env)
    proc = run_cli("train", "cifar10", "--data.cache", cache, "--train.max_steps", "1", "--train.batch_size", "8",
                   "--optim.lr", "0.00125", "--train.threads", "1", "--run.out", tmp_path / "runs2", "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    (run2,) = (tmp_path / "runs2").iterdir()
    assert run2.name.startswith("mine-40-") and "size = 40" in (run2 / "config.toml").read_text()


def test_one_class_and_a_far_batch_size_warn(shared_data, tmp_path):
    """Legal but suspicious: a folder with one class "trains" to loss 0; the preset's lr at batch 8."""
    photos = photo_folder(shared_data, tmp_path / "one", 1, {"train": 8})
    env = {**CLI_ENV, "ALEXNET_CACHE": str(tmp_path / "cache-root")}
    proc = run_cli("train", "cifar10", "--data.source", photos, "--train.max_steps", "1", "--train.batch_size", "8",
                   "--train.threads", "1", "--run.out", tmp_path / "runs", "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("alexnet: warning: ")]
    assert len(warnings) == 2, proc.stderr
    assert "one class" in warnings[1] and "train.batch_size 8" in warnings[0] and "optim.lr" in warnings[0]
