"""Every option of every command, and every setting, refuses nonsense in one line before any work.

The bad values are generated from the declarations themselves (alexnet.options.Spec: the
argparse ``type`` of each flag, and the ``setting(...)`` metadata of each config field), so an
option added later is covered without anyone remembering to: an option that declares nothing
to check fails :func:`test_every_option_declares_what_it_accepts`. Each case runs the real CLI
entry point (``alexnet.cli.main``) in this process, from an empty working folder, and demands
exit status 2, one ``alexnet: error:`` line naming the option and the value, no traceback, and
nothing written anywhere (no run folder, no cache, no output). A handful of the cases that once
ended in a traceback or a wrong result run as real subprocesses too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tarfile
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet import cli
from alexnet.checkpoint import save_model
from alexnet.data.preprocess import InputSpec
from alexnet.errors import UserError
from alexnet.models import build_model
from alexnet.options import PATH_KINDS, Mismatch, Spec, conform
from alexnet.train.config import SETTINGS, Config, load_config, to_toml

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the declarations

def commands(parser: argparse.ArgumentParser | None = None, path: tuple = ()) -> list[tuple[tuple, argparse.ArgumentParser]]:
    """(command words, parser) of every command that runs something: ``("experiment", "filters")``."""
    parser = parser or cli.build_parser()
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += commands(sub, path + (name,))
    if not found and path:
        found.append((path, parser))
    return found


COMMANDS = commands()
SILENT = (argparse._HelpAction, argparse._VersionAction, argparse._StoreTrueAction, argparse._StoreFalseAction,
          argparse._StoreConstAction, argparse._SubParsersAction)


def options_of(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, SILENT)]


def option_name(action: argparse.Action) -> str:
    """How argparse names the option in its messages: ``-o/--output``, or the positional's metavar."""
    if action.option_strings:
        return "/".join(action.option_strings)
    return action.metavar or action.dest


ALL_OPTIONS = [(words, a) for words, p in COMMANDS for a in options_of(p)]


def test_the_command_set():
    """The paper's figures and experiments under one verb (docs/cli.md)."""
    names = {" ".join(words) for words, _ in COMMANDS}
    assert {"experiment relu-tanh", "experiment ablations", "experiment filters", "experiment neighbors",
            "experiment towers", "train", "eval", "predict", "features", "export", "bench", "prepare"} <= names
    assert not {"filters", "neighbors", "towers"} & names


@pytest.mark.parametrize("words, action", ALL_OPTIONS, ids=[f"{' '.join(w)} {option_name(a)}" for w, a in ALL_OPTIONS])
def test_every_option_declares_what_it_accepts(words, action):
    """A flag is a switch, has choices, or has a Spec that says what it refuses; so a bad value can be made."""
    if action.choices:
        return
    assert isinstance(action.type, Spec), f"alexnet {' '.join(words)} {option_name(action)}: give it type=Spec(...)"
    assert bad_arguments(action.type, Path("/nonexistent")), f"{option_name(action)}: {action.type} refuses nothing"


def test_every_setting_declares_its_range():
    """Each number has a range, each string choices, a pattern or a path kind, or is free text on purpose."""
    # data.source: a folder, an archive or a dataset name, resolved (and refused) by prepare; preset: a label
    free_text = {"data.source", "preset"}
    for key, spec in SETTINGS.items():
        if key in free_text or spec.type in (bool, dict) or spec.choices:
            continue
        has_rule = any(v is not None for v in (spec.ge, spec.gt, spec.le, spec.lt)) or spec.pattern or spec.path
        assert has_rule, f"{key}: declare its range, pattern or path kind with setting(...)"
        assert spec.help, f"{key}: say what it means (help=...)"


def test_perf_groups_match_the_suite():
    from alexnet.perf import commands, suite
    assert commands.GROUPS == suite.GROUPS


# ----------------------------------------------------------------------------- bad values, from the declarations

