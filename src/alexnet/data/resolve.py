"""How a ``--data`` argument (or a preset's ``data.source``) becomes an opened cache: one rule.

    cache = resolve_cache("../shared/data/cifar10-jpg.tar.gz", size=32)

* A folder holding ``meta.json`` is a prepared cache and is opened as it is.
* Anything else is a *source* (a folder tree, a .tar/.tar.gz archive, an ILSVRC val
  folder, a shorthand such as ``fashion-mnist``, or an official dataset's name such as
  ``cifar10`` once ``alexnet prepare cifar10 --download`` has fetched it). It is prepared once, at ``size`` px, into
  ``<cache root>/<name>-<size>`` and reused from then on; the cache root is
  ``$ALEXNET_CACHE`` or ``~/.cache/alexnet`` (:func:`alexnet.locations.cache_root`).
* ``<name>`` is :func:`source_name`: the source's last path component without its archive
  suffixes (``cifar10-jpg.tar.gz`` -> ``cifar10-jpg``), unless the caller gives one
  explicitly (the config key ``data.name``). So the same source resolves to the same cache
  folder whichever command (train, eval, experiment, neighbors) sees it first.

Relative sources that start with ``../shared/`` are looked up beside the checkout too
(:func:`alexnet.locations.expand_source`), which is how the presets name the real data.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..console import info
from ..errors import UserError
from ..locations import cache_root, expand_source
from . import download
from .cache import Cache, open_cache
from .prepare import prepare
from .sources import SHORTHANDS

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar", ".zip")


def is_cache(path: str | os.PathLike) -> bool:
    return (Path(path) / "meta.json").is_file()


def source_name(source: str | os.PathLike) -> str:
    """``/x/cifar10-jpg.tar.gz`` -> ``cifar10-jpg``; ``fashion-mnist`` -> ``fashion-mnist``."""
    name = Path(str(source).rstrip("/")).name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name or "data"


def default_cache_dir(source: str | os.PathLike, size: int, name: str | None = None) -> Path:
    """Where the source is prepared at ``size`` px: ``<cache root>/<name>-<size>``. An official
    dataset given by name or alias (``imagewoof``) is named after the dataset (``imagewoof2-160``)."""
    if name is None and download.known(str(source)):
        name = download.resolve(str(source)).name
    return cache_root() / f"{name or source_name(source)}-{int(size)}"


def cache_dir_for(data: str | os.PathLike, size: int, name: str | None = None) -> Path:
    """The cache folder ``data`` stands for: itself when it is a cache, else its default folder."""
    text = expand_source(str(data))
    return Path(text) if is_cache(text) else default_cache_dir(text, size, name)


def ensure_prepared(data: str | os.PathLike, size: int, *, name: str | None = None, cache: str | os.PathLike | None = None,
                    quiet: bool = False, what: str = "--data") -> Path:
    """The cache folder for ``data``, preparing it first when it does not exist yet.

    ``cache``: an explicit cache folder (the config's ``data.cache``) instead of the default one.
    ``what``: how the argument is called, for error messages (``--data``, ``data.source``).
    """
    text = expand_source(str(data)) if data else ""
    if text and is_cache(text):
        return Path(text)
    out = Path(cache).expanduser() if cache else (default_cache_dir(text, size, name) if text else None)
    if out is not None and is_cache(out):
        return out
    if not text:
        raise UserError(f"{out}: no such cache, and no source ({what}) to build it from")
    source = text
    if text not in SHORTHANDS and not os.path.exists(text):
        source = _downloaded_source(text, data, what)
    info(f"preparing {data} -> {out} at {size} px (once; later runs reuse it)", quiet)
    out.parent.mkdir(parents=True, exist_ok=True)
    prepare(source, out, size=size, quiet=quiet)
    return out


def _downloaded_source(text: str, data, what: str) -> str:
    """An official dataset named by its name (``cifar10``): its downloaded files; else a UserError
    that says how to get them."""
    if download.known(text):
        dataset = download.resolve(text)
        found = download.downloaded(dataset)
        if found is None:
            raise UserError(f"{data}: {dataset.title} is not downloaded yet; run 'alexnet prepare {text} --download' "
                            f"(or give a path to its files)")
        return str(download.fetch(dataset, quiet=True))     # verified again, never re-downloaded
    hint = ""
    guess = source_name(text).split("-")[0]
    if download.known(guess):
        hint = f"; or use the official archive: 'alexnet prepare {guess} --download', then {what} {guess}"
    raise UserError(f"{data}: no such file or directory ({what}: neither a cache nor a dataset source{hint})")


def resolve_cache(data: str | os.PathLike, size: int, *, name: str | None = None, quiet: bool = False) -> Cache:
    """Open the cache ``data`` stands for (see the module docstring), preparing it when needed."""
    return open_cache(ensure_prepared(data, size, name=name, quiet=quiet))
