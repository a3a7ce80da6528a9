"""A non-editable install works on its own: presets, version and commands come from the package.

``pip install --no-deps .`` (a real wheel build, not editable) into a fresh virtual
environment, then the CLI run from a directory outside the checkout. The fresh
environment borrows torch & co. from this interpreter's site-packages through a ``.pth``
line (paths added that way are not scanned for further ``.pth`` files, so this
checkout's own editable install stays invisible there).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest
import torch

from alexnet.locations import preset_files
from test_weights_torchvision import layout

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


def test_an_installed_package_predicts_imported_torchvision_weights_with_ilsvrc_names(installed, tmp_path,
                                                                                     shared_data):
    """Far from ../shared, with no class list in the environment: imported torchvision weights name
    their 1000 outputs from the package's own list. Weights zero but for the last bias, which ranks
    the classes in an order the test chose, so the printed top 5 is known beforehand."""
    venv, _ = installed
    order = [207, 1, 999, 0, 430]       # golden retriever, goldfish, toilet tissue, tench, basketball
    state = {k: torch.zeros(s) for k, s in layout()}
    state["classifier.6.bias"][order] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    torch.save(state, tmp_path / "tv.pth")
    with tarfile.open(shared_data / "imagenet-sample-500.tar") as tar:
        member = next(m for m in tar if m.isfile() and m.name.endswith(".JPEG"))
        (tmp_path / "photo.JPEG").write_bytes(tar.extractfile(member).read())
    far = tmp_path / "far" / "away"
    far.mkdir(parents=True)
    proc = _run(venv, far, "import", "torchvision", str(tmp_path / "tv.pth"), "-o", "tv.safetensors")
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr
    proc = _run(venv, far, "predict", "tv.safetensors", str(tmp_path / "photo.JPEG"), "--json")
    assert proc.returncode == 0, proc.stderr
    top = json.loads(proc.stdout)[0]["top"]
    wnids, names = zip(*[ln.split()[1:3] for ln in (shared_data / "imagenet-classes.txt").read_text().splitlines()], strict=True)
    assert [t["class"] for t in top] == [wnids[i] for i in order]
    assert [t["name"] for t in top] == [names[i].replace("_", " ") for i in order]


def test_the_serve_page_ships_as_package_data(installed, tmp_path):
    venv, _ = installed
    code = ("from importlib import resources; import alexnet.serve.app as a; "
            "print(str(a.__file__).count('site-packages'), 'id=\"top5\"' in "
            "resources.files('alexnet.serve').joinpath('page.html').read_text())")
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "True"]
