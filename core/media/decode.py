"""Safe decoding, checking, resizing and re-encoding of one image.

Order of work for each sample (bytes in, encoded image or :class:`Reject` out):

1. ``Image.open`` reads only the header. ``DecompressionBombWarning`` is turned into an error,
   so Pillow's own bomb check rejects (``decompression_bomb``); unknown data is
   ``not_an_image``.
2. Header checks before any pixel is decoded: ``max_pixels`` (``decompression_bomb``),
   ``min_size`` (``too_small``), ``max_side`` (``too_large``), ``max_aspect_ratio``
   (``bad_aspect_ratio``), the animated policy (``animated``).
3. The resize plan (:mod:`mmprep.media.resize`) says how many source pixels are needed, so
   JPEGs are decoded DCT-scaled: simplejpeg (libjpeg-turbo, scale factors n/8, strict: warnings
   such as a premature end of data raise) for RGB/grey JPEGs, Pillow ``draft`` otherwise.
   The full decode happens inside the try: a truncated file is ``decode_error``;
   ``LOAD_TRUNCATED_IMAGES`` is never set.
4. Mode conversion to RGB (CMYK/YCCK, palette/LA/RGBA composited on ``background``, 16-bit and
   float scaled to 8 bit), EXIF orientation, one antialiased resize with a source box, pad.
5. Encode, or pass the source bytes through when they already are RGB in the target format and
   nothing changed (the data is still fully decoded once, cheaply DCT-scaled for JPEG, to
   validate it).
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import resize as rz

try:  # optional fast path
    import simplejpeg as _sj
except ImportError:  # pragma: no cover - simplejpeg is optional
    _sj = None

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_PIL_FORMAT = {"jpeg": "JPEG", "webp": "WEBP", "png": "PNG"}
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class Reject(Exception):
    """A sample that cannot be used: ``reason`` (rejection reason) and ``message``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class Result:
    data: bytes
    width: int  # original size, after EXIF orientation
    height: int
    stored_width: int
    stored_height: int
    format: str  # jpeg | webp | png
    source_format: str
    animated: bool
    passthrough: bool
    bucket: int | None = None


def raise_pillow_limit(max_pixels: int) -> None:
    """Pillow warns above ``Image.MAX_IMAGE_PIXELS`` (we turn the warning into a rejection):
    raise its limit to ``max_pixels`` so our own check decides; never lower it."""
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _looks_like_text(data: bytes) -> str:
    head = data[:256].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return " (looks like an HTML/XML page)"
    if head.startswith((b"{", b"[")):
        return " (looks like JSON)"
    return ""


