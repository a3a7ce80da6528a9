"""Every command in README.md and docs/*.md runs, as written, on small data.

A document's commands run in order in one sandbox folder (so ``alexnet eval runs/demo``
finds the run an earlier ``alexnet train ... --run.name demo`` made), with ``../shared``
beside the sandbox as it is beside the checkout, and ``.venv/bin`` first on PATH (what
``source .venv/bin/activate`` does). What keeps them small is added to each command, never
changed in it: a step budget for anything that trains, one round for the benchmark. The
real files from ../shared are used where a command names them.

A command that fails as written fails this test, naming the document, its line, the
command and its error. Blocks marked ``<!-- needs: gpu -->`` (or ``ilsvrc-2012``,
``internet``, ``cluster``) are skipped here with that reason; ``<!-- illustrative -->``
marks a synopsis that is not a command (tests/docs_commands.py has the rules).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import re
import tarfile
from pathlib import Path

import pytest

from docs_commands import FILE_TOOLS, Command, document_commands, placeholders

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ALEXNET_SHARED", REPO.parent / "shared"))
DOCS = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
VENV_BIN = Path(sys.executable).parent
PHOTO = "n01440764_tench.JPEG"
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")     # a real ILSVRC-2012 photo from ../shared's sample

pytestmark = pytest.mark.docs

# What is added to a command to keep it small, by its subcommand; a flag the command already
# gives is left as written. A resumed run keeps its own data: only the step limit is added.
TRAIN_BUDGET = {"--train.max_steps": "2", "--data.train_subset": "256", "--data.val_subset": "64",
                "--data.workers": "0", "--run.plots": "false"}
BUDGETS: dict[tuple[str, ...], dict[str, str]] = {
    ("train",): TRAIN_BUDGET,
    ("eval",): {"--limit": "64", "--workers": "0"},
    ("experiment", "relu-tanh"): {"--max-steps": "2", "--seeds": "1", "--train-subset": "256", "--lr-grid": "0.01"},
    ("experiment", "ablations"): {"--quick": ""},
    ("bench",): {"--rounds": "1", "--batch": "2", "--image-size": "63", "--only": "limits"},
}
EXCLUDES = {"--limit": ("-o", "--output")}     # eval writes a prediction file for the whole split only
NOT_RUN = {   # commands this suite does not start, with the reason shown in the skip
    "scripts/test.sh": "the test suite itself",
    "pytest": "the test suite itself",
    "tests.reliability.report": "runs the reliability suite",
    "tensorboard": "a third-party viewer that serves until stopped",
    "gpu-check.sh": "the device check: its CPU dry run is tests/test_device_pipeline.py's",
}


def budget_for(argv: list[str]) -> list[str]:
    """The flags that keep ``alexnet ARGV`` small (see BUDGETS)."""
    if "--resume" in argv:
        return [] if "--train.max_steps" in argv else ["--train.max_steps", "2"]
    words = [a for a in argv if not a.startswith("-")]
    for key, flags in BUDGETS.items():
        if tuple(words[: len(key)]) == key:
            return [x for flag, value in flags.items() if flag not in argv and not set(EXCLUDES.get(flag, ())) & set(argv)
                    for x in (flag, value) if x]
    return []


def run_one(command: Command, sandbox: Path, env: dict) -> subprocess.CompletedProcess | str:
    """Run one documented command; a string is the reason it was not run."""
    argv = list(command.argv)
    for marker, reason in NOT_RUN.items():
        if any(marker in a for a in argv):
            return reason
    if argv[:2] == ["source", ".venv/bin/activate"]:
        return "PATH already has the environment's bin folder"
    env = dict(env)
    while argv and ENV_ASSIGNMENT.match(argv[0]):         # VAR=value command ...: for this command only
        name, _, value = argv.pop(0).partition("=")
        if name != "PYTHONPATH":                           # the suite's own (the checkout's src) stays
            env[name] = value
    program, rest = argv[0], argv[1:]
    # A repository script named from the checkout (python benchmarks/X.py, python tests/X.py) is
    # the checkout's file; the command still runs in the sandbox, so what it writes lands there.
    if "python" in program and rest and not rest[0].startswith("-") and (REPO / rest[0]).is_file():
        rest = [str(REPO / rest[0]), *rest[1:]]
    if program in FILE_TOOLS:
        return subprocess.run(["bash", "-c", command.source], cwd=sandbox, env=env, capture_output=True, text=True,
                              timeout=1800)
    if program == "alexnet":
        full = [sys.executable, "-m", "alexnet", *rest, *budget_for(rest)]
    elif program == "torchrun":
        at = rest.index("alexnet") if "alexnet" in rest else len(rest)
        full = [sys.executable, "-m", "torch.distributed.run", *rest, *budget_for(rest[at + 1:])]
    elif program == "bash" and rest and rest[0].startswith("scripts/"):
        script = REPO / rest[0]
        inner = rest[1:]
        # demo.sh ends in `alexnet train fashion-mnist "$@"`: the same budget, and its run in the sandbox
        extra = [*budget_for(["train", *inner]), "--run.out", str(sandbox / "runs")] if rest[0] == "scripts/demo.sh" else []
        full = ["bash", str(script), *inner, *extra]
    elif program.startswith(".venv/bin/") or program in ("python", "python3"):
        full = [sys.executable, *rest] if "python" in program else [str(VENV_BIN / Path(program).name), *rest]
    else:
        raise AssertionError(f"{command.doc}:{command.line}: no rule to run {program!r}")
    return subprocess.run(full, cwd=sandbox, env=env, capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="session")
def docs_cache_root(tmp_path_factory) -> Path:
    """One cache root for every document: a dataset prepared by one document's command is
    found by the next, as on a user's machine."""
    return tmp_path_factory.mktemp("docs-cache")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_command_of_the_document_runs(doc: Path, tmp_path: Path, docs_cache_root: Path):
    commands = document_commands(doc, REPO)
    if not commands:
        pytest.skip("no commands in this document")
    if not (SHARED / "data").is_dir():
        pytest.skip(f"the documents' commands use the real data in {SHARED / 'data'} (absent)")
    sandbox = tmp_path / "work"
    sandbox.mkdir()
    (tmp_path / "shared").symlink_to(SHARED.resolve())
    with tarfile.open(SHARED / "data" / "imagenet-sample-500.tar") as tar:   # "photo.jpg": any photo of the reader's
        (sandbox / "photo.jpg").write_bytes(tar.extractfile(PHOTO).read())
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               ALEXNET_CACHE=str(docs_cache_root), ALEXNET_SHARED=str(tmp_path / "shared"),
               PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]),   # `python -m benchmarks` too
               MPLBACKEND="Agg")
    skipped = []
    for command in commands:
        where = f"{command.doc}:{command.line}: {command.text}"
        if command.needs:
            skipped.append(f"{where} (needs {', '.join(command.needs)})")
            continue
        assert not placeholders(command.argv), (f"{where}: {placeholders(command.argv)} stand for something the "
                                                "reader supplies: name a real one, or mark the block <!-- illustrative -->")
        proc = run_one(command, sandbox, env)
        if isinstance(proc, str):
            skipped.append(f"{where} ({proc})")
            continue
        assert proc.returncode == 0, (f"{where}\nexited {proc.returncode}\n--- stderr (end) ---\n"
                                      f"{proc.stderr[-3000:]}\n--- stdout (end) ---\n{proc.stdout[-1500:]}")
    if skipped:
        print("not run here:\n  " + "\n  ".join(skipped))
    shutil.rmtree(sandbox, ignore_errors=True)
