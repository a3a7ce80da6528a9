"""alexnet.files: the one atomic write, the one lock, sizes for people.

The durability rule is checked where it can fail: a writer that dies half-way leaves the
old file and no temporary file; a disk that refuses the write (RLIMIT_FSIZE in a child
process, which makes the kernel answer EFBIG exactly as a full disk answers ENOSPC) is one
line naming the file; a second process is kept out by the lock until the first lets go.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from alexnet.errors import UserError
from alexnet.files import FileLock, atomic_copy, atomic_write, human_size, lock_holder


def test_atomic_write_replaces_the_whole_file(tmp_path):
    path = tmp_path / "sub" / "a.json"            # the folder is made when missing
    atomic_write(path, "old\n")
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_a_writer_that_fails_half_way_leaves_the_old_file(tmp_path):
    path = tmp_path / "a.bin"
    atomic_write(path, b"old")

    def half(f):
        f.write(b"half of the new ")
        raise RuntimeError("the writer died")

    with pytest.raises(RuntimeError):
        atomic_write(path, half)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_a_killed_writers_leftover_is_removed_by_the_next_write(tmp_path):
    (tmp_path / "a.bin.tmp-99999").write_bytes(b"torn")
    atomic_write(tmp_path / "a.bin", b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_a_disk_that_refuses_the_write_is_one_line_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    code = ("import sys; from alexnet.files import atomic_write; from alexnet.errors import UserError\n"
            "try:\n    atomic_write(sys.argv[1], b'x' * 100000, what='checkpoint')\n"
            "except UserError as e:\n    print(e)\n")

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, preexec_fn=limit)
    line = proc.stdout.strip()
    assert line.startswith(f"{path}: cannot write checkpoint (") and "\n" not in line, proc
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_atomic_copy(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 << 20))
    atomic_copy(src, tmp_path / "dst.bin")
    assert (tmp_path / "dst.bin").read_bytes() == src.read_bytes()


def test_the_lock_keeps_a_second_process_out_until_released(tmp_path):
    path = tmp_path / "job.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from alexnet.files import FileLock; l = FileLock(sys.argv[1], remove=True); "
         "assert l.acquire() is None; print('held', flush=True); sys.stdin.read(); l.release()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock_holder(path) == f"process {holder.pid} on {os.uname().nodename}"
        assert FileLock(path).acquire() == f"process {holder.pid} on {os.uname().nodename}"
    finally:
        holder.communicate("")
    assert not path.exists()                       # remove=True: released and gone
    mine = FileLock(path)
    assert mine.acquire() is None and path.exists()
    mine.release()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    path = tmp_path / "job.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from alexnet.files import FileLock; "
         "assert FileLock(sys.argv[1]).acquire() is None; print('held', flush=True); time.sleep(600)", str(path)],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    assert lock_holder(path) is None
    lock = FileLock(path)
    assert lock.acquire() is None
    lock.release()


@pytest.mark.parametrize("n,text", [(0, "0 bytes"), (1023, "1,023 bytes"), (1024, "1.0 KiB"),
                                    (1536, "1.5 KiB"), (5 * 2**30, "5.0 GiB"), (3 * 2**40, "3.0 TiB")])
def test_human_size(n, text):
    assert human_size(n) == text