def process_image(data: bytes, o, buckets: list[tuple[int, int]] | None = None) -> Result:
    """Check, decode, convert, resize and encode one image according to options ``o``."""
    if not data:
        raise Reject("not_an_image", "empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise Reject("decompression_bomb", str(e)) from None
        except UnidentifiedImageError:
            raise Reject("not_an_image", f"not a recognised image format{_looks_like_text(data)}, {len(data)} bytes") from None
        except Exception as e:
            raise Reject("decode_error", f"cannot read header: {type(e).__name__}: {e}") from None
        try:
            return _process(img, data, o, buckets)
        except Reject:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise Reject("decompression_bomb", str(e)) from None
        except MemoryError:
            raise Reject("decode_error", "out of memory while decoding") from None
        except Exception as e:
            raise Reject("decode_error", f"{type(e).__name__}: {e}") from None
        finally:
            img.close()


def _process(img: Image.Image, data: bytes, o, buckets) -> Result:
    fmt = (img.format or "unknown").lower()
    w, h = img.size
    if w < 1 or h < 1:
        raise Reject("decode_error", f"invalid size {w}x{h}")
    if w * h > o.max_pixels:
        raise Reject("decompression_bomb", f"{w}x{h} = {w * h} pixels exceeds max_pixels={o.max_pixels}")
    if min(w, h) < o.min_size:
        raise Reject("too_small", f"{w}x{h}: shorter side below min_size={o.min_size}")
    if o.max_side is not None and max(w, h) > o.max_side:
        raise Reject("too_large", f"{w}x{h}: longer side above max_side={o.max_side}")
    if o.max_aspect_ratio is not None and max(w, h) / min(w, h) > o.max_aspect_ratio:
        raise Reject("bad_aspect_ratio", f"{w}x{h}: aspect ratio {max(w, h) / min(w, h):.2f} above {o.max_aspect_ratio:g}")
    animated = bool(getattr(img, "is_animated", False))
    if animated and o.animated == "reject":
        raise Reject("animated", f"animated {fmt} with {getattr(img, 'n_frames', '?')} frames")

    orientation = 1
    if o.exif_transpose:
        try:
            orientation = int(img.getexif().get(0x0112, 1) or 1)
        except Exception:
            orientation = 1
        if orientation not in _TRANSPOSE:
            orientation = 1
    swap = orientation in (5, 6, 7, 8)
    ow, oh = (h, w) if swap else (w, h)

    p = rz.plan(ow, oh, o.resize, o.size, o.upscale, buckets)
    out_fmt = o.format
    changed = p.changes(ow, oh) or orientation != 1

    if o.passthrough and not changed and fmt == out_fmt and img.mode == "RGB" and not animated:
        _validate(img, fmt)
        return Result(data, ow, oh, ow, oh, out_fmt, fmt, animated, True, p.bucket)

    # pixels needed in source (pre-orientation) coordinates
    nw, nh = p.needed_source()
    if swap:
        nw, nh = nh, nw
    need = (max(1, math.ceil(nw)), max(1, math.ceil(nh)))
    px = _decode(img, data, fmt, need, o.fast_jpeg)
    px = to_rgb(px, tuple(o.background))
    if orientation != 1:
        px = px.transpose(_TRANSPOSE[orientation])
    dw, dh = px.size
    if p.size != (dw, dh) or p.box != rz.FULL:
        box = (p.box[0] * dw, p.box[1] * dh, p.box[2] * dw, p.box[3] * dh)
        px = px.resize(p.size, _RESAMPLE[o.resample], box=box)
    if p.canvas is not None:
        canvas = Image.new("RGB", p.canvas, tuple(o.background))
        canvas.paste(px, ((p.canvas[0] - px.size[0]) // 2, (p.canvas[1] - px.size[1]) // 2))
        px = canvas
    buf = io.BytesIO()
    if out_fmt == "jpeg":
        px.save(buf, "JPEG", quality=o.quality)
    elif out_fmt == "webp":
        px.save(buf, "WEBP", quality=o.quality)
    else:
        px.save(buf, "PNG", compress_level=o.png_compress_level)
    sw, sh = px.size
    return Result(buf.getvalue(), ow, oh, sw, sh, out_fmt, fmt, animated, False, p.bucket)


def _validate(img: Image.Image, fmt: str) -> None:
    """Decode once (DCT-scaled to 1/8 for JPEG: every entropy-coded byte is still read)."""
    if fmt == "jpeg":
        img.draft(img.mode, (max(1, img.size[0] // 8), max(1, img.size[1] // 8)))
    img.load()


def _decode(img: Image.Image, data: bytes, fmt: str, need: tuple[int, int], fast: bool) -> Image.Image:
    """Decoded first frame, possibly DCT-scaled but never below ``need`` (source coordinates)."""
    if fmt == "jpeg":
        if fast and _sj is not None and img.mode in ("RGB", "L"):
            scaled = need[0] < img.size[0] or need[1] < img.size[1]
            try:
                arr = _sj.decode_jpeg(
                    data,
                    colorspace="RGB" if img.mode == "RGB" else "GRAY",
                    min_width=need[0] if scaled else 0,
                    min_height=need[1] if scaled else 0,
                    strict=True,
                )
            except ValueError as e:
                raise Reject("decode_error", f"JPEG: {e}") from None
            if arr.ndim == 3 and arr.shape[2] == 1:
                arr = arr[:, :, 0]
            return Image.fromarray(arr)
        if need[0] < img.size[0] or need[1] < img.size[1]:
            img.draft(img.mode if img.mode in ("RGB", "L", "CMYK") else None, need)
    try:
        img.load()
    except OSError as e:
        raise Reject("decode_error", f"{fmt}: {e}") from None
    return img


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """8-bit RGB: alpha composited on ``background``, 16-bit/float scaled (not clipped)."""
    m = img.mode
    if m == "RGB":
        return img
    if m == "P":
        img = img.convert("RGBA" if ("transparency" in img.info or img.palette and img.palette.mode == "RGBA") else "RGB")
        m = img.mode
        if m == "RGB":
            return img
    if m in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
        m = "RGBA"
    if m == "RGBA":
        base = Image.new("RGB", img.size, background)
        base.paste(img, mask=img.getchannel("A"))
        return base
    if m.startswith("I") or m == "F":
        return Image.fromarray(_to_uint8(np.asarray(img), m)).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK (Adobe inversion handled by the decoder), YCbCr, LAB, HSV, RGBX


def _to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    if a.ndim == 3:
        a = a[..., 0]
    if mode == "F" or a.dtype.kind == "f":
        a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0 and hi <= 1.0:
            a = a * 255.0
        elif lo >= 0 and hi <= 255:
            pass
        elif lo >= 0 and hi <= 65535:
            a = a / 257.0
        else:
            a = (a - lo) / ((hi - lo) or 1.0) * 255.0
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    a = a.astype(np.int64)
    if mode.startswith("I;16") or (a.min() >= 0 and a.max() <= 65535):
        return np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)
    lo, hi = int(a.min()), int(a.max())
    return np.clip(np.rint((a - lo) / ((hi - lo) or 1) * 255.0), 0, 255).astype(np.uint8)
