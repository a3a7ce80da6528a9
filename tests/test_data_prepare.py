"""``prepare``: bad files (one line, or a report row with --skip-bad, never a lost valid image),
stray files, colour handling, statistics against numpy, interruption and resume, the compact
JPEG variant, and the real ``alexnet prepare`` command."""

from __future__ import annotations

import csv
import hashlib
import importlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from alexnet import UserError, open_cache, prepare
from alexnet.cli import main
from alexnet.data.decode import decode_square

from data_helpers import assert_close_to_pil, dct_factor, numpy_stats, reference_square, tar_members, write_tar

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def woof(shared_data):
    """A few real Imagewoof JPEGs per class, colour and grayscale, as (name, bytes)."""
    members = tar_members(shared_data / "imagewoof2-160.tar", lambda n: n.startswith("train/") and n.endswith(".JPEG"),
                          limit=400)
    color = [(n, d) for n, d in members if simplejpeg.decode_jpeg_header(d)[2] != "Gray"]
    gray = [(n, d) for n, d in members if simplejpeg.decode_jpeg_header(d)[2] == "Gray"]
    assert len(gray) >= 1, "Imagewoof has grayscale images; none in the first members?"
    return color, gray


def _png(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kw)
    return buf.getvalue()


def _jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def _tree(root, files: dict) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, tuple) and data[0] == "symlink":
            os.symlink(data[1], path)
        else:
            path.write_bytes(data)


