"""One image file's bytes -> the paper's S x S uint8 square.

The paper (Section 2): "we down-sampled the images to a fixed resolution of 256 x 256.
Given a rectangular image, we first rescaled the image such that the shorter side was
of length 256, and then cropped out the central 256x256 patch from the resulting
image." :func:`decode_square` does exactly that, once per image, at ``prepare`` time.

How it is made fast (``benchmarks/bench_data.py`` measures it against the plain
PIL path: open, convert, resize the short side, centre crop):

* JPEGs are decoded by libjpeg-turbo through ``simplejpeg``, which writes straight
  into a numpy array (PIL's decoder goes through its own 4-byte-per-pixel buffer).
* Large JPEGs are downscaled *inside* the decoder (DCT-domain scaling by 1/2, 1/4 or
  1/8, the SIMD-accelerated factors) whenever the shorter side stays >= S, so a
  2000x1500 photo never exists at full size. Only power-of-two factors are used: the
  other n/8 factors are slower than a full decode in libjpeg-turbo.
* The resize only touches the central square (crop first, then rescale: the same as
  "rescale, then crop the centre" up to the rounding of the crop offset), with torch's
  vectorised uint8 antialiased bilinear kernel instead of PIL's (~3x faster here).

Everything that is not a plain baseline JPEG goes through PIL: PNG, GIF, BMP, TIFF,
WebP, CMYK/YCCK JPEGs. Colour handling: EXIF orientation applied; grayscale and
palette images expanded to RGB (or kept 1-channel for grayscale datasets); alpha
composited over white; 16-bit images scaled to 8 bits (PIL's own ``convert`` clips
them instead); CMYK converted by PIL. Images larger than PIL's decompression-bomb
limit (``PIL.Image.MAX_IMAGE_PIXELS``) are refused before their pixels are decoded.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

try:  # the fast path; everything still works (slower) without it
    import simplejpeg
except ImportError:  # pragma: no cover - simplejpeg is a declared dependency
    simplejpeg = None

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}

# What the bytes say, independent of the file name.
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"P5", "PPM"), (b"P6", "PPM"), (b"P4", "PPM"),
)
_EXTENSION_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".gif": "GIF",
                     ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF", ".ppm": "PPM", ".pgm": "PPM", ".pbm": "PPM"}


class BadImage(Exception):
    """This file cannot become a training image; the message says why (one line)."""


def sniff_format(data: bytes) -> str | None:
    """The image format the bytes are in (by magic number), or None."""
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _describe_start(data: bytes) -> str:
    head = data[:64].lstrip()
    if head[:1] == b"<":
        return "looks like HTML/XML text"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head[:32]):
        return "looks like text"
    return f"starts with bytes {data[:8].hex(' ')}"


def _pixel_limit() -> int | None:
    return Image.MAX_IMAGE_PIXELS


def _check_bomb(width: int, height: int) -> None:
    limit = _pixel_limit()
    if limit and width * height > limit:
        raise BadImage(f"image too large to be safe ({width}x{height} = {width * height:,} pixels, "
                       f"over PIL's decompression-bomb limit of {limit:,})")


def _exif_orientation(data: bytes) -> int:
    """EXIF orientation tag (1..8) of a JPEG, 1 when absent. Cheap: PIL parses headers only."""
    if b"Exif\x00\x00" not in data[:131072]:
        return 1
    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block is not worth refusing an image for
        return 1


def _apply_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    """numpy equivalent of ``ImageOps.exif_transpose`` for an HxWxC array."""
    if orientation == 2:
        return a[:, ::-1]
    if orientation == 3:
        return a[::-1, ::-1]
    if orientation == 4:
        return a[::-1]
    if orientation == 5:  # transpose
        return a.transpose(1, 0, 2)
    if orientation == 6:  # rotate 270 (90 clockwise)
        return np.rot90(a, k=-1)
    if orientation == 7:  # transverse
        return np.rot90(a, k=1)[::-1]
    if orientation == 8:  # rotate 90 (counter-clockwise)
        return np.rot90(a, k=1)
    return a


_SCRATCH: dict = {}


def _scratch(name: str, nbytes: int) -> np.ndarray:
    """A per-process uint8 buffer reused across images: a fresh multi-MB array per image costs
    more in page faults (here ~1 ms) than the copy that fills it."""
    buf = _SCRATCH.get(name)
    if buf is None or buf.size < nbytes:
        buf = _SCRATCH[name] = np.empty(max(nbytes, 1 << 20), dtype=np.uint8)
    return buf[:nbytes]


def central_square(a: np.ndarray) -> np.ndarray:
    """The central min(H, W) square of an HxWxC array (integer offsets, like crop-after-resize)."""
    h, w = a.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return a[top: top + side, left: left + side]


def resize_square(a: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """Short side -> ``size`` (bilinear, antialiased when shrinking), central ``size`` x ``size``.

    Crops first, then resizes only the square (same as resize-then-crop up to the rounding
    of the crop offset). The resize is torch's uint8 antialiased bilinear kernel (the one
    torchvision uses; vectorised for 3-channel channels-last images, ~3x faster than PIL's
    here and within +-1 of PIL's result on nearly every pixel), writing straight into
    ``out`` (size x size x C uint8) when given.
    """
    view = central_square(a)
    if out is None:
        out = np.empty((size, size, a.shape[2]), dtype=np.uint8)
    if view.shape[0] == size:
        np.copyto(out, view)  # always a copy: ``a`` may live in a reused decode buffer
        return out
    if view.flags.c_contiguous:  # portrait or square images: the rows are already contiguous
        square = view
    else:
        square = _scratch("square", view.size).reshape(view.shape)
        np.copyto(square, view)  # contiguous HWC: the layout the vectorised kernel wants
    if not square.flags.writeable:  # np.asarray(PIL image) is read-only; torch wants writable memory
        square = np.array(square)
    x = torch.from_numpy(square).permute(2, 0, 1)[None]  # NCHW view of HWC memory = channels_last
    y = torch.from_numpy(out).permute(2, 0, 1)[None]
    try:  # the op itself, into ``out``: F.interpolate's wrapper and a fresh tensor cost ~40% more
        torch.ops.aten._upsample_bilinear2d_aa.out(x, [size, size], False, None, None, out=y)
    except (AttributeError, RuntimeError):  # pragma: no cover - other torch versions
        y.copy_(F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    return out


def _decode_jpeg_fast(data: bytes, size: int, channels: int) -> np.ndarray | None:
    """libjpeg-turbo decode with DCT-domain downscaling; None when PIL must do it (CMYK)."""
    if simplejpeg is None:
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as exc:
        raise BadImage(f"corrupt JPEG header ({exc})") from None
    _check_bomb(width, height)
    if colorspace not in ("Gray", "YCbCr", "RGB"):
        return None  # CMYK / YCCK (Adobe): PIL knows the inverted-CMYK convention
    if channels == 1 and colorspace != "Gray":
        raise BadImage("colour image in a dataset prepared as grayscale (use --channels 3)")
    short = min(width, height)
    factor = 1
    while factor < 8 and short // (factor * 2) >= size:
        factor *= 2
    kwargs = {}
    if factor > 1:  # ceil: libjpeg's scaled size is ceil(dim * 1/factor)
        kwargs = {"min_height": -(-height // factor), "min_width": -(-width // factor)}
    try:
        out_h, out_w = simplejpeg.decode_jpeg_header(data, **kwargs)[:2] if kwargs else (height, width)
        buffer = _scratch("decode", out_h * out_w * channels)
        a = simplejpeg.decode_jpeg(data, "GRAY" if channels == 1 else "RGB", buffer=buffer, **kwargs)
    except ValueError as exc:
        raise BadImage(f"corrupt or truncated JPEG ({exc})") from None
    if a.ndim == 2:
        a = a[:, :, None]
    orientation = _exif_orientation(data)
    if orientation != 1:
        a = _apply_orientation(a, orientation)
    return a


def _to_uint8_array(im: Image.Image, channels: int) -> np.ndarray:
    """Any PIL mode -> HxWxC uint8, C = ``channels``."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im)
        if mode == "F":
            scaled = np.clip(a, 0.0, 1.0) * 255.0 if a.max() <= 1.0 else np.clip(a, 0, 255)
            a8 = np.rint(scaled).astype(np.uint8)
        elif a.max() > 255 or mode.startswith("I;16"):  # 16-bit range: scale, do not clip
            a8 = ((a.astype(np.int64).clip(0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        else:
            a8 = a.clip(0, 255).astype(np.uint8)
        a8 = a8[:, :, None]
        return np.repeat(a8, 3, axis=2) if channels == 3 else a8
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba).convert("RGB")
        mode = "RGB"
        if channels == 1 and im.convert("L").convert("RGB").tobytes() == im.tobytes():
            im = im.convert("L")
            mode = "L"
    if channels == 1:
        if mode in ("1", "L"):
            return np.asarray(im.convert("L"))[:, :, None]
        raise BadImage(f"colour image (mode {mode}) in a dataset prepared as grayscale (use --channels 3)")
    return np.asarray(im.convert("RGB"))


def _decode_pil(data: bytes, channels: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise BadImage(f"image too large to be safe ({exc})") from None
        except Image.DecompressionBombWarning as exc:
            raise BadImage(f"image too large to be safe ({exc})") from None
        except Exception as exc:  # UnidentifiedImageError, struct errors in broken headers...
            raise BadImage(f"not a readable image ({type(exc).__name__}: {exc})") from None
        _check_bomb(*im.size)
        try:
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_uint8_array(im, channels)
        except BadImage:
            raise
        except Exception as exc:  # OSError "image file is truncated", SyntaxError in broken PNGs, ...
            raise BadImage(f"corrupt or truncated {im.format or 'image'} ({type(exc).__name__}: {exc})") from None


def decode_square(data: bytes, size: int, channels: int = 3, name: str = "",
                  out: np.ndarray | None = None) -> tuple[np.ndarray, str | None]:
    """Decode ``data`` and return (``size`` x ``size`` x ``channels`` uint8 array, warning or None).

    Raises :class:`BadImage` (one-line reason) for anything that is not a safe, complete
    image. The warning is for files that decode fine but are not what their name says
    (a PNG named .JPEG: ILSVRC-2012 train has one), so they are reported, not lost.
    ``out``: where to write the result (saves an allocation). Not thread-safe: decoding goes
    through per-process scratch buffers (prepare uses processes, not threads).
    """
    if len(data) == 0:
        raise BadImage("empty file (0 bytes)")
    fmt = sniff_format(data)
    warning = None
    expected = _EXTENSION_FORMAT.get(os.path.splitext(name)[1].lower()) if name else None
    if fmt is None:
        if expected is None or expected not in ("WEBP", "TIFF"):
            # PIL recognises a few more formats than our magic table; let it try before refusing.
            try:
                with Image.open(io.BytesIO(data)) as probe:
                    fmt = probe.format
            except Exception:
                raise BadImage(f"not an image ({_describe_start(data)}; {len(data):,} bytes)") from None
    if expected and fmt and fmt != expected and not (fmt == "MPO" and expected == "JPEG"):
        warning = f"{fmt} data in a {os.path.splitext(name)[1]} file (decoded as {fmt})"
    a = None
    if fmt == "JPEG":
        a = _decode_jpeg_fast(data, size, channels)
    if a is None:
        a = _decode_pil(data, channels)
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise BadImage(f"empty image ({a.shape[1]}x{a.shape[0]} pixels)")
    return resize_square(a, size, out), warning
