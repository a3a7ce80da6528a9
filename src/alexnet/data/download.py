"""Datasets from their official sources: ``alexnet prepare NAME --download``.

The archives are fetched, as their publishers distribute them, into
``alexnet.locations.cache_root()/downloads/<dataset>/`` and handed to ``prepare``
unchanged (prepare reads every one of these layouts in place):

* ``cifar10``: ``cifar-10-python.tar.gz`` from the University of Toronto (the python
  pickled batches, Krizhevsky 2009);
* ``fashion-mnist``: the four IDX ``.gz`` files from Zalando Research's repository;
* ``imagewoof`` / ``imagenette`` (the 160 px versions, ``imagewoof2-160.tgz`` and
  ``imagenette2-160.tgz``), their 320 px versions (``imagewoof2-320``, ``imagenette2-320``)
  and the full-size ones (``imagewoof2``, ``imagenette2``) from fast.ai's bucket.

Every file is checked against the size and the digests its publisher (or a project that
pins it) gives: SHA-256 where one is published, and MD5 where that is what the publisher
itself publishes (Toronto, Zalando). fast.ai publishes, for each archive, only its size
and the MD5 of its first MiB; that is all that can be checked for the Imagewoof archives
(no SHA-256 of their current versions is published), while the Imagenette archives also
have a SHA-256 from TensorFlow Datasets. ``docs/datasets.md`` lists where each value comes from.

How a download behaves:

* bytes go to ``NAME.part``; a re-run continues it with an HTTP Range request, and a
  server that answers a Range request with the whole file (200) restarts it cleanly;
* the file gets its final name (an atomic rename) only after its size and digests check
  out; a file that fails is removed and refused in one line naming it, the expected and
  the actual digest;
* no connection (offline, refused, unknown host, timeout) is one line naming the URL and
  the reason; an interrupted transfer keeps ``NAME.part`` for the next run;
* a tqdm bar (bytes, rate, ETA) on stderr when it is a terminal.

Two environment variables change where files come from and what they must match (the
tests point both at a loopback server and at the archives they build):
``ALEXNET_DOWNLOAD_MIRROR`` = a base URL serving the files under their official names, and
``ALEXNET_DOWNLOAD_MANIFEST`` = a JSON file ``{"FILE NAME": {"size": N, "sha256": "..."}}``
whose entries replace the built-in checks of those files.

Standard library only (urllib): no new dependency.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

from ..console import info, progress, warn
from ..errors import UserError
from ..files import FileLock, human_size
from ..locations import cache_root, preset_files, version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ENV_MIRROR = "ALEXNET_DOWNLOAD_MIRROR"
ENV_MANIFEST = "ALEXNET_DOWNLOAD_MANIFEST"
ENV_TIMEOUT = "ALEXNET_DOWNLOAD_TIMEOUT"    # seconds without data before a connection counts as dead
DEFAULT_TIMEOUT = 60.0
CHUNK = 1 << 16
MIB = 1 << 20
DIGESTS = {"sha256": "SHA-256", "md5": "MD5", "md5-first-mib": "MD5 of the first MiB"}


@dataclass(frozen=True)
class RemoteFile:
    """One file as published: where it is, its size in bytes and its digests (algorithm -> hex)."""
    name: str
    url: str
    size: int | None
    digests: dict


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str
    files: tuple
    source: str            # what prepare reads, inside the download folder: "" = the folder itself, else a file
    preset: str | None     # the preset that trains on it: its cache name and default --size


TORONTO = "https://www.cs.toronto.edu/~kriz/"
ZALANDO = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
FASTAI = "https://s3.amazonaws.com/fast-ai-imageclas/"


def _fastai(name: str, title: str, size: int, md5_first_mib: str, sha256: str | None, preset: str | None) -> Dataset:
    digests = {"md5-first-mib": md5_first_mib}
    if sha256:
        digests["sha256"] = sha256
    return Dataset(name, title, (RemoteFile(f"{name}.tgz", f"{FASTAI}{name}.tgz", size, digests),), f"{name}.tgz", preset)


DATASETS = {d.name: d for d in (
    Dataset("cifar10", "CIFAR-10 (python version)", (
        RemoteFile("cifar-10-python.tar.gz", TORONTO + "cifar-10-python.tar.gz", 170498071,
                   {"sha256": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
                    "md5": "c58f30108f718f92721af3b95e74349a"}),
    ), "cifar-10-python.tar.gz", "cifar10"),
    Dataset("fashion-mnist", "Fashion-MNIST (IDX)", (
        RemoteFile("train-images-idx3-ubyte.gz", ZALANDO + "train-images-idx3-ubyte.gz", 26421880,
                   {"sha256": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                    "md5": "8d4fb7e6c68d591d4c3dfef9ec88bf0d"}),
        RemoteFile("train-labels-idx1-ubyte.gz", ZALANDO + "train-labels-idx1-ubyte.gz", 29515,
                   {"sha256": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                    "md5": "25c81989df183df01b3e8a0aad5dffbe"}),
        RemoteFile("t10k-images-idx3-ubyte.gz", ZALANDO + "t10k-images-idx3-ubyte.gz", 4422102,
                   {"sha256": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                    "md5": "bef4ecab320f06d8554ea6380940ec79"}),
        RemoteFile("t10k-labels-idx1-ubyte.gz", ZALANDO + "t10k-labels-idx1-ubyte.gz", 5148,
                   {"sha256": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                    "md5": "bb300cfdad3c16e7a12a480ee83cd310"}),
    ), "", "fashion-mnist"),
    _fastai("imagewoof2-160", "Imagewoof, 160 px", 92612825, "3559b194123981a540b87132dbda412f", None, "imagewoof"),
    _fastai("imagewoof2-320", "Imagewoof, 320 px", 328387740, "7a1fd92672a559a85de76e4810a20c21", None, None),
    _fastai("imagewoof2", "Imagewoof, full size", 1343715595, "2cc1c1e36e20cb6fd24ffb978edcb487", None, None),
    _fastai("imagenette2-160", "Imagenette, 160 px", 99003388, "c475f8f7617a200ba35b9facc48443c3",
            "64d0c4859f35a461889e0147755a999a48b49bf38a7e0f9bd27003f10db02fe5", None),
    _fastai("imagenette2-320", "Imagenette, 320 px", 341663724, "1f1f74f133caff120e575856659b87a2",
            "569b4497c98db6dd29f335d1f109cf315fe127053cedf69010d047f0188e158c", None),
    _fastai("imagenette2", "Imagenette, full size", 1557161267, "2c774ecb40005b35d7937d50f5d42336",
            "6cbfac238434d89fe99e651496f0812ebc7a10fa62bd42d6874042bf01de4efd", None),
)}
ALIASES = {"imagewoof": "imagewoof2-160", "imagenette": "imagenette2-160", "cifar-10": "cifar10"}


def names() -> list[str]:
    """Every name ``--download`` accepts: the datasets, then their aliases."""
    return [*DATASETS, *ALIASES]


def known(name: str) -> bool:
    return name in ALIASES or name in DATASETS


def resolve(name: str) -> Dataset:
    """The dataset called ``name`` (or one of its aliases), or a UserError listing the known ones."""
    key = ALIASES.get(name, name)
    if key not in DATASETS:
        aliases = ", ".join(f"{a} = {d}" for a, d in ALIASES.items())
        raise UserError(f"--download: no official source known for {name!r} "
                        f"(choose one of {', '.join(DATASETS)}; aliases: {aliases})")
    return DATASETS[key]


def downloads_dir(root: str | os.PathLike | None = None) -> Path:
    """Where downloaded archives live: ``root``, else ``cache_root()/downloads``."""
    return Path(root) if root is not None else cache_root() / "downloads"


def preset_size(dataset: Dataset) -> int | None:
    """``data.size`` of the preset that trains on this dataset (None when no preset does)."""
    path = preset_files().get(dataset.preset) if dataset.preset else None
    if path is None:
        return None
    with open(path, "rb") as f:
        size = tomllib.load(f).get("data", {}).get("size")
    return int(size) if size is not None else None


def downloaded(dataset: Dataset, root: str | os.PathLike | None = None) -> Path | None:
    """What ``prepare`` reads for this dataset when every file of it is already on disk
    (verified again on use by :func:`fetch`), else None. Never touches the network."""
    folder = downloads_dir(root) / dataset.name
    if all((folder / remote.name).is_file() for remote in dataset.files):
        return folder / dataset.source if dataset.source else folder
    return None


# --------------------------------------------------------------------------------------
# overrides: a mirror, and the checks of republished files

def _mirrored(dataset: Dataset, mirror: str | None, manifest: dict | None) -> Dataset:
    files = []
    for f in dataset.files:
        if mirror:
            f = replace(f, url=mirror.rstrip("/") + "/" + f.name)
        if manifest and f.name in manifest:
            entry = manifest[f.name]
            f = replace(f, size=entry.get("size"), digests={k: v.lower() for k, v in entry.items() if k in DIGESTS})
        files.append(f)
    return replace(dataset, files=tuple(files))


def load_manifest(path: str) -> dict:
    """``{"FILE NAME": {"size": N, "sha256": HEX, "md5": HEX, "md5-first-mib": HEX}}``, checked."""
    where = f"{ENV_MANIFEST}={path}"
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise UserError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected an object mapping file names to their checks")
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise UserError(f"{where}: {name!r}: expected an object like {{\"size\": N, \"sha256\": \"...\"}}")
        unknown = sorted(set(entry) - {"size", *DIGESTS})
        if unknown:
            raise UserError(f"{where}: {name!r}: unknown key(s) {', '.join(unknown)} (known: size, {', '.join(DIGESTS)})")
        if not any(k in entry for k in DIGESTS):
            raise UserError(f"{where}: {name!r}: give at least one digest ({', '.join(DIGESTS)})")
        if "size" in entry and not (isinstance(entry["size"], int) and entry["size"] >= 0):
            raise UserError(f"{where}: {name!r}: size must be a whole number of bytes")
    return data


# --------------------------------------------------------------------------------------
# entry point

def fetch(name: str | Dataset, *, root: str | os.PathLike | None = None, quiet: bool = False,
          mirror: str | None = None, manifest: dict | None = None) -> Path:
    """Download (or find, already verified) every file of a dataset; return what prepare reads.

    ``mirror`` / ``manifest`` default to ``$ALEXNET_DOWNLOAD_MIRROR`` /
    ``$ALEXNET_DOWNLOAD_MANIFEST`` (see the module docstring).
    """
    dataset = name if isinstance(name, Dataset) else resolve(name)
    mirror = mirror if mirror is not None else os.environ.get(ENV_MIRROR) or None
    if manifest is None and os.environ.get(ENV_MANIFEST):
        manifest = load_manifest(os.environ[ENV_MANIFEST])
    dataset = _mirrored(dataset, mirror, manifest)
    folder = downloads_dir(root) / dataset.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{folder}: cannot create the download folder ({exc.strerror or exc})") from None
    for remote in dataset.files:
        fetch_file(remote, folder, quiet=quiet)
    return folder / dataset.source if dataset.source else folder


def fetch_file(remote: RemoteFile, folder: Path, *, quiet: bool = False) -> Path:
    """``folder/remote.name``, downloaded (resuming ``.part``) and verified, or a UserError."""
    final = folder / remote.name
    part = folder / (remote.name + ".part")
    if final.is_file():
        problem = verify(final, remote)
        if problem is None:
            info(f"{final}: already downloaded, {_checked(remote)} verified", quiet)
            return final
        warn(f"{problem}; removed, downloading it again")
        final.unlink()
    lock = FileLock(folder / (remote.name + ".lock"), remove=True)
    holder = lock.acquire()
    if holder is not None:
        raise UserError(f"{part}: another alexnet process ({holder}) is downloading this file; "
                        f"wait for it to finish, then run this again")
    try:
        _download_part(remote, part, final, quiet)
    finally:
        lock.release()
    info(f"{final}: {_checked(remote)} verified", quiet)
    return final


def _download_part(remote: RemoteFile, part: Path, final: Path, quiet: bool) -> None:
    """Append the missing bytes to ``part`` (a resumable partial file), verify, rename to ``final``."""
    try:
        handle = open(part, "ab")  # append: never truncate a partial file another run may be resuming
    except OSError as exc:
        raise UserError(f"{part}: cannot write the download ({exc.strerror or exc})") from None
    with handle:
        offset = handle.seek(0, os.SEEK_END)
        if remote.size is not None and offset > remote.size:
            handle.truncate(0)   # longer than the published file: not a prefix of it
            offset = 0
        if remote.size is None or offset < remote.size:
            try:
                _transfer(remote, handle, offset, part, quiet)
            except BaseException:
                handle.flush()
                if os.fstat(handle.fileno()).st_size == 0:
                    part.unlink()   # nothing arrived: leave no empty .part behind
                raise
        handle.flush()
        os.fsync(handle.fileno())
        problem = verify(part, remote, shown=final)
        if problem is not None:
            part.unlink()
            raise UserError(f"{problem}; the download from {remote.url} is corrupted or altered, "
                            f"removed (nothing kept)")
        os.replace(part, final)  # atomic: the final name only ever holds a verified file


# --------------------------------------------------------------------------------------
# transfer

def _request(url: str, offset: int, timeout: float):
    headers = {"User-Agent": f"alexnet/{version()} (Python urllib)", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    text = str(reason).strip()
    return text or type(reason).__name__


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes START-END/TOTAL`` -> (START, TOTAL); None for what is missing or unreadable."""
    try:
        unit, _, spec = (value or "").partition(" ")
        span, _, total = spec.partition("/")
        start = int(span.split("-", 1)[0])
        return (start, int(total) if total.strip() not in ("", "*") else None) if unit == "bytes" else (None, None)
    except ValueError:
        return None, None


