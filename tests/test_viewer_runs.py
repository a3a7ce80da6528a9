"""`alexnet runs`: real run folders in each of their states, listed and compared through the CLI.

The states are made for real: a run that trains while it is listed (running), then is
stopped by SIGINT (interrupted), one killed with SIGKILL after its first checkpoint
(crashed), and finished ones. The best epoch is checked against what the trainer itself
kept as best (the epoch inside ``best.safetensors``), the differing settings against the
two configurations the runs were started with.
"""

from __future__ import annotations

import json
import shutil
import signal

import pytest
from PIL import Image

from alexnet.checkpoint import load_checkpoint

from conftest import run_cli
from train_support import CLI_ENV, last_step, one_line_error, popen_cli, train_args, wait_for

pytestmark = pytest.mark.usefixtures("one_thread")


def table_rows(stdout: str) -> dict[str, list[str]]:
    lines = stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["run", "model", "data"] and set(lines[1]) <= {"-", " "}
    return {line.split()[0]: line.split() for line in lines[2:]}


@pytest.fixture(scope="module")
def runs_dir(fmnist_cache, tmp_path_factory):
    """Two finished runs (lr 0.02 and 0.05), one interrupted, one crashed; and what `alexnet runs` printed
    while the interrupted one was still training."""
    root = tmp_path_factory.mktemp("runs")
    for name, lr in (("a-finished", "0.02"), ("b-finished", "0.05")):
        proc = run_cli(*train_args(fmnist_cache, root, name, "--optim.lr", lr, "--data.crop", "24", epochs=2),
                       env=CLI_ENV)
        assert proc.returncode == 0, proc.stderr
    live = popen_cli(*train_args(fmnist_cache, root, "c-interrupted", "--data.crop", "24", epochs=50), env=CLI_ENV)
    wait_for(lambda: last_step(root / "c-interrupted") >= 3, proc=live)
    while_running = run_cli("runs", root, "--json")
    live.send_signal(signal.SIGINT)
    live.communicate(timeout=300)
    assert live.returncode == 130
    dead = popen_cli(*train_args(fmnist_cache, root, "d-crashed", "--data.crop", "24", epochs=50), env=CLI_ENV)
    wait_for(lambda: (root / "d-crashed" / "epochs.jsonl").is_file() and last_step(root / "d-crashed") > 20,
             proc=dead)
    dead.kill()
    dead.communicate(timeout=60)
    return root, while_running


def test_the_table_says_how_each_run_stands(runs_dir):
    root, while_running = runs_dir
    assert while_running.returncode == 0, while_running.stderr
    live = {r["name"]: r for r in json.loads(while_running.stdout)}
    assert live["c-interrupted"]["status"] == "running"
    assert live["c-interrupted"]["holder"].startswith("process ")
    proc = run_cli("runs", root)
    assert proc.returncode == 0, proc.stderr
    rows = table_rows(proc.stdout)
    assert {name: row[-1] for name, row in rows.items()} == {
        "a-finished": "finished", "b-finished": "finished", "c-interrupted": "interrupted", "d-crashed": "crashed"}
    assert rows["a-finished"][1:4] == ["alexnet_small", "fmnist-28-60", "2/2"]
    for name, row in rows.items():     # epochs done: the epoch records each run logged
        logged = (root / name / "epochs.jsonl").read_text().splitlines()
        assert row[3] == f"{len(logged)}/{2 if 'finished' in name else 50}"


def test_best_is_the_epoch_the_trainer_kept_as_best(runs_dir):
    root, _ = runs_dir
    runs = {r["name"]: r for r in json.loads(run_cli("runs", root, "--json").stdout)}
    for name in ("a-finished", "b-finished", "c-interrupted", "d-crashed"):
        if not (root / name / "best.safetensors").is_file():       # stopped before its first validation
            assert runs[name]["best_val_top1_err"] is None and name == "c-interrupted"
            continue
        kept = load_checkpoint(root / name / "best.safetensors").meta["epoch"]
        records = [json.loads(line) for line in (root / name / "epochs.jsonl").read_text().splitlines()]
        at_best = next(r for r in records if r["epoch"] == kept)
        assert runs[name]["best_epoch"] == kept
        assert (runs[name]["best_val_top1_err"], runs[name]["best_val_top5_err"]) == (
            at_best["val_top1_err"], at_best["val_top5_err"])


def test_a_run_folder_alone_and_nested_runs(runs_dir, tmp_path):
    root, _ = runs_dir
    one = run_cli("runs", root / "a-finished", "--json")
    assert [r["name"] for r in json.loads(one.stdout)] == ["a-finished"]
    shutil.copytree(root / "a-finished", tmp_path / "experiment" / "seed0" / "run", ignore=shutil.ignore_patterns("*.safetensors"))
    nested = json.loads(run_cli("runs", tmp_path, "--json").stdout)
    assert [r["name"] for r in nested] == ["experiment/seed0/run"]
    empty = run_cli("runs", tmp_path / "experiment" / "seed0" / "run" / "..", "--json")
    assert empty.returncode == 0
    (tmp_path / "none").mkdir()
    nothing = run_cli("runs", tmp_path / "none")
    assert nothing.returncode == 0 and nothing.stdout == "" and "no run folders" in nothing.stderr
    one_line_error(run_cli("runs", tmp_path / "missing"), str(tmp_path / "missing"), "no such folder")


def test_compare_prints_what_differs_and_draws_one_png(runs_dir, tmp_path):
    root, _ = runs_dir
    out = tmp_path / "plots" / "both.png"                 # its folder is made (docs/cli.md)
    proc = run_cli("runs", root, "--compare", "a-finished", str(root / "b-finished"), "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    # The two runs were started with --optim.lr 0.02 and 0.05 and otherwise the same settings.
    assert result["differences"] == {"optim.lr": ["0.02", "0.05"]}
    assert result["plot"] == str(out)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 1000
    text = run_cli("runs", root, "--compare", "b-finished", "c-interrupted", "-o", tmp_path / "two.png")
    assert text.returncode == 0, text.stderr     # both at the preset's lr 0.05; 2 and 50 epochs
    lines = text.stdout.split("\n\n")[1].splitlines()
    assert lines[0].split() == ["setting", "b-finished", "c-interrupted"] and lines[2:] == [
        "train.epochs  2           50"]


def test_compare_refuses_what_it_cannot_do(runs_dir, tmp_path):
    root, _ = runs_dir
    one_line_error(run_cli("runs", root, "--compare", "a-finished", "nope"), "nope", "no such run folder")
    one_line_error(run_cli("runs", root, "--compare", "a-finished"), "--compare", "at least two")
    (tmp_path / "a-file").write_text("not a folder\n")
    one_line_error(run_cli("runs", root, "--compare", "a-finished", "b-finished", "-o", tmp_path / "a-file" / "x.png"),
                   str(tmp_path / "a-file"), "is a file, not a folder")
    one_line_error(run_cli("runs", root, "-o", tmp_path / "x.png"), "--compare")
    (tmp_path / "plain").mkdir()
    one_line_error(run_cli("runs", root, "--compare", "a-finished", tmp_path / "plain"), "not a run folder")
    assert not list(tmp_path.glob("*.png"))
