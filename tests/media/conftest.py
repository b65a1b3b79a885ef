"""Fixtures of the media tests: generated images (good and bad), nothing committed."""

from __future__ import annotations

import io
import struct
import zlib

import importlib.util

import numpy as np
import pytest
from PIL import Image

#: whether the OpenCV backend can run here; tests of it are skipped (visibly) without cv2
HAS_CV2 = importlib.util.find_spec("cv2") is not None
#: pixel backends every backend-sensitive test runs with
BACKENDS = ["pillow", pytest.param("opencv", marks=pytest.mark.skipif(not HAS_CV2, reason="opencv-python-headless not installed"))]


def photo(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A photo-like RGB array: smooth colour field + mid-frequency detail + sensor noise."""
    r = np.random.default_rng(seed)
    small = r.integers(0, 256, (max(2, h // 48 + 2), max(2, w // 48 + 2), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)).astype(np.float32)
    mid = r.integers(0, 256, (max(2, h // 6 + 1), max(2, w // 6 + 1), 3), dtype=np.uint8)
    mid = np.asarray(Image.fromarray(mid).resize((w, h), Image.Resampling.BILINEAR)).astype(np.float32)
    a = base * 0.75 + mid * 0.25 + r.normal(0, 4, (h, w, 1))
    return np.clip(a, 0, 255).astype(np.uint8)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def jpeg(w: int, h: int, seed: int = 0, quality: int = 90, **kw) -> bytes:
    return encode(Image.fromarray(photo(w, h, seed)), "JPEG", quality=quality, **kw)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(w: int = 20000, h: int = 10000) -> bytes:
    """A ~100-byte PNG whose header declares w×h (2e8) pixels."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit grey
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def psnr(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="session")
def bad_inputs() -> dict[str, bytes]:
    """One sample per bad/odd input of the issue, generated once per session."""
    return make_bad_inputs()


def make_bad_inputs() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    good = jpeg(320, 240, seed=1)
    out["jpeg"] = good
    out["truncated_jpeg"] = good[: len(good) // 2]
    out["html_as_jpg"] = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>gone</body></html>\n"
    out["zero_bytes"] = b""
    cmyk = Image.new("CMYK", (64, 48), (0, 255, 255, 0))  # pure red in CMYK
    out["cmyk_jpeg"] = encode(cmyk, "JPEG", quality=95)
    pal = Image.new("P", (64, 64), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 red, index 1 blue
    pal.paste(1, (0, 0, 32, 64))  # left half index 1, transparent
    out["palette_png_transparent"] = encode(pal, "PNG", transparency=1)
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 1] = 200  # green
    rgba[:, :32, 3] = 0  # left half transparent
    rgba[:, 32:, 3] = 255
    out["rgba_png"] = encode(Image.fromarray(rgba), "PNG")
    g16 = np.full((48, 64), 32768, np.uint16)
    g16[:, 32:] = 65535
    out["png16"] = encode(Image.fromarray(g16), "PNG")
    f32 = np.full((48, 64), 0.5, np.float32)
    f32[:, 32:] = 1.0
    out["float_tiff"] = encode(Image.fromarray(f32), "TIFF")
    # EXIF orientation 6: stored 200x100, red block top-left of the stored pixels
    stored = np.full((100, 200, 3), 255, np.uint8)
    stored[:20, :20] = (255, 0, 0)
    ex = Image.Exif()
    ex[0x0112] = 6
    out["exif6_jpeg"] = encode(Image.fromarray(stored), "JPEG", quality=95, exif=ex.tobytes())
    out["bomb_png"] = png_bomb()
    frames = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    out["animated_gif"] = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out["one_pixel"] = encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG")
    out["strip"] = encode(Image.fromarray(photo(10000, 10, seed=2)), "PNG")
    out["webp"] = encode(Image.fromarray(photo(160, 120, seed=3)), "WEBP", quality=90)
    return out
