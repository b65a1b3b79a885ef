"""Generate a small LAION-style table (captions, sizes, scores) for the quickstart."""

import sys

import numpy as np
import polars as pl

out = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
rng = np.random.default_rng(0)
subjects = ["a cat", "two dogs", "a red car", "a mountain lake", "an old bridge", "a bowl of fruit", "a city at night"]
styles = ["photo of", "painting of", "sketch of", "close-up of"]
caps = [f"{styles[i % 4]} {subjects[i % 7]}  " if i % 50 else None for i in range(n)]
pl.DataFrame(
    {
        "URL": [f"https://images.example.org/{i:07d}.jpg" for i in range(n)],
        "TEXT": caps,
        "WIDTH": rng.integers(200, 3000, n).astype(np.int32),
        "HEIGHT": rng.integers(200, 3000, n).astype(np.int32),
        "aesthetic": rng.normal(5.5, 0.8, n).astype(np.float32),
    }
).write_parquet(out)
print(f"wrote {n} rows to {out}")