def _below(spec: Spec) -> list:
    out = []
    if spec.ge is not None:
        out.append(spec.ge - 1)
    if spec.gt is not None:
        out.append(spec.gt)
    if spec.le is not None:
        out.append(spec.le + 1)
    if spec.lt is not None:
        out.append(spec.lt)
    return out


def _number_text(kind, value) -> str:
    return str(int(value)) if kind is int else repr(float(value))


def _not_matching(pattern: str) -> list[str]:
    return [t for t in ("", "a/b", "!!", "..", " x y ") if not re.fullmatch(pattern, t)][:2]


def bad_arguments(spec: Spec, tmp: Path) -> list[str]:
    """Command-line strings the Spec must refuse, made from what it declares."""
    kind = spec.type
    item = typing.get_args(kind)[0] if typing.get_origin(kind) is list else kind
    bad: list[str] = []
    if item in (int, float):
        bad.append("abc")
        if item is int:
            bad.append("1.5")
        else:
            bad += ["nan", "inf"]
        bad += [_number_text(item, v) for v in _below(spec)]
    if spec.choices:
        bad.append("no-such-choice")
    if spec.pattern:
        bad += _not_matching(spec.pattern)
    if spec.path:
        bad += bad_paths(spec.path, tmp)
    if kind is not item:                        # a list: an item that is not one
        bad.append("x,abc" if item in (int, float) else "")
    return [b for b in dict.fromkeys(bad) if b not in spec.special]


def bad_paths(kind: str, tmp: Path) -> list[str]:
    blocker = tmp / "a-file"                    # a plain file where a folder is needed
    pickle = tmp / "tv.pth"                     # a PyTorch pickle where a checkpoint is needed
    missing = tmp / "missing" / "thing.bin"
    return {
        "file": [str(missing), str(tmp)],
        "dir": [str(missing), str(blocker)],
        "exists": [str(missing)],
        "checkpoint": [str(missing), str(pickle)],
        "run": [str(missing), str(tmp / "empty")],
        "preset": ["no-such-preset"],
        "data": [str(missing)],
        "output": [str(blocker / "out.x"), str(tmp)],
        "out-dir": [str(blocker / "sub"), str(blocker)],
        "cache": [str(blocker)],
    }[kind] + [""]


def good_argument(action: argparse.Action, tmp: Path) -> str:
    """A value the option accepts, for the arguments a case must give besides the one it tests."""
    if action.choices:
        return sorted(map(str, action.choices))[0]
    spec: Spec = action.type
    if spec.path:
        return {"file": str(tmp / "image.png"), "dir": str(tmp), "exists": str(tmp), "checkpoint": str(tmp / "ok.safetensors"),
                "run": str(tmp / "run"), "preset": "fashion-mnist", "data": str(tmp / "cache"),
                "output": str(tmp / "out" / "result.x"), "out-dir": str(tmp / "out-dir"), "cache": str(tmp / "c")}[spec.path]
    if spec.type is int:
        return str(int(spec.ge if spec.ge is not None else (spec.gt + 1 if spec.gt is not None else 1)))
    return "x.png"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The files a case's other arguments point at: a checkpoint, a run folder, an image, a pickle."""
    tmp = tmp_path_factory.mktemp("world")
    torch.manual_seed(0)
    model = build_model("alexnet_small", num_classes=2, widths=[8, 8, 8, 8, 8], hidden=8)
    save_model(tmp / "ok.safetensors", model, name="alexnet_small", num_classes=2, in_channels=3,
               kwargs={"widths": [8, 8, 8, 8, 8], "hidden": 8}, input_spec=InputSpec(size=32, crop=28, mean="none"))
    torch.save(model.state_dict(), tmp / "tv.pth")
    (tmp / "a-file").write_text("not a folder\n")
    (tmp / "image.png").write_bytes(b"\x89PNG not really")
    (tmp / "empty").mkdir()
    (tmp / "run").mkdir()
    (tmp / "run" / "config.toml").write_text(to_toml(Config()))
    (tmp / "cache").mkdir()
    return tmp


