"""Tar primitives: deterministic member writing, raw member-block copying, key grouping.

Every member this package writes has mtime 0, uid/gid 0, empty uname/gname, mode 0o644
and a POSIX (pax when needed) header made by :mod:`tarfile`, so the same samples always give
the same bytes. An archive ends with the two zero blocks of the tar format, padded to a
multiple of the 10 KiB record like GNU tar and :mod:`tarfile` do.

Repacking copies each member's header and data blocks verbatim (no decode, no re-encode).
"""

from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 10240
_ZERO_BLOCK = b"\0" * BLOCK

#: webdataset's split of a member name into (key, extension): the key is everything up to
#: the first dot of the basename (directory prefix included).
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
_KEY_SAFE = re.compile(r"[^A-Za-z0-9_-]")


def split_name(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member name as webdataset splits it; None when it has no dot."""
    m = _KEY_EXT.match(name)
    if not m:
        return None
    return m.group(1), m.group(2)


def safe_key(key: str) -> str:
    """A key usable as a member stem: characters outside [A-Za-z0-9_-] become '_'."""
    s = _KEY_SAFE.sub("_", str(key))
    if not s:
        raise ValueError(f"empty key {key!r}")
    return s


def header(name: str, size: int) -> bytes:
    """The deterministic header block(s) of a regular file member."""
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = 0
    ti.mode = 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.type = tarfile.REGTYPE
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def padding(size: int) -> int:
    return (-size) % BLOCK


class TarBuilder:
    """Append members to an open binary file; ``close()`` writes the end-of-archive blocks."""

    def __init__(self, fileobj: BinaryIO):
        self.f = fileobj
        self.pos = 0
        self.members = 0

    def add(self, name: str, data: bytes | bytearray | memoryview) -> int:
        """Write one member; return the bytes it took."""
        h = header(name, len(data))
        pad = padding(len(data))
        self.f.write(h)
        self.f.write(data)
        if pad:
            self.f.write(b"\0" * pad)
        n = len(h) + len(data) + pad
        self.pos += n
        self.members += 1
        return n

    def add_raw(self, blob: bytes | memoryview, members: int = 1) -> None:
        """Append already-encoded member blocks (header + data + padding) verbatim."""
        self.f.write(blob)
        self.pos += len(blob)
        self.members += members

    def close(self) -> None:
        end = 2 * BLOCK
        end += (-(self.pos + end)) % RECORD
        self.f.write(b"\0" * end)
        self.pos += end


@dataclass
class RawSample:
    """One sample of an existing tar: its key and its members' byte ranges."""

    key: str
    members: list[tuple[str, int, int]] = field(default_factory=list)  # (name, start, end)

    @property
    def start(self) -> int:
        return self.members[0][1]

    @property
    def end(self) -> int:
        return self.members[-1][2]

    def contiguous(self) -> bool:
        return all(self.members[i][2] == self.members[i + 1][1] for i in range(len(self.members) - 1))


class TarDamage(Exception):
    """The archive is truncated or corrupt after the samples already returned."""


def scan_samples(fileobj: BinaryIO, name: str = "<tar>") -> tuple[list[RawSample], str | None]:
    """Group an archive's regular members by key (consecutive, webdataset's rule).

    Returns the complete samples and, when the archive is damaged, a message (the sample in
    progress at the damage is not returned). Only headers are read; data is skipped.
    """
    samples: list[RawSample] = []
    cur: RawSample | None = None
    damage: str | None = None
    try:
        tf = tarfile.open(fileobj=fileobj, mode="r:")
    except (tarfile.TarError, OSError, EOFError) as e:
        return [], f"{name}: not a readable tar ({type(e).__name__}: {e})"
    try:
        while True:
            ti = tf.next()
            if ti is None:
                break
            if not ti.isfile():
                continue
            kx = split_name(ti.name)
            if kx is None:
                continue
            end = ti.offset_data + ti.size + padding(ti.size)
            if cur is None or cur.key != kx[0]:
                if cur is not None:
                    samples.append(cur)
                cur = RawSample(kx[0])
            cur.members.append((ti.name, ti.offset, end))
        damage = check_end(fileobj, tf.offset, name)
    except (tarfile.TarError, OSError, EOFError) as e:
        damage = f"{name}: damaged after {len(samples)} samples ({type(e).__name__}: {e})"
    if cur is not None and damage is None:
        samples.append(cur)
    return samples, damage


def check_end(fileobj: BinaryIO, offset: int, name: str) -> str | None:
    """None when a zero (end-of-archive) block follows ``offset``, else why not.

    :mod:`tarfile` silently stops at a truncated or missing header; this tells a complete
    archive from one cut at a member boundary.
    """
    fileobj.seek(offset)
    blk = fileobj.read(BLOCK)
    if len(blk) == BLOCK and blk == _ZERO_BLOCK:
        return None
    if not blk:
        return f"{name}: truncated (no end-of-archive marker at byte {offset})"
    return f"{name}: corrupt or truncated header at byte {offset}"


def copy_range(src: BinaryIO, dst: TarBuilder, start: int, end: int, members: int, chunk: int = 1 << 22) -> None:
    src.seek(start)
    left = end - start
    while left > 0:
        buf = src.read(min(chunk, left))
        if not buf:
            raise TarDamage(f"unexpected end of data at byte {end - left}")
        dst.add_raw(buf, members=0)
        left -= len(buf)
    dst.members += members


def atomic_tar(path: Path) -> "AtomicFile":
    return AtomicFile(path)


class AtomicFile:
    """Write ``path`` through a hidden temp name in the same directory; rename on success."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.f: BinaryIO | None = None

    def __enter__(self) -> BinaryIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.tmp, "wb", buffering=1 << 20)
        return self.f

    def __exit__(self, et, ev, tb) -> None:
        assert self.f is not None
        if et is None:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            os.replace(self.tmp, self.path)
        else:
            self.f.close()
            self.tmp.unlink(missing_ok=True)


def iter_member_data(fileobj: BinaryIO, name: str = "<tar>") -> Iterator[tuple[str, bytes]]:
    """Yield (member name, data) of regular files; raise TarDamage on damage."""
    try:
        tf = tarfile.open(fileobj=fileobj, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise TarDamage(f"{name}: not a readable tar ({type(e).__name__}: {e})") from None
    try:
        while True:
            ti = tf.next()
            if ti is None:
                break
            if not ti.isfile():
                continue
            fh = tf.extractfile(ti)
            data = fh.read() if fh is not None else b""
            yield ti.name, data
    except (tarfile.TarError, OSError, EOFError) as e:
        raise TarDamage(f"{name}: {type(e).__name__}: {e}") from None
    if tf.fileobj is fileobj and fileobj.seekable():
        msg = check_end(fileobj, tf.offset, name)
        if msg:
            raise TarDamage(msg)
