"""A non-editable install works on its own: presets, version and commands come from the package.

``pip install --no-deps .`` (a real wheel build, not editable) into a fresh virtual
environment, then the CLI run from a directory outside the checkout. The fresh
environment borrows torch & co. from this interpreter's site-packages through a ``.pth``
line (paths added that way are not scanned for further ``.pth`` files, so this
checkout's own editable install stays invisible there).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from alexnet.locations import preset_files

REPO = Path(__file__).resolve().parents[1]


def _tracked_copy(dest: Path) -> Path:
    """The checkout's tracked and untracked-not-ignored files (what a clone would hold) in ``dest``."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to copy the package from")
    root = tmp_path_factory.mktemp("install")
    source = _tracked_copy(root / "src-copy")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--quiet", "--disable-pip-version-check", "--target", str(site), str(source)],
                          capture_output=True, text=True, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return venv, root


def _run(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ALEXNET_SHARED")}
    return subprocess.run([str(venv / "bin" / "python"), "-m", "alexnet", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_installed_package_is_the_copy_not_the_checkout(installed):
    venv, root = installed
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", "import alexnet; print(alexnet.__file__)"],
                          cwd=root, capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                                          if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr
    assert str(REPO) not in proc.stdout and "site-packages" in proc.stdout


def test_train_help_lists_the_presets_and_models_work_outside_the_checkout(installed, tmp_path):
    venv, _ = installed
    proc = _run(venv, tmp_path, "train", "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for name in preset_files():
        assert name in text
    proc = _run(venv, tmp_path, "models")
    assert proc.returncode == 0, proc.stderr
    assert "alexnet_owt" in proc.stdout and "61,100,840" in proc.stdout
    proc = _run(venv, tmp_path, "--version")
    assert proc.returncode == 0 and proc.stdout.strip() == "alexnet 0.1.0"


def test_an_installed_preset_loads_from_package_data(installed, tmp_path):
    venv, _ = installed
    code = ("from alexnet.train.config import load_config; c = load_config('cifar10'); "
            "print(c.preset, c.data.size, c.model.name)")
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["cifar10", "32", "alexnet_small"]


def test_the_serve_page_ships_as_package_data(installed, tmp_path):
    venv, _ = installed
    code = ("from importlib import resources; import alexnet.serve.app as a; "
            "print(str(a.__file__).count('site-packages'), 'id=\"top5\"' in "
            "resources.files('alexnet.serve').joinpath('page.html').read_text())")
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "True"]
