"""Byte-level scans of string columns (numpy over the Arrow buffers), shared by the payload
encoder and the validator: one pass finds the few rows that need the slow paths (JSON
escaping, token counting, the whitespace test), so the common rows skip them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa


def string_bytes(s: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, data)`` of a string series' UTF-8 bytes: row ``i`` is
    ``data[offsets[i]:offsets[i + 1]]`` (offsets int64, from 0; a null row is empty)."""
    n = s.len()
    if s.null_count():
        s = s.fill_null("")
    arr = s.to_arrow()
    arr = pa.concat_arrays(arr.chunks) if isinstance(arr, pa.ChunkedArray) else arr
    arr = arr.cast(pa.large_string())
    bufs = arr.buffers()
    if n == 0 or bufs[2] is None:
        return np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.uint8)
    off = np.frombuffer(bufs[1], dtype=np.int64, count=n + 1, offset=arr.offset * 8)
    return off - off[0], np.frombuffer(bufs[2], dtype=np.uint8)[off[0] : off[-1]]


@dataclass
class Scan:
    """Row masks of a string series (no nulls). Each mask may flag more rows than needed,
    never fewer: the flagged rows go through the exact (slower) code."""

    #: may hold a byte JSON escapes (control character, '"', '\\')
    escape: np.ndarray
    #: may hold '<' (an image token)
    tokens: np.ndarray
    #: may be empty after stripping white space (empty, or not starting with a printable ASCII character)
    blank: np.ndarray


def scan(s: pl.Series) -> Scan:
    """Scan a string series without nulls."""
    n = s.len()
    special = s.str.contains_any(['"', "\\", "<"]).fill_null(False).to_numpy().copy()
    off, data = string_bytes(s)
    control = np.zeros(n, dtype=bool)
    starts, lengths = off[:-1], np.diff(off)
    nonempty = np.flatnonzero(lengths)
    blank = np.ones(n, dtype=bool)
    if len(nonempty):
        first = data[starts[nonempty]]
        blank[nonempty] = (first < 0x21) | (first > 0x7E)
        if len(data) >= 32 * n:  # long strings: the lowest byte of each row
            control[nonempty[np.minimum.reduceat(data, starts[nonempty].astype(np.intp)) < 0x20]] = True
        else:
            hits = np.flatnonzero(data < 0x20)
            if len(hits):
                control[np.searchsorted(off[1:], hits, side="right")] = True
    return Scan(escape=special | control, tokens=special, blank=blank)
