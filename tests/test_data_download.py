"""``alexnet prepare NAME --download`` against a loopback HTTP server (127.0.0.1) that serves
archives these tests build in the official layouts, with the digests of those built files
given through ``ALEXNET_DOWNLOAD_MANIFEST``.

The server (http.server in a thread, port 0) answers at most a fixed number of requests and
stops by itself after a deadline; it can honour HTTP Range requests, ignore them (200 with
the whole file), cut a response short (Content-Length promised, half the body sent, connection
closed) or serve wrong bytes of the right length. Its log is the reference for what the
client asked: the Range header of every request.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from alexnet import UserError, open_cache
from alexnet.cli import main as cli_main
from alexnet.data import download
from alexnet.train.config import load_config   # the training side's own cache naming rule, as the reference

from data_helpers import cifar_subset, decode_rgb, read_idx_reference, write_cifar_python, write_idx

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
FASHION_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


# ----------------------------------------------------------------------------- the server

class ArchiveServer:
    """Serves ``files`` (name -> bytes) on 127.0.0.1; ``behaviour[name]`` is a list of per-request
    behaviours consumed in order ("range": honour Range, "ignore-range": always 200 whole,
    "truncate": promise the whole file but send half, "corrupt": one byte flipped)."""

    def __init__(self, files: dict[str, bytes], max_requests: int = 20, seconds: float = 30.0):
        self.files = files
        self.behaviour: dict[str, list[str]] = {}
        self.log: list[dict] = []
        self._stop = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                server._answer(self)

            def log_message(self, *args):  # quiet
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.timeout = 0.1
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._max, self._deadline = max_requests, time.monotonic() + seconds
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self._stop.is_set() and len(self.log) < self._max and time.monotonic() < self._deadline:
            self.httpd.handle_request()
        self.httpd.server_close()

    def stop(self):
        self._stop.set()
        self.thread.join(timeout=5)

    def _answer(self, h):
        name = h.path.lstrip("/")
        entry = {"name": name, "range": h.headers.get("Range"), "status": None, "sent": 0}
        self.log.append(entry)
        if name not in self.files:
            entry["status"] = 404
            h.send_error(404)
            return
        data = self.files[name]
        queue = self.behaviour.get(name) or ["range"]
        mode = queue.pop(0) if len(queue) > 1 else queue[0]
        if mode == "corrupt":
            data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", entry["range"] or "")
        if match and mode in ("range", "truncate", "corrupt"):
            start = int(match.group(1))
            if start >= len(data):
                entry["status"] = 416
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.end_headers()
                return
        body = data[start:]
        entry["status"] = 206 if start else 200
        h.send_response(entry["status"])
        h.send_header("Content-Length", str(len(body)))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if mode == "truncate":
            body = body[: len(body) // 2]
        h.wfile.write(body)
        h.wfile.flush()
        entry["sent"] = len(body)


@pytest.fixture
def serve():
    servers = []

    def start(files, **kw):
        servers.append(ArchiveServer(files, **kw))
        return servers[-1]
    yield start
    for s in servers:
        s.stop()


def manifest_for(tmp_path: Path, files: dict[str, bytes]) -> Path:
    """The checks of the built files, written out independently with hashlib."""
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                                       "md5": hashlib.md5(data).hexdigest()} for name, data in files.items()}))
    return path


def env_for(tmp_path: Path, server: ArchiveServer | str, files: dict[str, bytes]) -> dict:
    # ALEXNET_ALLOCATOR=system: no re-exec to load jemalloc, which has nothing to do with downloading
    return {"ALEXNET_CACHE": str(tmp_path / "cache"), "ALEXNET_ALLOCATOR": "system",
            "ALEXNET_DOWNLOAD_MIRROR": server if isinstance(server, str) else server.url,
            "ALEXNET_DOWNLOAD_MANIFEST": str(manifest_for(tmp_path, files)),
            "ALEXNET_DOWNLOAD_TIMEOUT": "5"}


@pytest.fixture
def env(monkeypatch):
    """Sets the variables for in-process calls (the API reads the same environment as the CLI)."""
    def apply(values: dict):
        for k, v in values.items():
            monkeypatch.setenv(k, v)
    return apply


def main_in_process(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI's own entry point in this process (what `alexnet ARGS` runs, without the start-up)."""
    rc = cli_main(list(args))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("alexnet: error:")]


# ----------------------------------------------------------------------------- archives in the official layouts

