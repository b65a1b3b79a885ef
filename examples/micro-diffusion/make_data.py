"""Generate the example's input: JPEG images of various sizes (some < 256 px) + captions.

Writes DIR/images/*.jpg and DIR/images.parquet (image_path relative to DIR, caption).
Usage: python make_data.py DIR [--count N]
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

SUBJECTS = ["a red fox", "a lighthouse", "a bowl of ramen", "a mountain lake", "an old tram", "a robot", "a tulip field"]
STYLES = ["at sunset", "in the snow", "watercolor", "studio photo", "seen from above", "at night"]


def image(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    c = rng.uniform(0.5, 3.0, 3)
    rgb = np.stack([np.sin(xx / w * c[0] * 6 + seed) * 127 + 128, np.cos(yy / h * c[1] * 6) * 127 + 128,
                    ((xx + yy) / (w + h) * 255 * c[2]) % 256], axis=-1)
    rgb += rng.normal(0, 6, rgb.shape)
    buf = io.BytesIO()
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--count", type=int, default=48)
    a = ap.parse_args()
    root = Path(a.dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sizes = [(200, 300), (255, 400), (256, 256), (320, 240), (640, 480), (900, 700), (512, 512), (1024, 600)]
    paths, caps = [], []
    for i in range(a.count):
        w, h = sizes[i % len(sizes)] if i < len(sizes) else (int(rng.integers(180, 1100)), int(rng.integers(180, 1100)))
        rel = f"images/{i:05d}.jpg"
        (root / rel).write_bytes(image(w, h, i))
        paths.append(rel)
        caps.append(f"{SUBJECTS[i % len(SUBJECTS)]} {STYLES[(i // len(SUBJECTS)) % len(STYLES)]}")
    pl.DataFrame({"image_path": paths, "caption": caps}).write_parquet(root / "images.parquet")
    print(f"wrote {a.count} images under {root}")


if __name__ == "__main__":
    main()
