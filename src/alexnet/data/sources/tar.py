"""Archives: a ``.tar`` is read in place (every worker reads its own members by offset), a
compressed tar (``.tar.gz``, ``.tgz``, ``.tar.bz2``, ``.tar.xz``) is streamed, never held in
memory whole (once to list it, once more to read the images, in archive order), and a tar
of per-class tars (ILSVRC-2012's ``ILSVRC2012_img_train.tar``: one ``<wnid>.tar`` per class)
is read in place two levels deep: each inner tar is listed through a window on the outer
file, and each image is read at its offset in the outer file, with no extraction and no copy.
"""

from __future__ import annotations

import io
import lzma
import os
import tarfile

from PIL import Image

from ...console import progress
from ...errors import UserError
from .base import GRAY_MODES, MAX_MEMBER_BYTES, Source, is_stray, member_name
from .cifar import cifar_in_tar, is_cifar_file
from .tree import build_tree, is_side_file
from ..decode import IMAGE_EXTENSIONS

COMPRESSED_TAR = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
SIDE_FILE_BYTES = 64 << 20   # label lists and CIFAR batches kept from a compressed tar's listing pass
CHANNEL_PROBES = 32          # grayscale probes per doubling of a compressed tar's member count


def is_tar(path: str) -> bool:
    return path.lower().endswith(".tar") or path.lower().endswith(COMPRESSED_TAR)


def open_tar(path: str, labels, class_list) -> Source:
    if path.lower().endswith(COMPRESSED_TAR):
        return _open_compressed_tar(path, labels, class_list)
    try:
        tf = tarfile.open(path, "r:")
        members = tf.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"{path}: not a readable tar archive ({exc})") from None
    with tf:
        special = cifar_in_tar(path, members, lambda m: tf.extractfile(m).read())
        if special is not None:
            return special
        entries, folders = tar_entries(path, members)   # a tar of per-class tars went to .ilsvrc
        by_name = {member_name(m.name): m for m in members}

        def read(rel: str) -> bytes:
            return tf.extractfile(by_name[rel]).read()

        return build_tree("tar", path, entries, labels, class_list, read=read, folders=folders)


def tar_entries(path: str, members: list, base: int = 0, within: str = "", compressed: bool = False) -> tuple[list, list]:
    """(entries, folders) of a tar's listing, refusing members that escape the archive. A member's
    bytes are at ``base + offset`` of the file ``path`` (``base``: where a tar inside a tar starts);
    ``within`` prefixes the names of such an inner tar's members."""
    by_name = {m.name: m for m in members}
    entries, folders = [], []
    for m in members:
        target = m
        if m.name.startswith("/") or ".." in m.name.split("/"):
            # Never benign (a "tar-slip" attempt): refuse the whole archive, even with --skip-bad.
            raise UserError(f"{path}:{within}{m.name}: member path escapes the archive (absolute or '..'); "
                            f"refusing the archive")
        name = within + member_name(m.name)
        if m.isdir():
            if name.strip("/") not in ("", "."):
                folders.append(name.rstrip("/"))
            continue
        if m.islnk():
            target = by_name.get(m.linkname)
            if target is None or not target.isfile():
                entries.append((name, ("broken", f"hard link to missing member {m.linkname}")))
                continue
        elif m.issym():
            entries.append((name, ("broken", "symbolic link inside an archive")))
            continue
        elif not m.isfile():
            continue
        if target.size > MAX_MEMBER_BYTES:
            ref = ("broken", f"member of {target.size:,} bytes, larger than any image ({MAX_MEMBER_BYTES:,})")
        elif compressed:
            ref = ("stream", m.name)
        else:
            ref = ("tar", os.path.abspath(path), base + target.offset_data, target.size)
        entries.append((name, ref))
    return entries, folders


# --------------------------------------------------------------------------------------
# a tar of per-class tars

def is_tar_of_tars(members: list) -> bool:
    """Every file of the archive (stray files aside) is itself a ``.tar``: one per class."""
    files = [m for m in members if (m.isfile() or m.islnk()) and not is_stray(member_name(m.name))]
    return bool(files) and all(m.isfile() and m.name.lower().endswith(".tar") for m in files)


