"""Generate a few photo-like images (mixed formats, one EXIF-rotated, one broken, one missing)
and the parquet table that points at them. Usage: make_data.py DIR"""

import io
import sys
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image


def photo(w, h, seed):
    r = np.random.default_rng(seed)
    small = r.integers(0, 256, (h // 48 + 2, w // 48 + 2, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    return Image.fromarray(np.clip(base + r.normal(0, 4, (h, w, 1)), 0, 255).astype(np.uint8))


out = Path(sys.argv[1])
(out / "images").mkdir(parents=True, exist_ok=True)
rows = []
for i, (w, h, fmt) in enumerate([(1024, 768, "JPEG"), (640, 960, "JPEG"), (800, 600, "PNG"), (700, 500, "WEBP"), (300, 200, "JPEG")]):
    name = f"images/img{i}.{fmt.lower().replace('jpeg', 'jpg')}"
    photo(w, h, i).save(out / name, fmt, quality=90)
    rows.append((name, f"generated photo {i}, {w}x{h}"))
ex = Image.Exif()
ex[0x0112] = 6  # camera held sideways
photo(900, 600, 9).save(out / "images/rotated.jpg", "JPEG", quality=90, exif=ex.tobytes())
rows.append(("images/rotated.jpg", "rotated photo"))
good = (out / "images/img0.jpg").read_bytes()
(out / "images/broken.jpg").write_bytes(good[: len(good) // 3])  # truncated download
rows.append(("images/broken.jpg", "a truncated file"))
(out / "images/page.jpg").write_bytes(b"<!DOCTYPE html><html><body>not an image</body></html>")
rows.append(("images/page.jpg", "an HTML page saved as .jpg"))
rows.append(("images/missing.jpg", "a file that does not exist"))
pl.DataFrame({"file": [r[0] for r in rows], "text": [r[1] for r in rows]}).write_parquet(out / "table.parquet")
print(f"{len(rows)} rows -> {out / 'table.parquet'}")
