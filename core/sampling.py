"""Sampling strings, with the LaViDa-O / LLaVA semantics.

* no ``:`` (``all``, ``full``, anything): keep every row;
* ``first:N`` / ``end:N``: the first / last N rows (all rows when N exceeds them);
* ``random:N``: N rows drawn without replacement with the run's seed (N greater than the
  rows is an error naming both numbers); the drawn rows keep their input order;
* ``dup:N``: every row N times, consecutively (N >= 1); copies get distinct keys;
* ``P%`` in place of N: ``ceil(P * rows / 100)`` of the rows after filtering (0 < P <= 100);
* ``hash:F``: keep a row iff a seeded stable hash of its key is below F (0 < F <= 1):
  membership does not change when other rows are added or removed upstream.

Several steps may be chained with commas (``random:50%,dup:2``); they always apply in the
order filters -> first/end/random -> hash -> dup.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_NUM = re.compile(r"^(\d+(?:\.\d+)?)(%?)$")
_INT = re.compile(r"^\d+$")


@dataclass(frozen=True)
class Count:
    value: float
    percent: bool

    def resolve(self, rows: int) -> int:
        if self.percent:
            return math.ceil(self.value * rows / 100)
        return int(self.value)


@dataclass(frozen=True)
class Sampling:
    select: str | None = None  # first | end | random
    count: Count | None = None
    hash_fraction: float | None = None
    dup: int = 1
    text: str = "all"

    @property
    def keeps_all(self) -> bool:
        return self.select is None and self.hash_fraction is None and self.dup == 1

    def selected(self, rows: int) -> int:
        """Rows kept by first/end/random out of ``rows`` (before hash and dup)."""
        if self.select is None:
            return rows
        n = self.count.resolve(rows)
        if self.select == "random" and n > rows:
            raise ValueError(f"sampling {self.text!r} asks for {n} rows but only {rows} remain after filters")
        return min(n, rows)


def parse(text: str | None) -> Sampling:
    """Parse a sampling string; raise ValueError with a clear message when it is invalid."""
    if text is None:
        return Sampling()
    text = str(text).strip()
    if ":" not in text:
        return Sampling(text=text)
    select = count = frac = None
    dup = 1
    for part in (p.strip() for p in text.split(",")):
        if ":" not in part:
            raise ValueError(f"sampling {text!r}: step {part!r} is not of the form kind:N")
        kind, _, arg = part.partition(":")
        kind, arg = kind.strip().lower(), arg.strip()
        if kind in ("first", "end", "random"):
            if select is not None:
                raise ValueError(f"sampling {text!r}: only one of first/end/random may be given")
            m = _NUM.match(arg)
            if not m:
                raise ValueError(f"sampling {text!r}: {arg!r} is not a count (N or P%)")
            val, pct = float(m.group(1)), bool(m.group(2))
            if pct:
                if not 0 < val <= 100:
                    raise ValueError(f"sampling {text!r}: percentage must be in (0, 100], got {arg}")
            elif not _INT.match(m.group(1)):
                raise ValueError(f"sampling {text!r}: count must be a whole number, got {arg}")
            select, count = kind, Count(val, pct)
        elif kind == "dup":
            if not _INT.match(arg) or int(arg) < 1:
                raise ValueError(f"sampling {text!r}: dup needs a whole number >= 1, got {arg!r}")
            dup = int(arg)
        elif kind == "hash":
            try:
                frac = float(arg)
            except ValueError:
                raise ValueError(f"sampling {text!r}: hash needs a fraction in (0, 1], got {arg!r}") from None
            if not 0 < frac <= 1:
                raise ValueError(f"sampling {text!r}: hash needs a fraction in (0, 1], got {arg!r}")
        else:
            raise ValueError(f"sampling {text!r}: unknown kind {kind!r} (first, end, random, dup, hash)")
    return Sampling(select=select, count=count, hash_fraction=frac, dup=dup, text=text)