class _Window(io.RawIOBase):
    """``size`` bytes of a file from ``offset`` on, as a file of their own (a tar inside a tar)."""

    def __init__(self, f, offset: int, size: int):
        self.f, self.offset, self.size, self.pos = f, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + pos
        return self.pos

    def readinto(self, buf) -> int:
        n = max(0, min(len(buf), self.size - self.pos))
        self.f.seek(self.offset + self.pos)
        got = self.f.readinto(memoryview(buf)[:n])
        self.pos += got
        return got


def class_tar_entries(path: str, members: list, quiet: bool = True) -> tuple[list, list]:
    """(entries, folders) of a tar of per-class tars: each ``<class>.tar`` becomes the class folder
    ``<class>/``, its images read at their offsets in the outer file."""
    entries, folders = [], []
    class_tars = sorted((m for m in members if m.isfile() and not is_stray(member_name(m.name))),
                        key=lambda m: m.name)
    ignored = [(member_name(m.name), ("file", "")) for m in members if m.isfile() and is_stray(member_name(m.name))]
    with open(path, "rb") as f, progress(len(class_tars), f"list {os.path.basename(path)}", "tar",
                                         disable=quiet) as bar:
        for m in class_tars:
            name = member_name(m.name)
            folder = os.path.splitext(name)[0]
            folders.append(folder)
            try:
                with tarfile.open(fileobj=io.BufferedReader(_Window(f, m.offset_data, m.size)), mode="r:") as inner:
                    inner_members = inner.getmembers()
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise UserError(f"{path}:{name}: not a readable tar archive ({exc})") from None
            found, _ = tar_entries(path, inner_members, base=m.offset_data, within=folder + "/")
            entries += found
            bar.update(1)
    return entries + ignored, folders


# --------------------------------------------------------------------------------------
# compressed tars, streamed

def _open_compressed_tar(path: str, labels, class_list) -> Source:
    """List a compressed tar in one streamed pass (bounded memory: an archive that decompresses
    to terabytes is read, not held), keeping only the small side files (label lists, CIFAR
    batches) and probing a spread of images for colour."""
    side: dict[str, bytes] = {}
    probes = {"seen": 0, "stride": 1, "taken": 0, "gray": True}
    members = []
    try:
        with tarfile.open(path, "r|*") as tf:
            for m in tf:
                members.append(m)
                if not m.isfile() or m.size > MAX_MEMBER_BYTES:
                    continue
                name = member_name(m.name)
                base = os.path.basename(name)
                if (m.size <= SIDE_FILE_BYTES and is_side_file(name)) or is_cifar_file(name):
                    side[name] = tf.extractfile(m).read()
                elif os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not is_stray(name) and base:
                    if probes["gray"] and probes["seen"] % probes["stride"] == 0:
                        probes["gray"] = _is_gray(tf.extractfile(m).read(), probes["gray"])
                        probes["taken"] += 1
                        if probes["taken"] >= CHANNEL_PROBES:   # spread the probes ever wider
                            probes["stride"] *= 2
                            probes["taken"] = 0
                    probes["seen"] += 1
    except (tarfile.TarError, OSError, EOFError, lzma.LZMAError) as exc:
        raise UserError(f"{path}: not a readable tar archive ({exc})") from None
    special = cifar_in_tar(path, members, lambda m: side.get(member_name(m.name)))
    if special is not None:
        return special
    entries, folders = tar_entries(path, members, compressed=True)
    source = build_tree("tar-stream", path, entries, labels, class_list, read=side.__getitem__, folders=folders)
    source.all_gray = probes["gray"] if probes["seen"] else None
    source.link_targets = frozenset(m.linkname for m in members if m.islnk())
    return source


def _is_gray(data: bytes, default: bool) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.mode in GRAY_MODES
    except Exception:   # noqa: BLE001 - a bad file: the decoder reports it properly later
        return default
