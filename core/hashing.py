"""Stable, vectorised 64-bit hashing of string columns.

polars' own ``hash`` is not stable across versions, so keys, hash sampling and per-key
random draws use this one: a polynomial hash over the UTF-8 bytes (mod 2**64) finished
with the splitmix64 mixer, computed with numpy over Arrow buffers (no Python loop per row).
The same string and seed give the same value on every machine and every version.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

_P = np.uint64(0x100000001B3)  # FNV prime, odd: a good polynomial base mod 2**64
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (golden-ratio increment, then mix) applied elementwise to uint64."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def hash_strings(values: pl.Series | list[str], seed: int = 0) -> np.ndarray:
    """uint64 hash of each string (nulls hash as the empty string)."""
    s = values if isinstance(values, pl.Series) else pl.Series(values, dtype=pl.String)
    arr = s.cast(pl.String).fill_null("").to_arrow()
    arr = pa.concat_arrays(arr.chunks) if isinstance(arr, pa.ChunkedArray) else arr
    arr = arr.cast(pa.large_string())
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64, count=n + 1, offset=arr.offset * 8)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    start, end = offsets[:-1], offsets[1:]
    lengths = (end - start).astype(np.int64)
    total = int(lengths.sum())
    h = np.full(n, np.uint64(seed) * np.uint64(2) + np.uint64(1), dtype=np.uint64)
    if total:
        base = int(start[0])
        idx = np.arange(base, int(end[-1]), dtype=np.int64)
        owner = np.repeat(np.arange(n), lengths)
        byte_vals = data[idx].astype(np.uint64) + np.uint64(1)
        pos_from_end = end[owner] - 1 - idx  # weight P**pos for the byte's position from the end
        maxlen = int(lengths.max())
        powers = np.empty(maxlen, dtype=np.uint64)
        sums = np.zeros(n, dtype=np.uint64)
        nonempty = lengths > 0
        with np.errstate(over="ignore"):
            powers[0] = 1
            for i in range(1, maxlen):  # loop over the longest string's length, not rows
                powers[i] = powers[i - 1] * _P
            contrib = byte_vals * powers[pos_from_end]
            sums[nonempty] = np.add.reduceat(contrib, (start[nonempty] - base).astype(np.int64))
            h = h * _P + sums + lengths.astype(np.uint64)
    return splitmix64(h)


def unit_floats(values: pl.Series | list[str], seed: int = 0) -> np.ndarray:
    """Uniform floats in [0, 1) derived from the stable hash (53 high bits)."""
    return (hash_strings(values, seed) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
