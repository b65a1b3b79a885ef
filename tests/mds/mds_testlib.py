"""Helpers shared by the mmprep-mds tests (imported via conftest's sys.path entry)."""

from __future__ import annotations

import gc
import io
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image


def jpeg_bytes(w: int, h: int, seed: int, quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w * h * 3).reshape(h, w, 3) + rng.integers(0, 40, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(base.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_frame(n: int, start: int = 0, latents: bool = False, img: int = 24) -> pl.DataFrame:
    rng = np.random.default_rng(start)
    data = {
        "key": [f"ds-{i:06d}" for i in range(start, start + n)],
        "dataset": ["ds"] * n,
        "image_bytes": [jpeg_bytes(img + i % 5, img, i) for i in range(start, start + n)],
        "width": [300 + i for i in range(start, start + n)],
        "height": [260 + i for i in range(start, start + n)],
        "caption": [f"caption number {i} \u00e9\u4e2d" for i in range(start, start + n)],
    }
    df = pl.DataFrame(data)
    if latents:
        df = df.with_columns(
            pl.Series("caption_latents", rng.standard_normal((n, 77, 1024)).astype(np.float32)),
            pl.Series("latents_256", rng.standard_normal((n, 4, 32, 32)).astype(np.float32)),
            pl.Series("latents_512", rng.standard_normal((n, 4, 64, 64)).astype(np.float32)),
        )
    return df


def commit(staging: Path, root: Path) -> None:
    """What the engine does after write_unit: move each top-level staged entry into root."""
    root.mkdir(parents=True, exist_ok=True)
    for entry in staging.iterdir():
        dest = root / entry.name
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(entry, dest)


def read_all(root: Path) -> list[dict]:
    """Every sample through the real StreamingDataset (local only)."""
    from streaming.base import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    from mmprep_mds.index import release_shared_memory

    ds = StreamingDataset(local=str(root), remote=None, shuffle=False, batch_size=1)
    try:
        return [ds.get_item(i) for i in range(ds.num_samples)]
    finally:
        release_shared_memory(ds)
        del ds
        gc.collect()
