"""Tiny models built from configs, saved with save_pretrained, loaded by path (no hub)."""

from __future__ import annotations

import io
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import polars as pl
import pytest

# the tiny models the examples use too: one builder, shipped with the plugin
from mmprep_encoders.tiny import CORPUS, make_clip, make_lm, make_t5, make_vae  # noqa: E402,F401


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    return {"vae": make_vae(root), "clip": make_clip(root), "t5": make_t5(root), "lm": make_lm(root), "root": root}


def jpeg(w, h, seed=0, fmt="JPEG"):
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) * 3) % 256], -1)
    img = np.clip(base + rng.integers(-30, 30, size=(h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, quality=92)
    return buf.getvalue()


SIZES = [(64, 64), (80, 64), (64, 96), (100, 70), (72, 72), (128, 64), (64, 66), (90, 90)]


@pytest.fixture(scope="session")
def image_frame():
    rows = [
        {"key": f"img-{i:03d}", "dataset": "d", "image_bytes": jpeg(w, h, i), "width": w, "height": h,
         "caption": CORPUS[i % len(CORPUS)]}
        for i, (w, h) in enumerate(SIZES)
    ]
    return pl.DataFrame(rows, schema={"key": pl.String, "dataset": pl.String, "image_bytes": pl.Binary,
                                      "width": pl.Int64, "height": pl.Int64, "caption": pl.String})
