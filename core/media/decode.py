"""Safe decoding, checking, resizing and re-encoding of one image.

Order of work for each sample (bytes in, encoded image or :class:`Reject` out):

1. ``Image.open`` reads only the header. ``DecompressionBombWarning`` is turned into an error,
   so Pillow's own bomb check rejects (``decompression_bomb``); unknown data is
   ``not_an_image``.
2. Header checks before any pixel is decoded: ``max_pixels`` (``decompression_bomb``),
   ``min_size`` (``too_small``), ``max_side`` (``too_large``), ``max_aspect_ratio``
   (``bad_aspect_ratio``), the animated policy (``animated``).
3. The resize plan (:mod:`mmprep.media.resize`) says how many source pixels are needed, so
   JPEGs are decoded DCT-scaled: simplejpeg (libjpeg-turbo, scale factors n/8 chosen by
   :func:`dct_scale`, strict: warnings such as a premature end of data raise) for RGB/grey
   JPEGs, Pillow ``draft`` otherwise.
   The full decode happens inside the try: a truncated file is ``decode_error``;
   ``LOAD_TRUNCATED_IMAGES`` is never set.
4. Mode conversion to RGB (CMYK/YCCK, palette/LA/RGBA composited on ``background``, 16-bit and
   float scaled to 8 bit), EXIF orientation, one antialiased resize with a source box, pad.
   Backend (``resize_backend``): OpenCV when ``cv2`` imports (``auto``), on a numpy array:
   ``cv2.flip``/``rotate``/``transpose`` for the orientation, the box cropped to whole decoded
   pixels, ``cv2.resize`` (:func:`_cv_resize`: INTER_LINEAR up to a factor 1.25, a box filter
   of the factor's width above that, i.e. INTER_AREA or, up to 2×, its cheaper equivalent;
   3-8 vs 11 ms for Pillow's BICUBIC after DCT scaling, bench/results/media.md) and JPEG output
   encoded by simplejpeg (4:2:0, libjpeg's ISLOW DCT, as Pillow does). Arrays stay RGB throughout (simplejpeg decodes to RGB, cv2 never decodes
   here, so there is no BGR step). OpenCV runs single-threaded: worker processes are the
   parallelism. Otherwise Pillow does the same work on ``Image`` objects.
5. Encode, or pass the source bytes through when they already are RGB in the target format and
   nothing changed (the data is still fully decoded once, cheaply DCT-scaled for JPEG, to
   validate it).
"""

from __future__ import annotations

import importlib.util
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
_cv2_mod = None  # None: not tried yet; False: unavailable; else the cv2 module
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


def opencv_available() -> bool:
    """Whether ``cv2`` is installed (cheap: finds the module without importing it)."""
    if _cv2_mod is not None:
        return _cv2_mod is not False
    try:
        return importlib.util.find_spec("cv2") is not None
    except (ImportError, ValueError):
        return False


def _opencv():
    """``cv2`` imported on first use and set to one thread (processes are the parallelism), or None."""
    global _cv2_mod
    if _cv2_mod is None:
        try:
            import cv2
        except Exception:  # not installed, or a broken install: the Pillow path still works
            _cv2_mod = False
        else:
            cv2.setNumThreads(1)
            _cv2_mod = cv2
    return _cv2_mod or None


def backend(o) -> str:
    """The pixel backend used for options ``o``: ``"opencv"`` or ``"pillow"``."""
    choice = getattr(o, "resize_backend", "auto")
    if choice == "pillow":
        return "pillow"
    if _opencv() is not None:
        return "opencv"
    if choice == "opencv":
        raise RuntimeError("resize_backend: opencv needs the opencv-python-headless package (pip install 'mmprep[fast]')")
    return "pillow"


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
    cv = _opencv() if backend(o) == "opencv" else None
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
            return _process(img, data, o, buckets, cv)
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


