"""File plumbing, written once: atomic writes and copies, the one lock, sizes for people.

Every file the package writes for keeps (checkpoints, logs rewritten on resume, summaries,
exports, cache metadata, experiment records) goes through :func:`atomic_write` or
:func:`atomic_copy`, and every "only one process at a time" goes through :class:`FileLock`.

The durability rule, the same for every writer: the new bytes go to ``NAME.tmp-PID`` beside
``NAME``; that file is flushed and fsync'd (its bytes are on disk before any name points at
them), renamed over ``NAME`` with ``os.replace`` (atomic on POSIX: a reader sees the old file
or the new one, never a mix), and the folder is fsync'd (the rename itself survives a power
cut). A write that fails removes its temporary file and raises one :class:`UserError` line
naming the file and the reason (a full disk, a quota, a read-only folder); a process killed
mid-write leaves only ``NAME.tmp-PID``, which the next write of ``NAME`` removes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import UserError

Writer = Callable[[BinaryIO], None]


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc).rsplit(": ", 1)[-1] or type(exc).__name__


def _umask() -> int:
    mask = os.umask(0)     # read by setting: there is no other way; set straight back
    os.umask(mask)
    return mask


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make a rename (or a new file) in ``folder`` survive a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | str | Writer, *, what: str = "file",
                 errors: tuple[type[BaseException], ...] = ()) -> Path:
    """Write ``data`` to ``path`` by the module's rule; returns the path.

    ``data``: bytes, text (UTF-8), or a function that writes into the open binary file.
    ``what`` names the file in the error line ("checkpoint", "export", ...). ``errors``:
    further exception types of the writer (a library's own I/O error) that also mean the
    disk refused the write. The parent folder is created when missing.
    """
    def write_to(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return atomic_write_with(path, write_to, what=what, errors=errors)


def atomic_write_with(path: str | os.PathLike, write_to: Callable[[Path], None], *, what: str = "file",
                      errors: tuple[type[BaseException], ...] = ()) -> Path:
    """:func:`atomic_write` for a writer that takes a file name (``safetensors.save_file``):
    ``write_to(tmp_path)`` must create that exact file; then the module's rule."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f"{path.name}.tmp-*"):   # left by a killed writer
            stale.unlink(missing_ok=True)
        write_to(tmp)
        os.chmod(tmp, 0o666 & ~_umask())     # every file we write has the umask's mode (a library may make 0600)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except (OSError, *errors) as exc:
        with contextlib.suppress(OSError):     # nothing to remove when the folder itself was unusable
            tmp.unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write {what} ({_reason(exc)})") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike, *, what: str = "file") -> Path:
    """``dst`` <- a copy of ``src``, by the module's rule (the old ``dst`` or the new, never half)."""
    def copy(f: BinaryIO) -> None:
        with open(src, "rb") as source:
            shutil.copyfileobj(source, f, 1 << 20)
    return atomic_write(dst, copy, what=what)


class FileLock:
    """An exclusive lock on the file ``path``, for as long as one process does one job.

    POSIX record locks (``lockf``): the kernel drops them when the process ends, even by
    SIGKILL, so a killed job never leaves a stale lock; and, unlike ``flock``, forked
    children (DataLoader workers, decoding processes) do not inherit them, so a dead
    parent's workers cannot keep a folder "in use". The file holds a line naming the
    holder, for the refusal message. ``remove=True`` deletes the lock file on release;
    a waiter that opened the file just before it was removed notices (its inode is no
    longer the path's) and tries again.

        lock = FileLock(out + ".lock")
        holder = lock.acquire()      # None: locked; else who holds it
    """

    def __init__(self, path: str | os.PathLike, *, remove: bool = False):
        self.path = Path(path)
        self.remove = remove
        self.fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock without waiting: None when taken, else the holder's line."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise UserError(f"{self.path}: cannot create the lock file ({_reason(exc)})") from None
            try:
                os.lockf(fd, os.F_TLOCK, 0)
            except OSError as exc:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    return holder
                raise UserError(f"{self.path}: cannot lock ({_reason(exc)})") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"process {os.getpid()} on {os.uname().nodename}".encode(), 0)
                self.fd = fd
                return None
            os.close(fd)   # the file was removed and re-created under us: lock the new one

    def release(self) -> None:
        if self.fd is None:
            return
        if self.remove:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(self.fd)     # closing drops the lock
        self.fd = None


def lock_holder(path: str | os.PathLike) -> str | None:
    """Who holds the :class:`FileLock` at ``path`` right now (None: nobody), without taking it.

    Only for a process that does not hold that lock itself: closing any descriptor of a file
    drops the calling process's record locks on it (POSIX).
    """
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        os.lockf(fd, os.F_TEST, 0)
        return None
    except OSError:
        return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)


def human_size(n: float) -> str:
    """A byte count for people, in binary units: ``812 bytes``, ``1.5 KiB``, ``3.2 GiB``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