def listing(*roots: Path) -> set[str]:
    return {str(p) for root in roots for p in root.rglob("*")}


def run_main(argv: list[str], capsys, where: Path, world: Path) -> tuple[int, str, str]:
    """``alexnet ARGV`` in this process, from the empty folder ``where``: (status, stdout, stderr)."""
    before = listing(where, world)
    cwd = os.getcwd()
    os.chdir(where)
    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        status = exc.code
    finally:
        os.chdir(cwd)
    out, err = capsys.readouterr()
    assert listing(where, world) == before, f"alexnet {' '.join(map(str, argv))} wrote " \
                                            f"{sorted(listing(where, world) - before)}"
    return status, out, err


def assert_refused(status, out, err, *named: str) -> None:
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("alexnet: error: "), (status, err)
    assert "Traceback" not in err and out == ""
    for thing in named:
        assert thing in lines[0], (thing, lines[0])


def case_argv(words: tuple, parser: argparse.ArgumentParser, tested: argparse.Action, value: str, world: Path) -> list:
    """The command with valid required arguments, and ``value`` for the option under test."""
    argv: list = list(words)
    for action in options_of(parser):
        if action is tested:
            if action.option_strings:
                continue
            argv.append(value)
        elif not action.option_strings and action.nargs not in ("?", "*"):
            argv.append(good_argument(action, world))
        elif action.required:
            argv += [action.option_strings[-1], good_argument(action, world)]
    if tested.option_strings:
        argv += [tested.option_strings[-1], value]
    return argv


CASES = [(w, a, b) for w, a in ALL_OPTIONS if isinstance(a.type, Spec) for b in bad_arguments(a.type, Path("@"))]
CASES += [(w, a, "no-such-choice") for w, a in ALL_OPTIONS if a.choices]


@pytest.mark.parametrize("words, action, template", CASES,
                         ids=[f"{' '.join(w)} {option_name(a)} {b.replace('@', '')}" for w, a, b in CASES])
def test_a_bad_value_of_any_option_is_one_line_before_any_work(words, action, template, world, tmp_path, capsys,
                                                               monkeypatch):
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache-root"))       # a prepare would show there
    value = template.replace("@", str(world))
    parser = dict(COMMANDS)[words]
    status, out, err = run_main(case_argv(words, parser, action, value, world), capsys, tmp_path, world)
    assert_refused(status, out, err)
    line = err.strip()
    named = [option_name(action)] + (action.option_strings or [])
    assert any(n in line for n in named) or (value and value in line), (named, line)   # the option, or the path
    assert value in line or repr(value) in line or value == "", (value, line)          # the value
    assert not (tmp_path / "cache-root").exists()


# ----------------------------------------------------------------------------- settings (--section.key)

def bad_settings(key: str, spec: Spec, world: Path) -> list[str]:
    """TOML values the setting must refuse: another type, and every bound, choice, pattern or path broken."""
    kind = spec.type
    wrong_type = {bool: '"yes"', int: '"ten"', float: '"fast"', str: "3", dict: "3"}
    origin = typing.get_origin(kind)
    bad = [wrong_type.get(kind, "3") if origin is not list else "3"]
    item = typing.get_args(kind)[0] if origin is list else kind
    numbers = [v for v in _below(spec)]
    if item in (int, float):
        if item is float:
            numbers += [math.nan, math.inf]
        bad += [("[%s]" if origin is list else "%s") % (_number_text(item, v) if math.isfinite(v) else
                                                        ("nan" if math.isnan(v) else "inf")) for v in numbers]
    if item is int and kind is int:
        bad.append("2.5")
    if spec.choices:
        bad.append('"no-such-choice"')
    if spec.pattern:
        bad += [json.dumps([t]) if origin is list else json.dumps(t) for t in _not_matching(spec.pattern)
                if t not in spec.special]
    if spec.path:
        bad += [json.dumps(p) for p in bad_paths(spec.path, world) if p not in spec.special]
    return list(dict.fromkeys(bad))