def _bad_files(color, tmp_path) -> dict:
    """Every bad-file case from the issue, each made from a real image where it can be."""
    real = color[0][1]
    bomb = Image.new("1", (12000, 8000))  # 96 M pixels > PIL's 89.5 M limit, a few KB as PNG
    return {
        "truncated": ("a/truncated.JPEG", real[: len(real) // 2], "corrupt or truncated JPEG"),
        "corrupt": ("a/corrupt.JPEG", real[:600] + bytes(2000) + real[2600:], "corrupt JPEG header"),
        "empty": ("b/empty.JPEG", b"", "empty file (0 bytes)"),
        "not-an-image": ("b/page.jpg", b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n",
                         "not an image (looks like HTML/XML text"),
        "bomb": ("a/bomb.png", _png(bomb), "image too large to be safe"),
        "unreadable": ("b/missing.JPEG", ("symlink", str(tmp_path / "does-not-exist.JPEG")),
                       "unreadable file (No such file or directory)"),
    }


def _good_files(color) -> dict:
    return {f"{'a' if i % 2 else 'b'}/{os.path.basename(n)}": d for i, (n, d) in enumerate(color[:6])}


@pytest.mark.parametrize("case", ["truncated", "corrupt", "empty", "not-an-image", "bomb", "unreadable"])
def test_each_bad_file_stops_with_one_line_naming_it(tmp_path, woof, case):
    color, _ = woof
    rel, data, reason = _bad_files(color, tmp_path)[case]
    _tree(tmp_path / "src", {**_good_files(color), rel: data})
    with pytest.raises(UserError) as err:
        prepare(tmp_path / "src", tmp_path / "out", size=32, workers=1, quiet=True)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(str(tmp_path / "src" / rel) + ": ")
    assert reason in message and "--skip-bad" in message
    assert not (tmp_path / "out").exists()  # no cache appears; the partial one is not a cache
    with pytest.raises(UserError, match="no such cache"):
        open_cache(tmp_path / "out")


def test_skip_bad_reports_every_bad_file_and_keeps_every_valid_image(tmp_path, woof):
    color, gray = woof
    bad = _bad_files(color, tmp_path)
    good = _good_files(color)
    good["a/" + os.path.basename(gray[0][0])] = gray[0][1]
    png = Image.open(io.BytesIO(color[7][1])).convert("RGB")
    good["b/actually_png.JPEG"] = _png(png)  # a PNG named .JPEG: decodes, kept, reported as a warning
    stray = {"a/.DS_Store": b"\0\0\0\1Bud1", "Thumbs.db": b"\xd0\xcf", "b/.hidden.jpg": color[8][1],
             "__MACOSX/a/._x.JPEG": b"\0\5\26\7", "a/notes.txt": b"photographer: ..."}
    _tree(tmp_path / "src", {**good, **{rel: data for rel, data, _ in bad.values()}, **stray})
    summary = prepare(tmp_path / "src", tmp_path / "out", size=32, workers=2, quiet=True, skip_bad=True)
    cache = open_cache(tmp_path / "out")
    # every valid image is there, with the right pixels
    sp = cache.split("train")
    assert sorted(sp.files) == sorted(good)
    for i, name in enumerate(sp.files):
        data = good[name]
        assert_close_to_pil(sp.images[i], reference_square(data, 32, dct_factor(data, 32)), name)
        assert cache.classes[sp.labels[i]] == name.split("/")[0]
    # every bad file has its row, with its reason
    rows = list(csv.DictReader(open(tmp_path / "out" / "skipped.csv")))
    assert len(rows) == len(bad) == len(summary.skipped) == cache.meta["skipped"]
    reasons = {r["path"]: r["reason"] for r in rows}
    for rel, _, reason in bad.values():
        assert reason in reasons[str(tmp_path / "src" / rel)]
    warnings = list(csv.DictReader(open(tmp_path / "out" / "warnings.csv")))
    assert [w["path"] for w in warnings] == [str(tmp_path / "src" / "b/actually_png.JPEG")]
    assert "PNG data in a .JPEG file" in warnings[0]["warning"]
    ignored = {r["path"]: r["reason"] for r in csv.DictReader(open(tmp_path / "out" / "ignored.csv"))}
    assert set(ignored) == set(stray) and len(summary.ignored) == 5
    assert ignored["a/notes.txt"] == "not an image file (extension)"
    assert "skipped 6 bad file(s)" in summary.line() and "ignored 5 stray/non-image file(s)" in summary.line()


def test_colour_modes_orientation_and_bit_depths(tmp_path, woof):
    """Palette, RGBA (over white), 16-bit grayscale (scaled, not clipped), CMYK, EXIF rotation."""
    color, _ = woof
    base = Image.open(io.BytesIO(color[0][1])).convert("RGB")
    # palette PNG == its RGB conversion
    pal = base.convert("P", palette=Image.ADAPTIVE)
    a, _ = decode_square(_png(pal), 48, 3, "p.png")
    assert_close_to_pil(a, reference_square(_png(pal.convert("RGB")), 48))
    # RGBA: fully transparent pixels become white, opaque ones keep their colour
    rgba = base.convert("RGBA")
    alpha = np.full(base.size[::-1], 255, np.uint8)
    alpha[:, : base.size[0] // 2] = 0
    rgba.putalpha(Image.fromarray(alpha))
    a, _ = decode_square(_png(rgba), 48, 3, "t.png")
    expected = np.asarray(base).copy()
    expected[:, : base.size[0] // 2] = 255
    assert_close_to_pil(a, reference_square(_png(Image.fromarray(expected)), 48))
    # 16-bit grayscale: 0..65535 scaled to 0..255
    g16 = (np.asarray(base.convert("L")).astype(np.uint32) * 257 + 100).clip(0, 65535).astype(np.uint16)
    a, _ = decode_square(_png(Image.fromarray(g16)), 48, 1, "g.png")
    scaled = ((g16.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    ref = reference_square(_png(Image.fromarray(scaled)), 48)[..., 0]
    assert_close_to_pil(a[..., 0], ref)
    assert a.mean() > 60  # PIL's convert("L") would clip almost everything to 255
    # CMYK JPEG: converted like PIL does
    cmyk = _jpeg(base.convert("CMYK"))
    a, _ = decode_square(cmyk, 48, 3, "c.jpg")
    assert_close_to_pil(a, reference_square(cmyk, 48))
    # EXIF orientation 6 (rotate 90 clockwise): applied
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = _jpeg(base, exif=exif.tobytes())
    a, _ = decode_square(rotated, 48, 3, "r.jpg")
    assert_close_to_pil(a, reference_square(rotated, 48, dct_factor(rotated, 48)))
    w, h = base.size
    if w != h:  # the stored square comes from the rotated image: compare with a plain rotation
        plain = _jpeg(base)
        assert not np.array_equal(a, decode_square(plain, 48, 3, "p.jpg")[0])


def test_grayscale_folder_stays_one_channel_and_mixed_becomes_rgb(tmp_path, woof):
    color, gray = woof
    _tree(tmp_path / "g", {f"x/{i}.JPEG": d for i, (_, d) in enumerate(gray[:2])})
    prepare(tmp_path / "g", tmp_path / "gc", size=40, workers=1, quiet=True)
    gc = open_cache(tmp_path / "gc")
    assert gc.channels == 1 and gc.stats["eigvec"].shape == (1, 1)
    ref = np.asarray(Image.open(io.BytesIO(gray[0][1])))
    assert ref.ndim == 2
    _tree(tmp_path / "m", {"x/0.JPEG": gray[0][1], "y/1.JPEG": color[0][1]})
    prepare(tmp_path / "m", tmp_path / "mc", size=40, workers=1, quiet=True)
    mc = open_cache(tmp_path / "mc")
    assert mc.channels == 3
    np.testing.assert_array_equal(mc.split("train").images[0][..., 0], mc.split("train").images[0][..., 2])


def test_statistics_match_numpy_on_the_stored_pixels(tmp_path, shared_data):
    prepare(shared_data / "imagewoof2-160.tar", tmp_path / "c", size=64, limit=3, workers=2, quiet=True)
    cache = open_cache(tmp_path / "c")
    train = np.asarray(cache.split("train").images)
    ref = numpy_stats(train)
    st = cache.stats
    np.testing.assert_allclose(st["mean_image"], ref["mean_image"], rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(st["channel_mean"], ref["channel_mean"], rtol=1e-6)
    np.testing.assert_allclose(st["channel_std"], ref["channel_std"], rtol=1e-5)
    np.testing.assert_allclose(st["covariance"], ref["covariance"], rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(st["eigval"], ref["eigval"], rtol=1e-5)
    for i in range(3):  # eigenvectors up to sign
        assert abs(float(np.dot(st["eigvec"][:, i], ref["eigvec"][:, i]))) == pytest.approx(1.0, abs=1e-5)
    assert st["eigval"][0] > st["eigval"][1] > st["eigval"][2] > 0
    # from the train split only: the val images change nothing
    val = np.asarray(cache.split("val").images)
    assert not np.allclose(numpy_stats(np.concatenate([train, val]))["channel_mean"], st["channel_mean"], rtol=1e-4)


def test_jpeg_variant_is_compact_and_close_to_raw(tmp_path, shared_data):
    prepare(shared_data / "imagewoof2-160.tar", tmp_path / "raw", size=128, limit=2, workers=2, quiet=True)
    prepare(shared_data / "imagewoof2-160.tar", tmp_path / "jpg", size=128, limit=2, workers=2, quiet=True, storage="jpeg")
    raw, jpg = open_cache(tmp_path / "raw"), open_cache(tmp_path / "jpg")
    a, b = np.asarray(raw.split("val").images), jpg.split("val").images[np.arange(20)]
    assert a.shape == b.shape
    assert np.abs(a.astype(int) - b).mean() < 3.0
    assert os.path.getsize(tmp_path / "jpg" / "val.jpeg.bin") < os.path.getsize(tmp_path / "raw" / "val.images.u8") / 4
    np.testing.assert_allclose(jpg.stats["channel_mean"],
                               numpy_stats(jpg.split("train").images[np.arange(20)])["channel_mean"], rtol=1e-6)


def test_rerun_is_a_no_op_and_a_different_one_needs_overwrite(tmp_path, shared_data):
    src = shared_data / "imagewoof2-160.tar"
    prepare(src, tmp_path / "c", size=32, limit=1, workers=1, quiet=True)
    again = prepare(src, tmp_path / "c", size=32, limit=1, workers=1, quiet=True)
    assert again.up_to_date and "nothing to do" in again.line()
    with pytest.raises(UserError, match="already exists .*--overwrite"):
        prepare(src, tmp_path / "c", size=48, limit=1, workers=1, quiet=True)
    prepare(src, tmp_path / "c", size=48, limit=1, workers=1, quiet=True, overwrite=True)
    assert open_cache(tmp_path / "c").size == 48


def _cli(*args, env=None, **kw):
    full = dict(os.environ, **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "alexnet", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full, **kw)


@pytest.mark.slow
def test_interrupted_prepare_never_opens_and_resumes_to_the_same_cache(tmp_path, shared_data):
    """A real SIGINT mid-run: the partial cache is refused, a re-run resumes, and the result is
    byte-identical to an uninterrupted run; a re-run with other options starts over."""
    src = shared_data / "imagewoof2-160.tar"
    # 200 per class and split (~4,000 images): several seconds of work after the first
    # checkpoint (0.2 s), so the signal lands mid-run even on an idle machine (40 was too few).
    args = [src, tmp_path / "c", "--size", "96", "--limit", "200", "--workers", "1"]
    proc = _cli("prepare", *args, env={"ALEXNET_PREPARE_CHECKPOINT_SECONDS": "0.2"})
    progress = tmp_path / "c.partial" / "progress.npz"
    deadline = time.monotonic() + 120
    while not progress.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "prepare finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "alexnet: interrupted" in err and "Traceback" not in err
    with pytest.raises(UserError, match="interrupted prepare left .*c.partial"):
        open_cache(tmp_path / "c")
    with pytest.raises(UserError, match="not a prepared cache|incomplete"):
        open_cache(tmp_path / "c.partial")
    proc = _cli("prepare", *args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "resumed after" in out
    resumed = open_cache(tmp_path / "c")
    fresh = prepare(src, tmp_path / "fresh", size=96, limit=200, workers=2, quiet=True)
    assert fresh.resumed_from == 0
    for split in ("train", "val"):
        assert (tmp_path / "c" / f"{split}.images.u8").read_bytes() == (tmp_path / "fresh" / f"{split}.images.u8").read_bytes()
    np.testing.assert_array_equal(resumed.stats["mean_image"], open_cache(tmp_path / "fresh").stats["mean_image"])
    np.testing.assert_array_equal(resumed.stats["eigvec"], open_cache(tmp_path / "fresh").stats["eigvec"])


@pytest.mark.slow
def test_cli_prepare_real_subprocess(tmp_path, woof, cli):
    color, _ = woof
    bad = _bad_files(color, tmp_path)
    rel, data, reason = bad["truncated"]
    _tree(tmp_path / "src", {**_good_files(color), rel: data})
    proc = cli("prepare", tmp_path / "src", tmp_path / "out", "--size", "32", "--workers", "2")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"alexnet: error: {tmp_path / 'src' / rel}: corrupt or truncated JPEG (Premature end of JPEG file) "
                     f"(use --skip-bad to skip bad files and list them in skipped.csv)"]
    proc = cli("prepare", tmp_path / "src", tmp_path / "out", "--size", "32", "--skip-bad")
    assert proc.returncode == 0, proc.stderr
    assert "train 6 images" in proc.stdout and "skipped 1 bad file(s) (listed in skipped.csv)" in proc.stdout
    assert f"skipped {tmp_path / 'src' / rel}: corrupt or truncated JPEG" in proc.stderr
    for args, expected in [(("prepare", tmp_path / "src", tmp_path / "o2", "--size", "big"), "--size: got 'big'"),
                           (("cache-info", tmp_path / "src"), "not a prepared cache")]:
        proc = cli(*args)
        assert proc.returncode == 2
        assert len(proc.stderr.strip().splitlines()) == 1 and expected in proc.stderr, proc.stderr


def test_cache_info_command(tmp_path, shared_data, capsys):
    prepare(shared_data / "imagewoof2-160.tar", tmp_path / "c", size=32, limit=1, workers=1, quiet=True)
    assert main(["cache-info", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "train 10, val 10; 10 classes; 32x32x3 raw" in out and "eigenvalues" in out
    assert main(["cache-info", str(tmp_path / "c"), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["complete"] is True and meta["splits"] == {"train": {"count": 10}, "val": {"count": 10}}


# ----------------------------------------------------------------------------- empty classes

def _class_with_only_strays(color) -> dict:
    """Classes a and b with real images, class c holding only a stray file and a non-image."""
    return {**_good_files(color), "c/.DS_Store": b"\0\0\0\1Bud1", "c/readme.txt": b"to be filled\n"}


@pytest.mark.parametrize("container", ["folder", "tar", "tar.gz"])
def test_class_folder_without_images_is_refused_or_listed(tmp_path, woof, container, capsys):
    """A class folder that holds only stray / non-image files is a class the user meant to have:
    ``alexnet prepare`` refuses it with one line naming the folder (exit 2), in a folder and in
    an archive alike; with --skip-bad it continues, says so on stderr and lists it in skipped.csv.
    (In-process ``alexnet.cli.main``: the real subprocess CLI is test_cli_prepare_real_subprocess.)"""
    color, _ = woof
    files = _class_with_only_strays(color)
    if container == "folder":
        _tree(tmp_path / "src", files)
        source, shown = tmp_path / "src", str(tmp_path / "src" / "c")
    else:
        source = tmp_path / f"src.{container}"
        write_tar(source, sorted(files.items()))
        shown = f"{source}:c"
    args = ["prepare", str(source), str(tmp_path / "out"), "--size", "32", "--workers", "1"]
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"alexnet: error: {shown}: class folder holds no images"), lines
    assert "--skip-bad" in lines[0]
    assert not (tmp_path / "out").exists()
    assert main(args + ["--skip-bad"]) == 0
    assert f"skipped {shown}: empty class folder" in capsys.readouterr().err
    cache = open_cache(tmp_path / "out")
    assert cache.classes == ["a", "b"]
    rows = {r["path"]: r["reason"] for r in csv.DictReader(open(tmp_path / "out" / "skipped.csv"))}
    assert "empty class folder" in rows[shown]


# ----------------------------------------------------------------------------- damaged caches

@pytest.fixture
def small_woof_cache(tmp_path, shared_data):
    prepare(shared_data / "imagewoof2-160.tar", tmp_path / "c", size=32, limit=2, workers=1, quiet=True)
    return tmp_path / "c"


def test_corrupt_stats_file_is_one_line_naming_it(small_woof_cache, capsys):
    stats = small_woof_cache / "stats.npz"
    stats.write_bytes(stats.read_bytes()[: stats.stat().st_size // 2])
    with pytest.raises(UserError, match=f"^{stats}: unreadable statistics"):
        open_cache(small_woof_cache)
    assert main(["cache-info", str(small_woof_cache)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"alexnet: error: {stats}: unreadable statistics"), err


@pytest.mark.parametrize("bad_label", [10, -1])
def test_label_outside_the_classes_is_refused_on_open(small_woof_cache, bad_label):
    labels_path = small_woof_cache / "val.labels.npy"
    labels = np.load(labels_path)
    assert labels.max() == 9                      # 10 classes, labels 0..9
    labels[3] = bad_label
    np.save(labels_path, labels)
    with pytest.raises(UserError, match=f"^{labels_path}: label {bad_label} is outside 0..9"):
        open_cache(small_woof_cache)


def test_prepare_records_checksums_and_verify_names_the_damaged_file(small_woof_cache, cli, capsys):
    """The damaged case as a real subprocess: exit status 2 and exactly one line."""
    meta = json.loads((small_woof_cache / "meta.json").read_text())
    files = sorted(p.name for p in small_woof_cache.iterdir() if p.name != "meta.json")
    assert sorted(meta["files"]) == files           # every file but meta.json has its checksum
    for name, want in meta["files"].items():        # ... and it is the file's SHA-256 (hashlib, read whole)
        data = (small_woof_cache / name).read_bytes()
        assert want == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert main(["cache-info", str(small_woof_cache), "--verify"]) == 0
    assert f"{len(files)} files match" in capsys.readouterr().out
    images = small_woof_cache / "train.images.u8"
    blob = bytearray(images.read_bytes())
    blob[len(blob) // 2] ^= 0x10                     # one bit in one pixel: the cache still opens
    images.write_bytes(bytes(blob))
    open_cache(small_woof_cache)
    proc = cli("cache-info", small_woof_cache, "--verify")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"alexnet: error: {images}: checksum mismatch (SHA-256 differs from the one " \
                                  f"recorded when prepared); the cache is damaged"


# ----------------------------------------------------------------------------- the writes around the pixels

def test_interrupted_while_finishing_restarts_instead_of_resuming_into_moved_rows(tmp_path, woof, monkeypatch):
    """Bad files leave holes that finishing closes by moving rows in place; a Ctrl-C after that
    (here: while stats.npz is written) must not leave a progress file that still describes the
    rows where they were: the re-run gives exactly an uninterrupted run's cache."""
    color, _ = woof
    bad = _bad_files(color, tmp_path)
    # sorted: a/truncated.JPEG comes after the a/ images, b/empty.JPEG before the b/ images: holes mid-file
    _tree(tmp_path / "src", {**_good_files(color), **{rel: data for rel, data, _ in (bad["truncated"], bad["empty"])}})
    prepare(tmp_path / "src", tmp_path / "reference", size=32, workers=1, quiet=True, skip_bad=True)
    module = importlib.import_module("alexnet.data.prepare")
    write = module.atomic_write

    def ctrl_c_at_stats(path, *args, **kwargs):
        if os.path.basename(path) == "stats.npz":
            raise KeyboardInterrupt        # what SIGINT raises here: no StopFlag while finishing
        return write(path, *args, **kwargs)

    monkeypatch.setattr(module, "atomic_write", ctrl_c_at_stats)
    monkeypatch.setattr(module, "CHECKPOINT_SECONDS", 0)      # a progress file after every chunk
    with pytest.raises(KeyboardInterrupt):
        prepare(tmp_path / "src", tmp_path / "out", size=32, workers=1, quiet=True, skip_bad=True)
    monkeypatch.undo()
    assert (tmp_path / "out.partial" / "train.images.u8").exists() and not (tmp_path / "out").exists()
    prepare(tmp_path / "src", tmp_path / "out", size=32, workers=1, quiet=True, skip_bad=True)
    for name in ("train.images.u8", "train.labels.npy", "train.files.txt", "stats.npz", "skipped.csv"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name


def _limit_file_size(limit: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # EFBIG instead of death by signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


@pytest.mark.slow
def test_progress_file_that_cannot_be_written_is_one_line_naming_it(tmp_path, shared_data):
    """A file-size limit (RLIMIT_FSIZE: EFBIG like a full disk's ENOSPC) that the raw pixels fit
    under (2x2 images: 12 bytes each) and the progress file does not (18 bytes per image: the
    done and valid flags, the JPEG index): one line naming progress.npz, exit 2, no temporary
    file left; the re-run without the limit finishes the cache."""
    src = shared_data / "imagewoof2-160.tar"
    out = tmp_path / "c"
    args = [sys.executable, "-m", "alexnet", "prepare", str(src), str(out), "--size", "2", "--limit", "100",
            "--workers", "1", "--quiet"]
    env = dict(os.environ, ALEXNET_PREPARE_CHECKPOINT_SECONDS="0")
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300,
                          preexec_fn=_limit_file_size(20_000))
    progress = tmp_path / "c.partial" / "progress.npz"
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[0].startswith(f"alexnet: error: {progress}: cannot write") and "File too large" in lines[0], lines
    assert "re-run resumes" in lines[0], lines
    assert not [p.name for p in progress.parent.iterdir() if ".tmp" in p.name]
    assert (progress.parent / "train.images.u8").stat().st_size <= 20_000
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cache = open_cache(out)
    assert (len(cache.split("train")), len(cache.split("val"))) == (1000, 1000)
