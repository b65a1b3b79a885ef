"""Resize policies and aspect-ratio buckets: pure geometry, no pixels.

A :class:`Plan` says what the output is made of, in the coordinates of the *oriented* source
(after EXIF transpose): the region ``box`` (fractions of width/height) resized to ``size``,
then optionally pasted centred on a ``canvas``. The decoder uses the plan to pick a DCT scale
(draft mode) before decoding and then does one ``resize(size, box=...)`` call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FULL = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class Plan:
    size: tuple[int, int]
    box: tuple[float, float, float, float] = FULL
    canvas: tuple[int, int] | None = None
    bucket: int | None = None

    def changes(self, w: int, h: int) -> bool:
        return self.size != (w, h) or self.box != FULL or self.canvas is not None

    def needed_source(self) -> tuple[float, float]:
        """Full-image size (oriented) that still has at least one source pixel per output pixel."""
        fw = self.box[2] - self.box[0]
        fh = self.box[3] - self.box[1]
        return self.size[0] / fw, self.size[1] / fh


def _scaled(w: int, h: int, scale: float, exact_shorter: int | None = None, exact_longer: int | None = None) -> tuple[int, int]:
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if exact_shorter is not None:
        if w <= h:
            nw = exact_shorter
        else:
            nh = exact_shorter
    if exact_longer is not None:
        if w >= h:
            nw = exact_longer
        else:
            nh = exact_longer
    return nw, nh


def nearest_bucket(w: int, h: int, buckets: list[tuple[int, int]]) -> int:
    """Index of the bucket whose aspect ratio is nearest (in log space) to w/h; ties: first."""
    ar = math.log(w / h)
    best, best_d = 0, math.inf
    for i, (bw, bh) in enumerate(buckets):
        d = abs(math.log(bw / bh) - ar)
        if d < best_d - 1e-12:
            best, best_d = i, d
    return best


def _cover_crop(w: int, h: int, tw: int, th: int) -> tuple[float, float, float, float]:
    """Centred region of a w×h image with the aspect ratio of tw×th (fractions)."""
    if w * th > tw * h:  # source is wider: crop the sides
        fw = (tw * h / th) / w
        x0 = (1 - fw) / 2
        return (x0, 0.0, x0 + fw, 1.0)
    fh = (th * w / tw) / h
    y0 = (1 - fh) / 2
    return (0.0, y0, 1.0, y0 + fh)


def plan(w: int, h: int, policy: str, size: int, upscale: bool = False, buckets: list[tuple[int, int]] | None = None) -> Plan:
    """The output plan for an oriented ``w``×``h`` source under ``policy``."""
    if policy == "none":
        return Plan((w, h))
    if policy == "downscale-shorter":
        m = min(w, h)
        if m > size or (upscale and m < size):
            return Plan(_scaled(w, h, size / m, exact_shorter=size))
        return Plan((w, h))
    if policy == "keep-ratio-largest":
        m = max(w, h)
        if m > size or (upscale and m < size):
            return Plan(_scaled(w, h, size / m, exact_longer=size))
        return Plan((w, h))
    if policy == "center-crop":
        if w == h == size:
            return Plan((w, h))
        return Plan((size, size), _cover_crop(w, h, 1, 1))
    if policy == "pad":
        m = max(w, h)
        inner = _scaled(w, h, size / m, exact_longer=size) if m != size else (w, h)
        return Plan(inner, FULL, None if inner == (size, size) else (size, size))
    if policy == "bucket":
        if not buckets:
            raise ValueError("resize: bucket needs a bucket list")
        i = nearest_bucket(w, h, buckets)
        bw, bh = buckets[i]
        if (w, h) == (bw, bh):
            return Plan((w, h), bucket=i)
        box = _cover_crop(w, h, bw, bh)
        return Plan((bw, bh), box, bucket=i)
    raise ValueError(f"unknown resize policy {policy!r}")