SETTING_CASES = [(k, v) for k, spec in SETTINGS.items() for v in bad_settings(k, spec, Path("@"))]


@pytest.mark.parametrize("key, template", SETTING_CASES, ids=[f"{k}={v.replace('@', '')}" for k, v in SETTING_CASES])
def test_a_bad_setting_is_one_line_before_any_work(key, template, world, tmp_path, capsys, monkeypatch):
    """Through ``alexnet train``: had the value passed, the run would have failed later on a missing source
    and named that instead, so a pass here means the value itself was refused, before any work."""
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache-root"))
    value = template.replace("@", str(world))
    argv = ["train", "fashion-mnist", "--data.source", world / "missing-source", f"--{key}", value]
    if key != "run.out":
        argv += ["--run.out", tmp_path / "runs"]
    if key != "data.cache":
        argv += ["--data.cache", tmp_path / "cache"]
    status, out, err = run_main(argv, capsys, tmp_path, world)
    assert_refused(status, out, err, key)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()
    with pytest.raises(UserError):                    # the same value through the API: refused as well
        load_config("fashion-mnist", [f"--{key}", value])


def test_the_schema_refuses_what_once_broke():
    """The values that once ended in a traceback or a silently wrong run."""
    for args in (["--optim.lr", "-0.1"], ["--optim.lr", "nan"], ["--optim.lr", "inf"], ["--optim.momentum", "1.5"],
                 ["--optim.weight_decay", "-1"], ["--train.threads", "-1"], ["--data.val_subset", "-5"],
                 ["--train.batch_size", "-8"], ["--optim.nesterov", "true", "--optim.momentum", "0"]):
        with pytest.raises(UserError) as err:
            load_config("fashion-mnist", args)
        assert args[0][2:] in str(err.value) and "\n" not in str(err.value)


def test_conform_is_the_one_typed_checker():
    """Config settings and model options go through the same checker: a string is never a bool."""
    from alexnet.models.registry import check_model_options
    assert conform(3, float) == 3.0 and isinstance(conform(3, float), float)
    assert conform([2, 2], tuple[int, int]) == [2, 2]
    for value, kind in (("False", bool), (True, int), (1.5, int), ([2], tuple[int, int]), ("x", list[int])):
        with pytest.raises(Mismatch):
            conform(value, kind)
    with pytest.raises(UserError, match="lrn"):
        check_model_options("alexnet", {"lrn": "False"})


def test_path_kinds_are_documented():
    assert set(PATH_KINDS) >= {"file", "dir", "checkpoint", "output", "out-dir"}


# ----------------------------------------------------------------------------- real subprocesses