def _transfer(remote: RemoteFile, handle, offset: int, part: Path, quiet: bool) -> None:
    try:
        timeout = float(os.environ.get(ENV_TIMEOUT) or DEFAULT_TIMEOUT)
    except ValueError:
        raise UserError(f"{ENV_TIMEOUT}={os.environ[ENV_TIMEOUT]!r}: expected a number of seconds") from None
    url = remote.url
    for _ in range(2):  # a second request only when a resume turned out impossible
        try:
            response = _request(url, offset, timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:   # the server cannot serve the rest: start again
                info(f"{url}: the server refused to resume at byte {offset:,}; starting again", quiet)
                handle.truncate(0)
                offset = 0
                continue
            raise UserError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise UserError(f"cannot download {url}: {_reason(exc)} (offline? check the connection, "
                            f"or set {ENV_MIRROR} to a reachable copy)") from None
        with response:
            length = response.headers.get("Content-Length")
            length = int(length) if length and length.isdigit() else None
            if offset and response.status == 206:
                start, total = _content_range(response.headers.get("Content-Range"))
                if start != offset:
                    info(f"{url}: the server resumed at another byte than {offset:,}; starting again", quiet)
                    handle.truncate(0)
                    offset = 0
                    continue
                total = total if total is not None else (offset + length if length is not None else None)
            else:
                if offset:
                    info(f"{url}: the server ignores resume requests (answered with the whole file); "
                         f"starting {remote.name} again from the beginning", quiet)
                    handle.truncate(0)
                    offset = 0
                total = length
            if remote.size is not None and total is not None and total != remote.size:
                raise UserError(f"cannot download {url}: the server offers {total:,} bytes, the published size is "
                                f"{remote.size:,} (the file changed upstream? see {ENV_MANIFEST} in docs/datasets.md)")
            _copy(response, handle, offset, total if total is not None else remote.size, url, part, quiet)
            return
    raise UserError(f"cannot download {url}: the server neither resumes nor restarts the transfer")


def _copy(response, handle, offset: int, total: int | None, url: str, part: Path, quiet: bool) -> None:
    size = f" ({human_size(total)})" if total else ""
    resumed = f", resuming at {human_size(offset)}" if offset else ""
    info(f"downloading {url}{size}{resumed}", quiet)
    bar = progress(total, part.name[: -len(".part")], "B", initial=offset, disable=quiet)
    bar.unit_scale, bar.unit_divisor = True, 1024   # console.progress counts items; bytes read better in KiB/MiB
    received, started = offset, time.perf_counter()
    try:
        while True:
            chunk = response.read(CHUNK)
            if not chunk:
                break
            handle.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as exc:  # reset, timeout, incomplete chunked body
        handle.flush()
        of = f"{total:,}" if total is not None else "?"
        raise UserError(f"download of {url} broke off after {received:,} of {of} bytes ({_reason(exc)}); "
                        f"{part} is kept and running this again resumes it") from None
    except KeyboardInterrupt:
        handle.flush()
        info(f"download interrupted after {received:,} bytes; {part} is kept and running this again resumes it")
        raise
    finally:
        bar.close()
    if total is not None and received < total:
        raise UserError(f"download of {url} broke off after {received:,} of {total:,} bytes (the server closed the "
                        f"connection); {part} is kept and running this again resumes it")
    seconds = time.perf_counter() - started
    if seconds > 0 and received > offset:
        info(f"received {human_size(received - offset)} in {seconds:.1f} s ({human_size((received - offset) / seconds)}/s)", quiet)


# --------------------------------------------------------------------------------------
# verification

def file_digests(path: Path, algorithms) -> dict:
    """The digests of a file in one pass (``md5-first-mib``: MD5 of its first 2**20 bytes, fast.ai's check)."""
    whole = {a: hashlib.new(a) for a in algorithms if a in ("sha256", "md5")}
    first = None
    with open(path, "rb") as f:
        while True:
            block = f.read(MIB)
            if not block:
                break
            if first is None:
                first = hashlib.md5(block).hexdigest()
                if not whole:
                    break   # fast.ai's check alone: the rest of the file is never read
            for h in whole.values():
                h.update(block)
    out = {a: h.hexdigest() for a, h in whole.items()}
    if "md5-first-mib" in algorithms:
        out["md5-first-mib"] = first if first is not None else hashlib.md5(b"").hexdigest()
    return out


def verify(path: Path, remote: RemoteFile, shown: Path | None = None) -> str | None:
    """None when ``path`` has the published size and digests, else one line saying what differs."""
    shown = shown or path
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        return f"{shown}: {size:,} bytes, expected {remote.size:,} (truncated or another file)"
    actual = file_digests(path, remote.digests)
    for algorithm, expected in remote.digests.items():
        if actual[algorithm] != expected.lower():
            return f"{shown}: {DIGESTS[algorithm]} mismatch: expected {expected}, got {actual[algorithm]}"
    return None


def _checked(remote: RemoteFile) -> str:
    checks = [DIGESTS[a] for a in remote.digests]
    return ("size and " if remote.size is not None else "") + " and ".join(checks)