def _process(img: Image.Image, data: bytes, o, buckets, cv=None) -> Result:
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
    if cv is not None:
        data, sw, sh = _pixels_cv(cv, img, data, fmt, need, orientation, p, o)
        return Result(data, ow, oh, sw, sh, out_fmt, fmt, animated, False, p.bucket)
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


def _fast_jpeg(img: Image.Image, fmt: str, fast: bool) -> bool:
    return fmt == "jpeg" and fast and _sj is not None and img.mode in ("RGB", "L")


def dct_scale(w: int, h: int, need: tuple[int, int]) -> int:
    """Numerator n of the DCT scale n/8 to decode a ``w``×``h`` JPEG at: the smallest n whose
    scaled size (libjpeg rounds up) still covers ``need``, except that 7/8 becomes 8/8.

    libjpeg-turbo has SIMD inverse DCTs only for 8/8, 4/8, 2/8 and 1/8; the others are plain C,
    and 7/8 measured slower than a full decode (800×600: 6.4 vs 4.1 ms, bench/results/media.md),
    while the resize from 8/8 stays cheap (factor at most 8/7 × 7/6 = 1.33). 5/8 and 6/8 cost
    about as much as 8/8 but leave a smaller, cheaper and less aliasing-prone resize."""
    for n in range(1, 9):
        if -(-w * n // 8) >= need[0] and -(-h * n // 8) >= need[1]:
            return 8 if n == 7 else n
    return 8


def _decode_sj(img: Image.Image, data: bytes, need: tuple[int, int]) -> np.ndarray:
    """simplejpeg decode (strict: a truncated file raises), DCT-scaled (:func:`dct_scale`) but
    never below ``need``; RGB (h, w, 3) or grey (h, w)."""
    w, h = img.size
    n = dct_scale(w, h, need)
    try:
        arr = _sj.decode_jpeg(
            data,
            colorspace="RGB" if img.mode == "RGB" else "GRAY",
            # simplejpeg picks the smallest n/8 whose size is at least these minimums
            min_width=-(-w * n // 8) if n < 8 else 0,
            min_height=-(-h * n // 8) if n < 8 else 0,
            strict=True,
        )
    except ValueError as e:
        raise Reject("decode_error", f"JPEG: {e}") from None
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return arr


def _decode(img: Image.Image, data: bytes, fmt: str, need: tuple[int, int], fast: bool) -> Image.Image:
    """Decoded first frame, possibly DCT-scaled but never below ``need`` (source coordinates)."""
    if fmt == "jpeg":
        if _fast_jpeg(img, fmt, fast):
            return Image.fromarray(_decode_sj(img, data, need))
        if need[0] < img.size[0] or need[1] < img.size[1]:
            img.draft(img.mode if img.mode in ("RGB", "L", "CMYK") else None, need)
    try:
        img.load()
    except OSError as e:
        raise Reject("decode_error", f"{fmt}: {e}") from None
    return img


def _cv_orient(cv, a: np.ndarray, orientation: int) -> np.ndarray:
    """EXIF orientation on an array, the same pixels as Pillow's ``transpose(_TRANSPOSE[o])``."""
    if orientation == 2:
        return cv.flip(a, 1)
    if orientation == 3:
        return cv.rotate(a, cv.ROTATE_180)
    if orientation == 4:
        return cv.flip(a, 0)
    if orientation == 5:
        return cv.transpose(a)
    if orientation == 6:
        return cv.rotate(a, cv.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv.flip(cv.transpose(a), -1)
    if orientation == 8:
        return cv.rotate(a, cv.ROTATE_90_COUNTERCLOCKWISE)
    return a


def _cv_interp(cv, resample: str) -> int:
    """OpenCV filter for upscaling (downscaling: :func:`_cv_resize`)."""
    return {
        "bicubic": cv.INTER_CUBIC,
        "bilinear": cv.INTER_LINEAR,
        "lanczos": cv.INTER_LANCZOS4,
        "box": cv.INTER_NEAREST,
        "hamming": cv.INTER_LINEAR,
    }[resample]


def _cv_resize(cv, a: np.ndarray, tw: int, th: int, resample: str) -> np.ndarray:
    """Resize an array to ``tw``×``th``. Downscaling by a factor r (the larger of the two axes):

    * r ≤ 1.25: INTER_LINEAR; each output pixel covers at most 1.25 source pixels, bilinear is
      alias-free enough there (after DCT-scaled decoding this is the common case);
    * 1.25 < r ≤ 2: INTER_LINEAR up to twice the target (an upscale, so no pixel is skipped),
      then INTER_AREA by exactly 2 (OpenCV's integer-factor fast path, a 2×2 mean). The result
      is a box filter of width r like INTER_AREA's, at half the cost of its generic
      (non-integer) path, and within ~1 dB of it (bench/results/media.md);
    * r > 2: INTER_AREA.
    """
    sh, sw = a.shape[:2]
    if tw > sw or th > sh:
        return cv.resize(a, (tw, th), interpolation=_cv_interp(cv, resample))
    r = max(sw / tw, sh / th)
    if r <= 1.25:
        return cv.resize(a, (tw, th), interpolation=cv.INTER_LINEAR)
    if r <= 2.0:
        a = cv.resize(a, (2 * tw, 2 * th), interpolation=cv.INTER_LINEAR)
    return cv.resize(a, (tw, th), interpolation=cv.INTER_AREA)


def _pixels_cv(cv, img: Image.Image, data: bytes, fmt: str, need: tuple[int, int], orientation: int, p: rz.Plan, o) -> tuple[bytes, int, int]:
    """The OpenCV path: decode to an array, orient, crop, resize, pad, encode -> (bytes, w, h)."""
    if _fast_jpeg(img, fmt, o.fast_jpeg):
        a = _decode_sj(img, data, need)
    else:  # every other format and mode: Pillow decodes and converts (CMYK, alpha, 16-bit ...)
        px = _decode(img, data, fmt, need, o.fast_jpeg)
        a = np.asarray(px if px.mode == "L" else to_rgb(px, tuple(o.background)))
    a = _cv_orient(cv, a, orientation)
    dh, dw = a.shape[:2]
    if p.box != rz.FULL:  # crop to whole decoded pixels (within half a pixel of Pillow's float box)
        x0 = min(dw - 1, max(0, round(p.box[0] * dw)))
        y0 = min(dh - 1, max(0, round(p.box[1] * dh)))
        x1 = max(x0 + 1, min(dw, round(p.box[2] * dw)))
        y1 = max(y0 + 1, min(dh, round(p.box[3] * dh)))
        a = a[y0:y1, x0:x1]
    sh, sw = a.shape[:2]
    tw, th = p.size
    if (tw, th) != (sw, sh):
        a = _cv_resize(cv, a, tw, th, o.resample)
    if a.ndim == 2:
        a = cv.cvtColor(a, cv.COLOR_GRAY2RGB)
    if p.canvas is not None:
        cw, ch = p.canvas
        canvas = np.empty((ch, cw, 3), np.uint8)
        canvas[:] = tuple(o.background)
        x, y = (cw - tw) // 2, (ch - th) // 2
        canvas[y : y + th, x : x + tw] = a
        a = canvas
    a = np.ascontiguousarray(a)
    h, w = a.shape[:2]
    if o.format == "jpeg" and o.fast_jpeg and _sj is not None:
        # same JPEG as Pillow's default: 4:2:0 chroma, ISLOW DCT, baseline
        return bytes(_sj.encode_jpeg(a, quality=o.quality, colorspace="RGB", colorsubsampling="420", fastdct=False)), w, h
    buf = io.BytesIO()
    im = Image.fromarray(a)
    if o.format == "jpeg":
        im.save(buf, "JPEG", quality=o.quality)
    elif o.format == "webp":
        im.save(buf, "WEBP", quality=o.quality)
    else:
        im.save(buf, "PNG", compress_level=o.png_compress_level)
    return buf.getvalue(), w, h


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