def cifar_tarball(tmp_path: Path, batches: dict) -> bytes:
    """``cifar-10-python.tar.gz``: ``cifar-10-batches-py/`` with the real file names and pickled dicts."""
    folder = tmp_path / "build" / "cifar-10-batches-py"
    write_cifar_python(folder, batches, CIFAR_CLASSES)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(folder, arcname="cifar-10-batches-py")
    return buf.getvalue()


def hand_built_cifar(tmp_path: Path, per_batch: int = 4) -> tuple[bytes, dict]:
    """A CIFAR tarball of hand-built pixels (no real data needed): each image a distinct pattern."""
    rng = np.random.default_rng(0)
    batches = {name: (rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8),
                      np.arange(per_batch) % 10) for name in CIFAR_BATCHES}
    return cifar_tarball(tmp_path, batches), batches


# ----------------------------------------------------------------------------- end to end, real CLI

def test_cifar10_download_then_prepare_through_the_cli(tmp_path, serve, cli, env, capsys, shared_data):
    """Real CIFAR-10 pixels in the official python tarball, downloaded, verified, prepared; the
    cache holds exactly those pixels at the cifar10 preset's size, where `train cifar10` reads."""
    members = cifar_subset(shared_data, per_class=1)
    split = {"train": [], "test": []}
    for name, data in members:
        s, cls, _ = name.split("/")
        split[s].append((decode_rgb(data), CIFAR_CLASSES.index(cls)))
    train = split["train"] * 5   # 50 images: 10 per batch, in the five train batches
    batches = {f"data_batch_{i + 1}": (np.stack([im for im, _ in train[10 * i: 10 * i + 10]]),
                                       np.array([lb for _, lb in train[10 * i: 10 * i + 10]])) for i in range(5)}
    batches["test_batch"] = (np.stack([im for im, _ in split["test"]]), np.array([lb for _, lb in split["test"]]))
    files = {"cifar-10-python.tar.gz": cifar_tarball(tmp_path, batches)}
    server = serve(files)
    e = env_for(tmp_path, server, files)
    proc = cli("prepare", "cifar10", "--download", "--workers", "1", env=e, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--size 32: the cifar10 preset's" in proc.stderr
    assert server.log[0]["range"] is None and server.log[0]["status"] == 200

    archive = tmp_path / "cache" / "downloads" / "cifar10" / "cifar-10-python.tar.gz"
    assert archive.read_bytes() == files["cifar-10-python.tar.gz"]
    assert not archive.with_name(archive.name + ".part").exists()
    cache = open_cache(tmp_path / "cache" / "cifar10-32")
    assert cache.classes == CIFAR_CLASSES
    expected = np.concatenate([batches[n][0] for n in CIFAR_BATCHES[:5]])
    assert np.array_equal(np.asarray(cache.split("train").images), expected)
    assert np.array_equal(cache.split("train").labels, np.concatenate([batches[n][1] for n in CIFAR_BATCHES[:5]]))
    assert np.array_equal(np.asarray(cache.split("test").images), batches["test_batch"][0])

    # a second run finds the cache train would read and downloads nothing
    env(e)
    rc, out, err = main_in_process(capsys, "prepare", "cifar10", "--download")
    assert rc == 0 and "already prepared" in out and "nothing downloaded" in out, err
    assert len(server.log) == 1


def test_fashion_mnist_download_idx_files(tmp_path, serve, env, capsys, fashion_mnist_dir):
    """The four IDX .gz files (real Fashion-MNIST images, the first 60 / 20), fetched into a
    folder prepare reads as Fashion-MNIST: the garment class names and the exact pixels."""
    arrays = {}
    for name, n in (("train", 60), ("t10k", 20)):
        arrays[f"{name}-images-idx3-ubyte.gz"] = read_idx_reference(fashion_mnist_dir / f"{name}-images-idx3-ubyte.gz")[:n]
        arrays[f"{name}-labels-idx1-ubyte.gz"] = read_idx_reference(fashion_mnist_dir / f"{name}-labels-idx1-ubyte.gz")[:n]
    files = {}
    for name, array in arrays.items():
        write_idx(tmp_path / name, array)
        files[name] = (tmp_path / name).read_bytes()
    server = serve(files)
    out = tmp_path / "fm"
    env(env_for(tmp_path, server, files))
    rc, _, err = main_in_process(capsys, "prepare", "fashion-mnist", str(out), "--download", "--workers", "1")
    assert rc == 0, err
    assert sorted(e["name"] for e in server.log) == sorted(FASHION_FILES)
    cache = open_cache(out)
    assert cache.classes[0] == "T-shirt/top" and cache.classes[9] == "Ankle boot"
    assert np.array_equal(np.asarray(cache.split("train").images)[..., 0], arrays["train-images-idx3-ubyte.gz"])
    assert np.array_equal(cache.split("test").labels, arrays["t10k-labels-idx1-ubyte.gz"].astype(np.int64))


def test_imagenette_download_tgz_folder_tree(tmp_path, serve, env, capsys, shared_data):
    """An imagenette2-160.tgz as fast.ai lays it out (imagenette2-160/{train,val}/<wnid>/*.JPEG
    and noisy_imagenette.csv beside them), built from real Imagewoof JPEGs."""
    picked: dict[str, list] = {}
    with tarfile.open(shared_data / "imagewoof2-160.tar") as tf:
        for m in tf:
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 3 and len(picked.setdefault(f"{parts[0]}/{parts[1]}", [])) < 2:
                picked[f"{parts[0]}/{parts[1]}"].append((parts[2], tf.extractfile(m).read()))
            if len(picked) >= 4 and all(len(v) == 2 for v in picked.values()) and \
                    {k.split("/")[0] for k in picked} == {"train", "val"}:
                break
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        entries = [("imagenette2-160/noisy_imagenette.csv", b"path,noisy_labels_0\n")]
        entries += [(f"imagenette2-160/{k}/{fn}", data) for k, v in picked.items() for fn, data in v]
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    files = {"imagenette2-160.tgz": buf.getvalue()}
    server = serve(files)
    env(env_for(tmp_path, server, files))
    rc, _, err = main_in_process(capsys, "prepare", "imagenette", "--download", "--size", "32", "--workers", "1")
    assert rc == 0, err
    cache = open_cache(tmp_path / "cache" / "imagenette2-160-32")
    wnids = sorted({k.split("/")[1] for k in picked})
    assert cache.classes == wnids
    counts = {s: sum(len(v) for k, v in picked.items() if k.startswith(s + "/")) for s in ("train", "val")}
    assert {s: len(cache.split(s)) for s in ("train", "val")} == counts
    assert cache.meta["ignored"] == 1   # the csv beside the split folders, counted, not an image


# ----------------------------------------------------------------------------- transfers that go wrong

def test_truncated_download_resumes_with_range_on_the_next_run(tmp_path, serve, cli, env):
    files = {"cifar-10-python.tar.gz": hand_built_cifar(tmp_path)[0]}
    data = files["cifar-10-python.tar.gz"]
    server = serve(files)
    server.behaviour["cifar-10-python.tar.gz"] = ["truncate", "range"]
    e = env_for(tmp_path, server, files)
    env(e)
    folder = tmp_path / "cache" / "downloads" / "cifar10"
    with pytest.raises(UserError, match=r"broke off after [\d,]+ of [\d,]+ bytes .*\.part is kept and running this again resumes it"):
        download.fetch("cifar10", quiet=True)
    part = folder / "cifar-10-python.tar.gz.part"
    half = len(data) // 2
    assert part.read_bytes() == data[:half]
    assert not (folder / "cifar-10-python.tar.gz").exists()

    proc = cli("prepare", "cifar10", "--download", "--workers", "1", env=e, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "resuming at" in proc.stderr
    assert server.log[1]["range"] == f"bytes={half}-" and server.log[1]["status"] == 206
    assert server.log[1]["sent"] == len(data) - half       # only the rest travelled
    assert (folder / "cifar-10-python.tar.gz").read_bytes() == data and not part.exists()
    assert len(open_cache(tmp_path / "cache" / "cifar10-32").split("train").labels) == 20


def test_server_ignoring_range_restarts_cleanly(tmp_path, serve, env):
    files = {"cifar-10-python.tar.gz": hand_built_cifar(tmp_path)[0]}
    data = files["cifar-10-python.tar.gz"]
    server = serve(files)
    server.behaviour["cifar-10-python.tar.gz"] = ["truncate", "ignore-range"]
    env(env_for(tmp_path, server, files))
    with pytest.raises(UserError, match="broke off"):
        download.fetch("cifar10", quiet=True)
    path = download.fetch("cifar10", quiet=True)
    assert server.log[1]["range"] is not None and server.log[1]["status"] == 200
    assert path.read_bytes() == data               # not the first half twice, nor appended
    assert not path.with_name(path.name + ".part").exists()


def test_corrupted_download_is_refused_in_one_line_and_nothing_kept(tmp_path, serve, cli):
    files = {"cifar-10-python.tar.gz": hand_built_cifar(tmp_path)[0]}
    data = files["cifar-10-python.tar.gz"]
    server = serve(files)
    server.behaviour["cifar-10-python.tar.gz"] = ["corrupt"]
    proc = cli("prepare", "cifar10", "--download", env=env_for(tmp_path, server, files), timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    (line,) = error_lines(proc.stderr)
    bad = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
    assert "cifar-10-python.tar.gz: SHA-256 mismatch" in line
    assert f"expected {hashlib.sha256(data).hexdigest()}, got {hashlib.sha256(bad).hexdigest()}" in line
    folder = tmp_path / "cache" / "downloads" / "cifar10"
    assert sorted(os.listdir(folder)) == []        # neither the final name nor a .part
    assert not (tmp_path / "cache" / "cifar10-32").exists()


def test_offline_is_one_line_naming_the_url_and_the_reason(tmp_path, cli):
    with socket.socket() as s:    # a port nothing listens on: bind, note it, close
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    files = {"cifar-10-python.tar.gz": b"x" * 10}
    proc = cli("prepare", "cifar10", "--download", env=env_for(tmp_path, f"http://127.0.0.1:{port}", files), timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert os.listdir(tmp_path / "cache" / "downloads" / "cifar10") == []
    assert proc.stderr.splitlines() == [
        "alexnet: --size 32: the cifar10 preset's (give --size to choose another)",
        f"alexnet: error: cannot download http://127.0.0.1:{port}/cifar-10-python.tar.gz: Connection refused "
        f"(offline? check the connection, or set ALEXNET_DOWNLOAD_MIRROR to a reachable copy)"]


def test_http_error_and_wrong_size_are_refused_before_writing(tmp_path, serve, env):
    files = {"cifar-10-python.tar.gz": hand_built_cifar(tmp_path)[0]}
    server = serve({})   # serves nothing: 404
    env(env_for(tmp_path, server, files))
    with pytest.raises(UserError, match=r"cannot download http://127\.0\.0\.1:\d+/cifar-10-python\.tar\.gz: HTTP 404"):
        download.fetch("cifar10", quiet=True)
    # the server offers another size than the published one: refused before a byte is kept
    other = serve({"cifar-10-python.tar.gz": files["cifar-10-python.tar.gz"] + b"extra"})
    env({"ALEXNET_DOWNLOAD_MIRROR": other.url})
    with pytest.raises(UserError, match=r"the server offers [\d,]+ bytes, the published size is [\d,]+"):
        download.fetch("cifar10", quiet=True)
    assert os.listdir(tmp_path / "cache" / "downloads" / "cifar10") == []   # not even an empty .part


def test_existing_verified_file_is_reused_and_a_damaged_one_fetched_again(tmp_path, serve, env):
    files = {"cifar-10-python.tar.gz": hand_built_cifar(tmp_path)[0]}
    server = serve(files)
    env(env_for(tmp_path, server, files))
    path = download.fetch("cifar10", quiet=True)
    download.fetch("cifar10", quiet=True)
    assert len(server.log) == 1                     # verified on disk, not fetched again
    damaged = bytearray(path.read_bytes())
    damaged[-1] ^= 1
    path.write_bytes(bytes(damaged))
    download.fetch("cifar10", quiet=True)
    assert len(server.log) == 2 and path.read_bytes() == files["cifar-10-python.tar.gz"]


# ----------------------------------------------------------------------------- checks and tables

def test_fastai_check_is_md5_of_the_first_mib(tmp_path):
    """fast.ai's published check (size, MD5 of the first 2**20 bytes), written out with hashlib."""
    data = np.random.default_rng(1).integers(0, 256, (1 << 20) + 12345, dtype=np.uint8).tobytes()
    path = tmp_path / "a.tgz"
    path.write_bytes(data)
    got = download.file_digests(path, ["md5-first-mib", "sha256", "md5"])
    assert got == {"md5-first-mib": hashlib.md5(data[: 1 << 20]).hexdigest(),
                   "sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest()}
    remote = download.RemoteFile("a.tgz", "http://x/a.tgz", len(data), {"md5-first-mib": got["md5-first-mib"]})
    assert download.verify(path, remote) is None
    changed = data[:-1] + bytes([data[-1] ^ 1])      # past the first MiB: the weak check cannot see it
    path.write_bytes(changed)
    assert download.verify(path, remote) is None
    path.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    assert "MD5 of the first MiB mismatch" in download.verify(path, remote)


def test_table_names_every_official_file_with_size_and_digest():
    for dataset in download.DATASETS.values():
        for f in dataset.files:
            assert f.url.startswith("https://") and f.url.endswith("/" + f.name)
            assert f.size and f.size > 0
            assert f.digests and set(f.digests) <= set(download.DIGESTS)
            for algo, hexdigest in f.digests.items():
                assert re.fullmatch(r"[0-9a-f]{64}" if algo == "sha256" else r"[0-9a-f]{32}", hexdigest), (f.name, algo)
    assert [f.name for f in download.resolve("fashion-mnist").files] == FASHION_FILES
    assert download.resolve("imagewoof").name == "imagewoof2-160"
    assert download.preset_size(download.resolve("imagewoof")) == 128
    with pytest.raises(UserError, match=r"no official source known for 'mnist' \(choose one of cifar10, "):
        download.resolve("mnist")


def test_bad_manifest_and_a_missing_dataset_without_download_are_one_line(tmp_path, cli):
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"cifar-10-python.tar.gz": {"size": 3}}))
    with pytest.raises(UserError) as err:
        download.load_manifest(str(bad))
    assert str(err.value) == (f"ALEXNET_DOWNLOAD_MANIFEST={bad}: 'cifar-10-python.tar.gz': "
                              f"give at least one digest (sha256, md5, md5-first-mib)")
    bad.write_text("{")
    with pytest.raises(UserError, match=r"m\.json: not valid JSON"):
        download.load_manifest(str(bad))
    proc = cli("prepare", "cifar10", str(tmp_path / "out"), env={"ALEXNET_CACHE": str(tmp_path / "c"),
                                                                "ALEXNET_ALLOCATOR": "system"}, timeout=120)
    assert proc.returncode == 2
    assert error_lines(proc.stderr) == ["alexnet: error: cifar10: no such file or directory; add --download to "
                                        "fetch CIFAR-10 (python version) from its official source"]


def test_a_second_download_of_the_same_file_waits_its_turn(tmp_path):
    """While one process downloads a file, a second stops in one line and leaves its .part alone."""
    remote = download.RemoteFile("a.bin", "http://127.0.0.1:9/a.bin", 10, {"md5": "0" * 32})
    (tmp_path / "a.bin.part").write_bytes(b"12345")
    holder = subprocess.Popen(   # another process, as POSIX locks are per process
        [sys.executable, "-c", "import sys; from alexnet.files import FileLock; "
         "assert FileLock(sys.argv[1], remove=True).acquire() is None; print('held', flush=True); sys.stdin.read()",
         str(tmp_path / "a.bin.lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"a\.bin\.part: another alexnet process \(process {holder.pid} on .*\) is downloading"):
            download.fetch_file(remote, tmp_path, quiet=True)
        assert (tmp_path / "a.bin.part").read_bytes() == b"12345"
    finally:
        holder.communicate("")
    with pytest.raises(UserError, match="cannot download"):    # its turn: the lock is free again
        download.fetch_file(remote, tmp_path, quiet=True)
    assert not (tmp_path / "a.bin.lock").exists()


@pytest.mark.parametrize("name,preset", [("cifar10", "cifar10"), ("fashion-mnist", "fashion-mnist"), ("imagewoof", "imagewoof")])
def test_default_cache_is_the_one_train_reads(name, preset, tmp_path, monkeypatch):
    """`prepare NAME --download` without OUT builds the cache that `alexnet train PRESET
    --data.source NAME` opens (the one rule of alexnet.data.resolve)."""
    from alexnet.data.resolve import default_cache_dir
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path))
    dataset = download.resolve(name)
    config = load_config(preset, ["--data.source", name])
    assert download.preset_size(dataset) == config.data.size
    assert default_cache_dir(dataset.name, download.preset_size(dataset)) == config.cache_dir()
    assert config.cache_dir() == tmp_path / f"{dataset.name}-{config.data.size}"


def test_an_official_name_as_a_source_says_how_to_download_it(tmp_path, monkeypatch):
    """`--data.source cifar10` before any download: one line naming the command that fetches it."""
    from alexnet.data.resolve import ensure_prepared
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path))
    with pytest.raises(UserError, match=r"cifar10: CIFAR-10 \(python version\) is not downloaded yet; "
                                         r"run 'alexnet prepare cifar10 --download'"):
        ensure_prepared("cifar10", 32, quiet=True)
    with pytest.raises(UserError, match=r"or use the official archive: 'alexnet prepare cifar10 --download'"):
        ensure_prepared(str(tmp_path / "cifar10-jpg.tar.gz"), 32, quiet=True, what="data.source")
