from __future__ import annotations

import numpy as np
import polars as pl
import pytest


def make_table(n: int = 1000, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "url": [f"https://example.com/img/{i}.jpg" for i in range(n)],
            "caption": [None if i % 17 == 0 else f"caption number {i}" for i in range(n)],
            "aesthetic": rng.uniform(3, 8, n).astype(np.float32),
            "width": rng.integers(100, 2000, n).astype(np.int32),
            "height": rng.integers(100, 2000, n).astype(np.int32),
        }
    )


@pytest.fixture
def table(tmp_path):
    df = make_table()
    path = tmp_path / "data.parquet"
    df.write_parquet(path)
    return df, path


def base_doc(path, **over):
    doc = {
        "datasets": [{"name": "laion", "source": {"type": "parquet", "path": str(path), "rename": {"url": "image_path"}}}],
        "write": [{"type": "parquet", "path": "pq"}],
        "run": {"samples_per_unit": 100},
    }
    for k, v in over.items():
        doc[k] = v
    return doc
