"""Where things are: the presets (package data), the default cache folder, the real data
beside a checkout, and the checkout itself when there is one.

Everything the installed package needs ships inside it (``importlib.resources``), so a
non-editable ``pip install`` works from any directory. The checkout is only ever an
optional extra: ``checkout_root()`` is None for an installed package.
Floor 1: imports nothing from alexnet.
"""

from __future__ import annotations

import os
from importlib import metadata, resources
from pathlib import Path

ENV_CACHE = "ALEXNET_CACHE"      # default folder of prepared caches (default ~/.cache/alexnet)
ENV_SHARED = "ALEXNET_SHARED"    # the folder holding data/ (default: ../shared beside a checkout)


def version() -> str:
    """The installed distribution's version (package metadata), or "0+unknown" when not installed."""
    try:
        return metadata.version("alexnet")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def preset_files() -> dict[str, Path]:
    """Preset name -> its TOML file, from the package's ``presets`` data folder."""
    folder = resources.files("alexnet") / "presets"
    found = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".toml"):
            found[entry.name[: -len(".toml")]] = Path(str(entry))
    return dict(sorted(found.items()))


def checkout_root() -> Path | None:
    """The source checkout this package runs from (editable install or PYTHONPATH=src), else None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "src" / "alexnet").is_dir() else None


def shared_dir() -> Path:
    """The folder holding ``data/``: $ALEXNET_SHARED, else ``../shared`` beside the checkout,
    else ``../shared`` beside the current directory."""
    if os.environ.get(ENV_SHARED):
        return Path(os.environ[ENV_SHARED]).expanduser()
    root = checkout_root()
    return (root.parent if root is not None else Path.cwd().parent) / "shared"


def cache_root() -> Path:
    """Where prepared caches live when a command is given a source rather than a cache."""
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "alexnet").expanduser()


def expand_source(text: str) -> str:
    """A data source as written in a preset or on the command line, made concrete.

    ``$VARS`` and ``~`` are expanded. A relative path that does not exist from the current
    directory and starts with ``../shared/`` is looked up in :func:`shared_dir` (presets
    name ``../shared/data/...``, the layout beside a checkout).
    """
    expanded = os.path.expanduser(os.path.expandvars(text))
    if os.path.isabs(expanded) or os.path.exists(expanded):
        return expanded
    prefix = "../shared/"
    if expanded.startswith(prefix):
        candidate = shared_dir() / expanded[len(prefix):]
        if candidate.exists():
            return str(candidate)
    return expanded
