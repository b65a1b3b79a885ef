"""Generate the NeMo example's input: local JPEG files + a parquet of (image_path, caption)."""

import io
import sys
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

out, n = Path(sys.argv[1]), int(sys.argv[2])
img_dir = out / "images"
img_dir.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
rows = []
for i in range(n):
    w, h = int(rng.integers(48, 160)), int(rng.integers(48, 160))
    arr = (rng.random((h // 8, w // 8, 3)) * 255).astype("uint8")
    p = img_dir / f"{i:06d}.jpg"
    if i % 17 == 5:
        p.write_bytes(b"\xff\xd8\xff broken jpeg")  # rejected by the media stage
    else:
        Image.fromarray(arr).resize((w, h)).save(p, "JPEG", quality=85)
    rows.append({"image_path": f"images/{p.name}" if i % 23 != 7 else "images/missing.jpg", "caption": f"a generated picture number {i}"})
pl.DataFrame(rows).write_parquet(out / "images.parquet")
print(f"{n} rows -> {out / 'images.parquet'}")
