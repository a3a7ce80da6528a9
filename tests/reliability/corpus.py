"""A corpus of bad, odd and hostile inputs built at test time from real images.

Every case starts from real photographs (ILSVRC-2012 JPEGs in
``../shared/data/imagenet-sample-500.tar``) and is turned into the kind of file users
actually meet: a download cut short, a PNG saved with a .JPEG name, a phone photo that
relies on its EXIF orientation, a print-shop CMYK JPEG, a scanner's 16-bit PNG, a
``.DS_Store`` swept up by ``tar``, a pickle from a stranger. Nothing is mocked: the
files are written to a temporary folder and read by the real ``alexnet`` commands.

Each :class:`Case` carries its *documented expected outcome* (``docs/reliability.md``):

* ``valid`` - converted correctly: the cache holds exactly one image whose pixels
  match :attr:`Case.expected_rgb` (an independent reference: PIL decode, a float64
  formula or a numpy rotation, never the pipeline's own code), short side S then
  the central S x S square.
* ``warn`` - converted correctly *and* reported (a PNG named .JPEG decodes fine but
  is not what its name says).
* ``bad`` - by default ``prepare`` stops with one line ``alexnet: error: ...`` naming
  the file; with ``--skip-bad`` the file is skipped, listed with its reason in the
  report beside the cache and counted in the summary.
* ``stray`` - not an image by convention (hidden files, ``.DS_Store``, ``Thumbs.db``,
  AppleDouble ``._*`` files, hidden folders): ignored and counted, never an error.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from alexnet.data.decode import resize_square

SAMPLE_TAR = "imagenet-sample-500.tar"

# Real photographs used as raw material (all RGB, EXIF orientation 1 or absent, and
# visually distinct so that every cached image can be matched back to its source).
COLOUR_SOURCES = [
    "n01440764_tench.JPEG", "n01484850_great_white_shark.JPEG", "n01494475_hammerhead.JPEG",
    "n01514859_hen.JPEG", "n01530575_brambling.JPEG", "n01532829_house_finch.JPEG",
    "n01537544_indigo_bunting.JPEG", "n01560419_bulbul.JPEG", "n01601694_water_ouzel.JPEG",
    "n01614925_bald_eagle.JPEG", "n01622779_great_grey_owl.JPEG", "n01630670_common_newt.JPEG",
    "n01632458_spotted_salamander.JPEG", "n01641577_bullfrog.JPEG", "n01644900_tailed_frog.JPEG",
    "n01667778_terrapin.JPEG", "n01675722_banded_gecko.JPEG", "n01682714_American_chameleon.JPEG",
    "n01687978_agama.JPEG", "n01689811_alligator_lizard.JPEG", "n01693334_green_lizard.JPEG",
    "n01698640_American_alligator.JPEG", "n01728572_thunder_snake.JPEG", "n01729322_hognose_snake.JPEG",
    "n01737021_water_snake.JPEG", "n01740131_night_snake.JPEG", "n01749939_green_mamba.JPEG",
    "n01770081_harvestman.JPEG", "n01773157_black_and_gold_garden_spider.JPEG", "n01776313_tick.JPEG",
    "n01795545_black_grouse.JPEG", "n01818515_macaw.JPEG", "n01820546_lorikeet.JPEG",
    "n01828970_bee_eater.JPEG", "n01833805_hummingbird.JPEG", "n01855032_red-breasted_merganser.JPEG",
    "n01860187_black_swan.JPEG", "n01877812_wallaby.JPEG", "n01883070_wombat.JPEG",
    "n01914609_sea_anemone.JPEG",
]
GRAY_SOURCE = "n02815834_beaker.JPEG"        # a real grayscale (mode L) ILSVRC JPEG

# The three classes of the corpus: plain ASCII, Latin with an accent (NFC), CJK.
CLASSES = ["tench", "café", "猫"]

# Mean |difference| (0..255) allowed between a cached image and its reference at S = 128.
# The reference is the expected full-size pixels put through the pipeline's own
# short-side-S-and-centre-crop (alexnet.data.decode.resize_square): what is tested here is
# decoding and colour handling, not the resampling filter. Generated files have a shorter
# side of at most 240 px, so at S = 128 the pipeline decodes them at full size (no
# DCT-domain downscaling) and they must match to rounding. The original ILSVRC photos of the base
# set are large enough for the pipeline to decode them at 1/2 scale inside libjpeg-turbo,
# which differs from a full-size decode by up to ~4 on these photos. A wrong orientation,
# colour model or bit depth costs 40 or more.
TOL_EXACT = 1.0
TOL_DCT_SCALED = 6.0


@dataclass
class Case:
    """One file (or folder) of the corpus and what must happen to it."""

    id: str
    kind: str                      # valid | warn | bad | stray
    label: str                     # class folder
    relpath: str                   # path inside the dataset root (split/class/name)
    what: str                      # the case, in words (for the report table)
    expect: str                    # the documented outcome, in words
    expected_rgb: np.ndarray | None = None   # full-size HxWx3 uint8 reference for valid / warn
    reason_words: tuple[str, ...] = ()       # for bad: any of these words must be in the one-line reason
    tol: float = TOL_EXACT                   # see TOL_EXACT / TOL_DCT_SCALED


@dataclass
class Corpus:
    root: Path
    cases: list[Case] = field(default_factory=list)
    base: list[Case] = field(default_factory=list)   # plain valid JPEGs that make the dataset trainable

    def of_kind(self, *kinds: str) -> list[Case]:
        return [c for c in self.cases if c.kind in kinds]

    @property
    def valid_train(self) -> list[Case]:
        return [c for c in self.base + self.of_kind("valid", "warn") if c.relpath.startswith("train/")]


# ----------------------------------------------------------------------------- raw material

def read_sources(shared_data: Path, names: list[str]) -> dict[str, bytes]:
    """The original bytes of some ILSVRC-2012 JPEGs (uncompressed tar: random access is cheap)."""
    with tarfile.open(shared_data / SAMPLE_TAR) as tf:
        return {name: tf.extractfile(name).read() for name in names}


def decode_rgb(data: bytes) -> np.ndarray:
    """Reference decode: PIL, no EXIF handling, HxWx3 uint8."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def reference_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """The expected S x S square of full-size pixels ``rgb``: the pipeline's own resampling
    (short side S, central square; tested by the data pipeline's tests), so that the
    comparison isolates decoding and colour handling."""
    return resize_square(np.ascontiguousarray(rgb), size)


def jpeg_bytes(rgb_or_image, quality: int = 92, **kwargs) -> bytes:
    im = rgb_or_image if isinstance(rgb_or_image, Image.Image) else Image.fromarray(rgb_or_image)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, **kwargs)
    return buf.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def raw_png(width: int, height: int, bit_depth: int, colour_type: int, rows) -> bytes:
    """A PNG written by hand (so we control every header field): ``rows`` yields each
    scanline's bytes without the filter byte; the stream is compressed as it goes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    parts = []
    for row in rows:
        parts.append(comp.compress(b"\x00" + row))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def bomb_png(side: int) -> bytes:
    """A real decompression bomb: a 1-bit side x side PNG of zeros (a few hundred KB on
    disk, side^2 pixels - 3.6 GB as RGB for side 30,000 - once decoded)."""
    row = bytes((side + 7) // 8)
    return raw_png(side, side, 1, 0, (row for _ in range(side)))


def patch_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """The same JPEG with its frame header (SOF0/SOF2) claiming another size."""
    i = 2
    while i < len(data):
        if data[i] != 0xFF:
            raise ValueError("not a JPEG marker sequence")
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            out = bytearray(data)
            out[i + 5:i + 9] = struct.pack(">HH", height, width)
            return bytes(out)
        i += 2 + length
    raise ValueError("no SOF marker")


def exif_jpeg(rgb: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(rgb, quality=95, exif=exif.tobytes())


def oriented(a: np.ndarray, orientation: int) -> np.ndarray:
    """What a viewer shows for stored pixels ``a`` and an EXIF orientation (TIFF 6.0 / EXIF 2.3 table)."""
    return {1: a, 2: a[:, ::-1], 3: a[::-1, ::-1], 4: a[::-1], 5: a.transpose(1, 0, 2),
            6: np.rot90(a, k=-1), 7: np.rot90(a, k=1)[::-1], 8: np.rot90(a, k=1)}[orientation]


# ----------------------------------------------------------------------------- the corpus

def build_corpus(root: Path, shared_data: Path, *, per_class_train: int = 3, per_class_val: int = 1,
                 include: set[str] | None = None, classes: list[str] = CLASSES) -> Corpus:
    """Write a dataset tree ``root/{train,val}/<class>/...`` with plain valid JPEGs plus
    every case (or only the case ids in ``include``). Returns what was written."""
    n_base = len(classes) * (per_class_train + per_class_val)
    src = read_sources(shared_data, COLOUR_SOURCES + [GRAY_SOURCE])
    photos = [src[n] for n in COLOUR_SOURCES]
    corpus = Corpus(root=root)

    # Plain valid JPEGs, written byte for byte as distributed.
    k = 0
    for split, per_class in (("train", per_class_train), ("val", per_class_val)):
        for label in classes:
            (root / split / label).mkdir(parents=True, exist_ok=True)
            for _ in range(per_class):
                name = COLOUR_SOURCES[k]
                rel = f"{split}/{label}/{name}"
                (root / rel).write_bytes(photos[k])
                corpus.base.append(Case(f"base{k}", "valid", label, rel, "plain RGB JPEG", "converted",
                                        decode_rgb(photos[k]), tol=TOL_DCT_SCALED))
                k += 1
    spare = iter(photos[n_base:])      # photos not used by the base set, one per case

    def take_rgb(short_side: int = 240) -> np.ndarray:
        """A spare photo, shrunk so its shorter side is ``short_side``: under 2 x 128, so the
        pipeline decodes it at full size at S = 128 (no DCT-domain downscaling), and small
        enough to keep the corpus quick to build and prepare."""
        rgb = decode_rgb(next(spare))
        h, w = rgb.shape[:2]
        s = short_side / min(h, w)
        if s < 1:
            rgb = np.asarray(Image.fromarray(rgb).resize((round(w * s), round(h * s)), Image.BILINEAR))
        return rgb

    labels = iter(classes * 100)

    def add(cid, kind, name, data, what, expect, expected_rgb=None, reason_words=(), label=None):
        if include is not None and cid not in include:
            return
        label = label or next(labels)
        rel = f"train/{label}/{name}"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            data(path)           # a callable makes special files (symlinks, FIFOs)
        corpus.cases.append(Case(cid, kind, label, rel, what, expect, expected_rgb, tuple(reason_words)))

    converted = "converted correctly"
    one_line = "one line naming the file; skipped and listed with --skip-bad"
    ignored = "ignored and counted"

    # --- valid, but not plain RGB JPEGs -------------------------------------------------------
    gray = src[GRAY_SOURCE]
    g = np.asarray(Image.open(io.BytesIO(gray)).convert("L"))
    add("gray_jpeg", "valid", "gray.JPEG", gray, "grayscale (mode L) JPEG from ILSVRC", converted,
        np.repeat(g[:, :, None], 3, axis=2))

    rgb = take_rgb()
    cmyk = jpeg_bytes(Image.fromarray(rgb).convert("CMYK"), quality=95)
    add("cmyk_jpeg", "valid", "cmyk.jpg", cmyk, "CMYK JPEG (Adobe, inverted)", converted, decode_rgb(cmyk))

    rgb = take_rgb()
    prog = jpeg_bytes(rgb, quality=90, progressive=True)
    add("progressive_jpeg", "valid", "progressive.jpg", prog, "progressive JPEG", converted, decode_rgb(prog))

    rgb = take_rgb()
    lum = np.asarray(Image.fromarray(rgb).convert("L"))
    add("gray_png", "valid", "gray.png", png_bytes(Image.fromarray(lum)), "grayscale PNG", converted,
        np.repeat(lum[:, :, None], 3, axis=2))

    rgb = take_rgb()
    pal = Image.fromarray(rgb).quantize(colors=64)
    add("palette_png", "valid", "palette.png", png_bytes(pal), "palette (mode P) PNG", converted,
        np.asarray(pal.convert("RGB")))

    rgb = take_rgb()
    h, w = rgb.shape[:2]
    alpha = np.tile(np.linspace(0, 255, w).round().astype(np.uint8), (h, 1))   # transparent -> opaque, left to right
    rgba = np.dstack([rgb, alpha])
    a = alpha[:, :, None].astype(np.float64) / 255.0
    over_white = np.rint(rgb.astype(np.float64) * a + 255.0 * (1.0 - a)).astype(np.uint8)
    add("rgba_png", "valid", "rgba.png", png_bytes(Image.fromarray(rgba, "RGBA")),
        "RGBA PNG (alpha gradient)", converted + " (alpha composited over white)", over_white)

    rgb = take_rgb()
    pal_t = Image.fromarray(rgb).quantize(colors=32)
    pal_t.info["transparency"] = 0      # palette entry 0 transparent (tRNS chunk)
    idx = np.asarray(pal_t)
    pal_rgb = np.asarray(pal_t.convert("RGB")).copy()
    pal_rgb[idx == 0] = 255
    add("palette_trns_png", "valid", "palette_transparent.png", png_bytes(pal_t),
        "palette PNG with a transparent entry", converted + " (transparent over white)", pal_rgb)

    rgb = take_rgb()
    lum = np.asarray(Image.fromarray(rgb).convert("L"))
    v16 = lum.astype(np.uint16) * 257                # 0..255 -> 0..65535 exactly
    png16 = raw_png(v16.shape[1], v16.shape[0], 16, 0, (r.astype(">u2").tobytes() for r in v16))
    add("gray16_png", "valid", "gray16.png", png16, "16-bit grayscale PNG", converted + " (scaled, not clipped)",
        np.repeat(lum[:, :, None], 3, axis=2))

    rgb = take_rgb()
    rgb16 = rgb.astype(np.uint16) * 257
    png48 = raw_png(rgb.shape[1], rgb.shape[0], 16, 2, (r.astype(">u2").tobytes() for r in rgb16))
    add("rgb48_png", "valid", "rgb48.png", png48, "16-bit-per-channel RGB PNG", converted, rgb)

    for orientation in (3, 6, 8):
        rgb = take_rgb()
        data = exif_jpeg(rgb, orientation)
        add(f"exif{orientation}_jpeg", "valid", f"exif{orientation}.jpg", data,
            f"JPEG with EXIF orientation {orientation}", converted + " (orientation applied)",
            np.ascontiguousarray(oriented(decode_rgb(data), orientation)))

    rgb = take_rgb()
    pixel = rgb[rgb.shape[0] // 2, rgb.shape[1] // 2]
    one = np.broadcast_to(pixel, (1, 1, 3)).copy()
    add("one_pixel_png", "valid", "one_pixel.png", png_bytes(Image.fromarray(one)), "1x1 PNG", converted, one)
    one_jpeg = jpeg_bytes(np.broadcast_to(pixel, (1, 1, 3)).copy(), quality=100)
    add("one_pixel_jpeg", "valid", "one_pixel.jpg", one_jpeg, "1x1 JPEG", converted, decode_rgb(one_jpeg))

    rgb = take_rgb()
    add("png_named_jpeg", "warn", "really_a_png.JPEG", png_bytes(Image.fromarray(rgb)),
        "PNG data named .JPEG (ILSVRC-2012 has one)", converted + " and the mismatch reported", rgb)

    rgb = take_rgb()
    jp = jpeg_bytes(rgb)
    add("jpeg_named_png", "warn", "really_a_jpeg.png", jp, "JPEG data named .png",
        converted + " and the mismatch reported", decode_rgb(jp))

    rgb = take_rgb()
    jp = jpeg_bytes(rgb)
    add("unicode_filename", "valid", "naïve 猫 (1).JPG", jp, "non-ASCII file name with spaces, .JPG",
        converted, decode_rgb(jp))

    # --- bad files: one line by default, skipped and listed with --skip-bad -------------------
    jp = photos[0]
    add("truncated_jpeg", "bad", "truncated.jpg", jp[: len(jp) * 6 // 10], "JPEG cut at 60% (interrupted download)",
        one_line, reason_words=("truncat", "corrupt", "premature", "incomplete"))
    pn = png_bytes(Image.fromarray(take_rgb()))
    add("truncated_png", "bad", "truncated.png", pn[: len(pn) * 6 // 10], "PNG cut at 60%", one_line,
        reason_words=("truncat", "corrupt", "incomplete"))
    add("zero_bytes", "bad", "empty.jpg", b"", "zero-byte .jpg", one_line, reason_words=("empty", "0 bytes", "zero"))
    add("random_bytes", "bad", "noise.jpg", np.random.default_rng(7).bytes(5000), "5,000 random bytes named .jpg",
        one_line, reason_words=("not an image", "not a readable image", "unidentified", "corrupt"))
    add("html_as_jpg", "bad", "download.jpg",
        b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n",
        "an HTML error page saved as .jpg", one_line, reason_words=("not an image", "text", "html"))
    add("text_as_png", "bad", "notes.png", b"label: tench\nsource: flickr\n" * 20, "a text file named .png",
        one_line, reason_words=("not an image", "text"))
    add("bomb_png", "bad", "bomb.png", lambda p: p.write_bytes(bomb_png(30000)), "decompression bomb: 30000x30000 PNG (~220 KB)",
        one_line, reason_words=("too large", "bomb", "pixels"))
    add("bomb_png_warn_zone", "bad", "bomb_small.png", lambda p: p.write_bytes(bomb_png(10000)),
        "10000x10000 PNG (between 1x and 2x PIL's limit: PIL only warns)", one_line,
        reason_words=("too large", "bomb", "pixels"))
    add("bomb_jpeg_header", "bad", "bomb.jpg", patch_jpeg_size(photos[1], 65000, 65000),
        "JPEG whose header claims 65000x65000", one_line, reason_words=("too large", "bomb", "pixels", "corrupt"))
    add("broken_symlink", "bad", "gone.jpg", lambda p: os.symlink(p.parent / "no-such-file.jpg", p),
        "symlink to a missing file", one_line, reason_words=("no such", "missing", "broken", "cannot read",
                                                            "unreadable", "not found"))

    # --- stray files: ignored and counted -------------------------------------------------------
    add("ds_store", "stray", ".DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(2000), ".DS_Store", ignored)
    add("thumbs_db", "stray", "Thumbs.db", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(1000), "Thumbs.db", ignored)
    add("appledouble", "stray", "._n01440764_tench.JPEG", b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X" + bytes(500),
        "AppleDouble ._ file (macOS tar)", ignored)
    add("hidden_jpeg", "stray", ".hidden.jpg", jpeg_bytes(take_rgb()), "hidden file (valid JPEG)", ignored)
    add("hidden_dir", "stray", ".ipynb_checkpoints/copy.jpg", jpeg_bytes(take_rgb()),
        "image inside a hidden folder", ignored)
    return corpus


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


# ----------------------------------------------------------------------------- hostile files

class MkdirPayload:
    """Unpickling this calls ``os.mkdir(marker)``: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def pickle_payload(marker: Path) -> bytes:
    return pickle.dumps({"state_dict": {}, "payload": MkdirPayload(marker)}, protocol=2)


def torch_zip_payload(marker: Path, path: Path) -> None:
    """A ``torch.save`` file (zip + data.pkl) whose pickle carries the payload."""
    torch.save({"model": {"w": torch.zeros(2)}, "payload": MkdirPayload(marker)}, path)


def cifar_python_tar(path: Path, shared_data: Path, *, payload_marker: Path | None = None,
                     payload_in: str = "data_batch_1", per_batch: int = 20) -> dict:
    """CIFAR-10 in its official python format (``cifar-10-batches-py/``: pickled dicts of
    bytes keys, uint8 rows of 3072 = R, G, B planes of 32x32) built from real photos
    shrunk to 32x32. With ``payload_marker`` one pickle also carries a code payload
    (under an extra key, so a loader that executes it would otherwise succeed).

    Returns {"train": (N,32,32,3) uint8, "test": ..., "train_labels", "test_labels"}."""
    src = read_sources(shared_data, COLOUR_SOURCES)
    imgs = np.stack([np.asarray(Image.fromarray(decode_rgb(b)).resize((32, 32), Image.BILINEAR)) for b in src.values()])
    rng = np.random.default_rng(0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    members: dict[str, bytes] = {}
    out = {"train": [], "test": [], "train_labels": [], "test_labels": []}

    def batch(label: str) -> dict:
        pick = rng.integers(0, len(imgs), per_batch)
        labels = [int(x) for x in rng.integers(0, 10, per_batch)]
        chosen = imgs[pick]
        data = chosen.transpose(0, 3, 1, 2).reshape(per_batch, 3072)   # CHW planes, as CIFAR stores them
        return {b"batch_label": label.encode(), b"labels": labels, b"data": data,
                b"filenames": [f"img_{label}_{i}.png".encode() for i in range(per_batch)]}, chosen, labels

    for i in range(1, 6):
        d, chosen, labels = batch(f"data_batch_{i}")
        members[f"data_batch_{i}"] = d
        out["train"].append(chosen)
        out["train_labels"] += labels
    d, chosen, labels = batch("test_batch")
    members["test_batch"] = d
    out["test"].append(chosen)
    out["test_labels"] += labels
    members["batches.meta"] = {b"label_names": [n.encode() for n in names], b"num_cases_per_batch": per_batch,
                               b"num_vis": 3072}
    if payload_marker is not None:
        members[payload_in] = dict(members[payload_in])
        members[payload_in][b"payload"] = MkdirPayload(payload_marker)
    with tarfile.open(path, "w:gz") as tf:
        for name, obj in members.items():
            blob = pickle.dumps(obj, protocol=2)      # the original files are protocol-2 pickles
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
        readme = b"<meta HTTP-EQUIV=\"REFRESH\" content=\"0; URL=http://www.cs.toronto.edu/~kriz/cifar.html\">\n"
        info = tarfile.TarInfo("cifar-10-batches-py/readme.html")
        info.size = len(readme)
        tf.addfile(info, io.BytesIO(readme))
    return {"train": np.concatenate(out["train"]), "test": np.concatenate(out["test"]),
            "train_labels": np.array(out["train_labels"]), "test_labels": np.array(out["test_labels"])}


def escaping_tar(path: Path, shared_data: Path, outside: Path, *, members: tuple[str, ...] = (
        "dotdot", "absolute", "symlink_out", "symlink_abs", "hardlink_abs")) -> dict[str, str]:
    """An image-folder tar whose members try to reach outside the target folder.

    Valid members: ``train/<class>/*.JPEG`` for two classes (and ``val/``), so the
    archive is otherwise a good dataset. Hostile members (each a real JPEG or a link):
    ``dotdot`` - ``train/tench/../../../escape.JPEG``; ``absolute`` - an absolute path
    under ``outside``; ``symlink_out`` - a symlink ``train/tench/link.JPEG`` ->
    ``../../../outside.JPEG``; ``symlink_abs`` - a symlink to ``outside/outside.JPEG``
    given as an absolute path; ``hardlink_abs`` - a hard link to ``/etc/passwd``.
    A real JPEG is placed at ``outside/outside.JPEG`` so that a reader which follows a
    link would succeed (silently reading a file outside the archive) rather than fail.
    Returns {case: member name}.
    """
    src = read_sources(shared_data, COLOUR_SOURCES[:8])
    photos = list(src.values())
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "outside.JPEG").write_bytes(photos[7])
    hostile = {}
    with tarfile.open(path, "w") as tf:
        def add_file(name: str, data: bytes):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

        k = 0
        for split, n in (("train", 2), ("val", 1)):
            for label in ("tench", "hen"):
                for _ in range(n):
                    add_file(f"{split}/{label}/{COLOUR_SOURCES[k]}", photos[k])
                    k += 1
        if "dotdot" in members:
            hostile["dotdot"] = "train/tench/../../../escape.JPEG"
            add_file(hostile["dotdot"], photos[6])
        if "absolute" in members:
            hostile["absolute"] = str(outside / "absolute.JPEG")
            add_file(hostile["absolute"], photos[6])
        for case, target, kind in (("symlink_out", "../../../outside.JPEG", tarfile.SYMTYPE),
                                   ("symlink_abs", str(outside / "outside.JPEG"), tarfile.SYMTYPE),
                                   ("hardlink_abs", "/etc/passwd", tarfile.LNKTYPE)):
            if case in members:
                info = tarfile.TarInfo(f"train/hen/{case}.JPEG")
                info.type = kind
                info.linkname = target
                tf.addfile(info)
                hostile[case] = info.name
    return hostile