def cli_run(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alexnet", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "ALEXNET_CACHE": str(cwd / "cache-root"), **(env or {})})


ONCE_BROKEN = {   # what each did before: a traceback, or exit 0 with a wrong result
    "negative lr": (["train", "--optim.lr", "-0.1"], "--optim.lr"),
    "nan lr": (["train", "--optim.lr", "nan"], "--optim.lr"),
    "negative momentum": (["train", "--optim.momentum", "-0.5"], "--optim.momentum"),
    "negative threads": (["train", "--train.threads", "-1"], "--train.threads"),
    "negative val subset": (["train", "--data.val_subset", "-5"], "--data.val_subset"),
    "unwritable run.out": (["train", "--run.out", "@/a-file/runs"], "--run.out"),
    "top -1": (["predict", "@/ok.safetensors", "@/image.png", "--top", "-1"], "--top"),
    "features batch 0": (["features", "@/ok.safetensors", "--data", "@/cache", "-o", "@/f.npy", "--batch-size", "0"],
                         "--batch-size"),
    "features batch -4": (["features", "@/ok.safetensors", "--data", "@/cache", "-o", "@/f.npy", "--batch-size", "-4"],
                          "--batch-size"),
    "neighbors batch 0": (["experiment", "neighbors", "@/ok.safetensors", "--data", "@/cache", "--query",
                           "@/image.png", "--batch-size", "0"], "--batch-size"),
    "filters scale -1": (["experiment", "filters", "--model", "alexnet", "--scale", "-1"], "--scale"),
    "eval out-dir under a file": (["eval", "@/ok.safetensors", "--data", "@/cache", "--out-dir", "@/a-file/x"],
                                  "--out-dir"),
    "a pickle to predict": (["predict", "@/tv.pth", "@/image.png"], "alexnet import torchvision"),
    "a pickle to eval": (["eval", "@/tv.pth", "--data", "@/cache"], "alexnet import torchvision"),
    "a pickle to export": (["export", "@/tv.pth", "--format", "onnx"], "alexnet import torchvision"),
    "a pickle to --init-from": (["train", "--init-from", "@/tv.pth"], "alexnet import torchvision"),
    "a pickle as train.init_from": (["train", "--train.init_from", "@/tv.pth"], "alexnet import torchvision"),
}


# These as real processes (the rest run in this process: the same entry point, without the start-up cost).
AS_PROCESSES = ("negative lr", "top -1", "features batch 0", "filters scale -1", "a pickle to --init-from")


@pytest.mark.parametrize("case", ONCE_BROKEN)
def test_what_once_broke_is_one_line(case, world, tmp_path, capsys, monkeypatch):
    args, named = ONCE_BROKEN[case]
    argv = [str(a).replace("@", str(world)) for a in args]
    if case in AS_PROCESSES:
        before = listing(world)
        proc = cli_run(*argv, cwd=tmp_path)
        status, out, err = proc.returncode, proc.stdout, proc.stderr
        assert listing(world) == before
    else:
        monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache-root"))
        status, out, err = run_main(argv, capsys, tmp_path, world)
    assert_refused(status, out, err, named)
    assert list(tmp_path.iterdir()) == []                   # nothing written, nothing prepared


def test_a_truncated_torchvision_file_is_one_line(tmp_path):
    """torchvision publishes the legacy (non-zip) pickle format; cut short, it once ended in struct.error."""
    model = build_model("alexnet_owt", num_classes=10)
    state = {k: v[:2].clone() if v.ndim else v for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "full.pth", _use_new_zipfile_serialization=False)
    for cut in (723, 4000, (tmp_path / "full.pth").stat().st_size // 2):
        (tmp_path / "cut.pth").write_bytes((tmp_path / "full.pth").read_bytes()[:cut])
        proc = cli_run("import", "torchvision", tmp_path / "cut.pth", "-o", tmp_path / "out" / "x.safetensors",
                       cwd=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and str(tmp_path / "cut.pth") in lines[0], (cut, proc.stderr)
        assert not (tmp_path / "out" / "x.safetensors").exists()


def test_init_from_that_cannot_take_the_data_is_refused_before_any_prepare(world, tmp_path, fashion_mnist_dir):
    """A checkpoint brings its architecture (docs/finetuning.md): one whose network cannot take the preset's
    28 px crops is refused, naming the setting and the checkpoint, before the (missing) cache is prepared."""
    other = tmp_path / "owt.safetensors"
    save_model(other, build_model("alexnet_owt", num_classes=10), name="alexnet_owt", num_classes=10, in_channels=3)
    proc = cli_run("train", "fashion-mnist", "--init-from", other, "--data.source", fashion_mnist_dir,
                   "--data.cache", tmp_path / "cache", "--run.out", tmp_path / "runs", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "data.crop" in lines[0] and str(other) in lines[0], proc.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()
    assert not (tmp_path / "cache-root").exists()


def test_predicting_with_an_untrained_classifier_warns(shared_data, tmp_path, world):
    """theano_alexnet's released weights are conv1-conv5 only: predictions from it mean nothing, and say so."""
    ckpt = tmp_path / "theano.safetensors"
    made = cli_run("import", "theano-alexnet", shared_data / "theano-alexnet-conv", "-o", ckpt, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    with tarfile.open(shared_data / "imagewoof2-160.tar") as tar:
        member = next(m for m in tar if m.isfile() and m.name.endswith(".JPEG"))
        (tmp_path / "dog.JPEG").write_bytes(tar.extractfile(member).read())
    proc = cli_run("predict", ckpt, tmp_path / "dog.JPEG", "--json", cwd=tmp_path)
    assert proc.returncode == 0 and json.loads(proc.stdout)[0]["top"], proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("alexnet: warning: ")]
    assert len(warnings) == 1 and "fc6" in warnings[0] and "fc8" in warnings[0], proc.stderr


def test_every_checkpoint_has_the_same_file_mode(world, tmp_path):
    """safetensors creates its files 0600 and a copy gets 0644: every checkpoint now has the umask's mode."""
    from alexnet.checkpoint import save_checkpoint
    model = build_model("alexnet_small", num_classes=2, widths=[8, 8, 8, 8, 8], hidden=8)
    written = [save_checkpoint(tmp_path / "a.safetensors", model=model, meta={}),
               save_model(tmp_path / "b.safetensors", model, name="alexnet_small", num_classes=2, in_channels=3,
                          kwargs={"widths": [8, 8, 8, 8, 8], "hidden": 8})]
    mask = os.umask(0)
    os.umask(mask)
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(0o666 & ~mask)}


def test_output_folders_that_do_not_exist_are_created(tmp_path, capsys, world):
    """`prepare SRC a/b/cache`, `-o a/b/x`: the folders above an output are made (docs/cli.md)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / "pics" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "pics" / cls / f"{i}.png")
    assert cli.main(["prepare", str(tmp_path / "pics"), str(tmp_path / "a" / "b" / "cache"), "--size", "16",
                     "--quiet", "--workers", "1"]) == 0
    assert (tmp_path / "a" / "b" / "cache" / "meta.json").is_file()
    capsys.readouterr()
    assert cli.main(["experiment", "filters", "--model", "alexnet_small", "-o", str(tmp_path / "c" / "d" / "f.png"),
                     "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["png"] == str(tmp_path / "c" / "d" / "f.png")
    csv_path = tmp_path / "e" / "f" / "predictions.csv"      # predict once refused a folder still to be made
    assert cli.main(["predict", str(world / "ok.safetensors"), str(tmp_path / "pics" / "cats"), "-o", str(csv_path)]) == 0
    assert csv_path.read_text().count("\n") == 3             # the header and the two pictures


def test_a_pickle_is_told_apart_from_a_checkpoint(tmp_path):
    """The sniff that names `alexnet import torchvision` never misreads a safetensors file, whose first
    byte is its header length's lowest (0x80 included, as pickles start), and catches every pickle format."""
    import pickle as pickle_module
    from safetensors.torch import save_file
    from alexnet.options import checkpoint_problem
    first_bytes = set()
    for n in range(300):
        path = tmp_path / f"s{n}.safetensors"
        save_file({"t": torch.zeros(n % 5 + 1)}, str(path), metadata={"pad": "a" * n})
        first_bytes.add(path.read_bytes()[0])
        assert checkpoint_problem(path) is None, n
    assert 0x80 in first_bytes                        # the case that once read as a pickle
    state = {"w": torch.zeros(2)}
    for i, save in enumerate((lambda p: torch.save(state, p),
                              lambda p: torch.save(state, p, _use_new_zipfile_serialization=False),
                              *(lambda p, k=k: p.write_bytes(pickle_module.dumps({"w": [1]}, protocol=k))
                                for k in (2, 3, 4, 5)))):
        path = tmp_path / f"p{i}.pth"
        save(path)
        assert "alexnet import torchvision" in checkpoint_problem(path), i
