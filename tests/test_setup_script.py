"""scripts/setup.sh and scripts/demo.sh where the Debian packages cannot be installed.

Run for real (bash) in a copy of the scripts with a stand-in ``.venv`` (its ``alexnet``
records its arguments) and a PATH holding only the tools the scripts use plus stand-ins
for ``id``, ``apt-get`` and ``sudo`` that record how they were called. Nothing on the
machine is installed or changed; the real apt-get is never on the PATH.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("bash", "cat", "sha256sum", "cut", "ls", "dirname", "env")


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


@pytest.fixture
def sandbox(tmp_path):
    """A checkout copy whose .venv is already 'installed' (stamp matches), and a bare PATH."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    for name in ("scripts/setup.sh", "scripts/demo.sh", "pyproject.toml", "constraints.txt"):
        shutil.copy(REPO / name, root / name)
    venv = root / ".venv" / "bin"
    venv.mkdir(parents=True)
    log = tmp_path / "calls.log"
    _script(venv / "python", "exit 0\n")
    _script(venv / "alexnet", f'echo "alexnet $*" >> {log}\n')
    stamp = hashlib.sha256((root / "pyproject.toml").read_bytes() + (root / "constraints.txt").read_bytes())
    (root / ".venv" / ".alexnet-installed").write_text(stamp.hexdigest() + "\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        if found is None:
            pytest.skip(f"{tool} not found")
        os.symlink(found, bin_dir / tool)

    def run(script: str, *, uid: int = 0, apt: str | None = None, sudo: bool = False):
        _script(bin_dir / "id", f'[ "$1" = -u ] && echo {uid}\n')
        for name in ("apt-get", "sudo"):
            if (bin_dir / name).exists():
                (bin_dir / name).unlink()
        if apt is not None:   # "ok" or "fail"
            _script(bin_dir / "apt-get", f'echo "apt-get $*" >> {log}\n' + ("exit 1\n" if apt == "fail" else "exit 0\n"))
        if sudo:
            _script(bin_dir / "sudo", f'echo "sudo $*" >> {log}\n"$@"\n')
        env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "ALEXNET_FASHION_MNIST": str(tmp_path / "absent"),
               "ALEXNET_CHROMIUM": str(tmp_path / "absent" / "chromium")}
        proc = subprocess.run(["bash", f"scripts/{script}"], cwd=root, env=env, capture_output=True, text=True,
                              timeout=60)
        calls = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return proc, calls
    return run


def test_no_apt_get_setup_goes_on_and_says_what_to_install(sandbox):
    proc, calls = sandbox("setup.sh")
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("setup: cannot install dataset-fashion-mnist")
    assert "(no apt-get)" in line and "apt-get install dataset-fashion-mnist" in line
    assert calls == []


def test_the_browser_of_the_page_test_is_installed_with_the_rest(sandbox):
    proc, calls = sandbox("setup.sh", apt="ok")
    assert proc.returncode == 0, proc.stderr
    install = [c for c in calls if c.startswith("apt-get install")]
    assert len(install) == 1 and install[0].split()[-1] == "chromium"
    proc, calls = sandbox("setup.sh")
    assert "chromium" in proc.stderr and "the browser test skips" in proc.stderr


def test_not_root_without_sudo_never_calls_apt_get(sandbox):
    proc, calls = sandbox("setup.sh", uid=1000, apt="ok")
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert "(not root and no sudo)" in line
    assert calls == []


def test_not_root_with_sudo_installs_through_sudo(sandbox):
    proc, calls = sandbox("setup.sh", uid=1000, apt="ok", sudo=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[0].startswith("setup: apt-get install dataset-fashion-mnist")
    assert calls[0] == "sudo apt-get update -qq" and calls[2].startswith("sudo apt-get install -y -qq dataset-fashion-mnist")


def test_failing_apt_get_is_one_line_and_not_fatal(sandbox):
    proc, calls = sandbox("setup.sh", apt="fail")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("setup: apt-get install dataset-fashion-mnist")
    assert "failed; going on without them" in proc.stderr.splitlines()[-1]
    assert calls == ["apt-get update -qq"]


def test_demo_without_the_package_downloads_then_trains(sandbox):
    proc, calls = sandbox("demo.sh")
    assert proc.returncode == 0, proc.stderr
    assert calls == ["alexnet prepare fashion-mnist --download", "alexnet train fashion-mnist"]
    assert "using Fashion-MNIST from its official source instead" in proc.stderr
