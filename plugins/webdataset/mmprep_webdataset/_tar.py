"""Tar primitives: deterministic member writing, raw member-block copying, key grouping.

Every member this package writes has mtime 0, uid/gid 0, empty uname/gname, mode 0o644
and a POSIX (pax when needed) header made by :mod:`tarfile`, so the same samples always give
the same bytes. An archive ends with the two zero blocks of the tar format, padded to a
multiple of the 10 KiB record like GNU tar and :mod:`tarfile` do.

Repacking copies each member's header and data blocks verbatim (no decode, no re-encode);
:class:`ShardCommitter` overlaps that copy with hashing and fsync.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
from collections import deque
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


def _tarfile_header(name: str, size: int) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = 0
    ti.mode = 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.type = tarfile.REGTYPE
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


# Fast path of ``header``: the block tarfile makes for ("", 0), with the name, size and checksum
# fields patched in. Valid for names tarfile writes as a plain ustar block (ASCII, at most 100
# characters, no NUL) and sizes that fit 11 octal digits; anything else goes through tarfile.
_TEMPLATE = _tarfile_header("x", 0)
_TEMPLATE_SUM = sum(_TEMPLATE) - sum(_TEMPLATE[148:156]) + 8 * 32 - ord("x") - sum(_TEMPLATE[124:136])
_TEMPLATE_HEAD = _TEMPLATE[136:148]  # mtime
_TEMPLATE_TAIL = _TEMPLATE[156:]  # type flag .. end
_TEMPLATE_MID = _TEMPLATE[100:124]  # mode, uid, gid
_FAST_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,100}")
_MAX_FAST_SIZE = 8**11


def header(name: str, size: int) -> bytes:
    """The deterministic header block(s) of a regular file member.

    Byte-identical to :mod:`tarfile`'s PAX_FORMAT header for a member with mtime 0, mode 0o644,
    uid/gid 0 and empty owner names (tested); built without tarfile for the common case.
    """
    if size < _MAX_FAST_SIZE and size >= 0 and _FAST_NAME.fullmatch(name):
        nb = name.encode("ascii")
        sz = b"%011o\0" % size
        chk = _TEMPLATE_SUM + sum(nb) + sum(sz)
        return b"".join(
            (nb, b"\0" * (100 - len(nb)), _TEMPLATE_MID, sz, _TEMPLATE_HEAD, b"%06o\0 " % chk, _TEMPLATE_TAIL)
        )
    return _tarfile_header(name, size)


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
            self.f.write(_ZERO_BLOCK[:pad])
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
        end = end_of_archive(self.pos)
        self.f.write(end)
        self.pos += len(end)


def end_of_archive(pos: int) -> bytes:
    """The zero blocks that end an archive whose members take ``pos`` bytes."""
    end = 2 * BLOCK
    end += (-(pos + end)) % RECORD
    return b"\0" * end


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


# -- shards written at finalize: copy, hash and fsync overlapped ----------------------------------
class ShardCommitter:
    """Writes shards through hidden temp names; hashing and fsync+rename run in background threads.

    The caller copies byte ranges into a :class:`ShardFile` (main thread: read + write system
    calls); the SHA-256 of those bytes is computed on a second thread (``hashlib`` releases the
    GIL) and, once a shard is closed, a third thread fsyncs it (when ``fsync``) and renames it to
    its final name. A shard therefore only becomes visible complete (and, with ``fsync``,
    durable); a crash leaves at most hidden ``.<name>.tmp-<pid>`` files, which the next
    finalize removes. ``results()`` waits for everything and returns each shard's digest in
    order; ``abort()`` waits for the threads and removes the temp files not yet renamed.
    """

    CHUNK = 1 << 22  # bytes per read/write/hash step
    MAX_PENDING = 8  # hash steps queued before the copy waits (bounds memory to ~32 MiB)
    MAX_UNCOMMITTED = 4  # closed shards waiting for fsync + rename before the copy waits (bounds open files)

    def __init__(self, fsync: bool = True):
        from concurrent.futures import ThreadPoolExecutor

        self.fsync = fsync
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="wds-hash")
        self._syncer = ThreadPoolExecutor(1, thread_name_prefix="wds-sync")
        self._pending: deque = deque()
        self._done: list = []  # per shard: future of (digest, future of the rename)
        self._uncommitted: deque = deque()
        self._open: list[ShardFile] = []

    def open(self, path: Path) -> "ShardFile":
        sf = ShardFile(self, Path(path))
        self._open.append(sf)
        return sf

    def _hash(self, h, buf) -> None:
        self._pending.append(self._hasher.submit(h.update, buf))
        while len(self._pending) > self.MAX_PENDING:
            self._pending.popleft().result()

    def _close(self, sf: "ShardFile") -> None:
        def digest():
            d = sf.h.hexdigest()
            return d, self._syncer.submit(self._commit, sf)

        fut = self._hasher.submit(digest)
        self._done.append(fut)
        self._uncommitted.append(fut)
        while len(self._uncommitted) > self.MAX_UNCOMMITTED:
            self._uncommitted.popleft().result()[1].result()

    def _commit(self, sf: "ShardFile") -> None:
        if self.fsync:
            os.fsync(sf.f.fileno())
        sf.f.close()
        os.replace(sf.tmp, sf.path)
        sf.committed = True

    def results(self) -> list[str]:
        out = []
        for fut in self._done:
            d, sync = fut.result()
            sync.result()
            out.append(d)
        self._shutdown()
        return out

    def _shutdown(self) -> None:
        self._hasher.shutdown(wait=True)
        self._syncer.shutdown(wait=True)

    def abort(self) -> None:
        self._shutdown()
        for sf in self._open:
            if not sf.committed:
                if not sf.f.closed:
                    sf.f.close()
                sf.tmp.unlink(missing_ok=True)


class ShardFile:
    """One shard being written by a :class:`ShardCommitter` (see there)."""

    def __init__(self, committer: ShardCommitter, path: Path):
        self.c = committer
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.tmp, "wb", buffering=0)
        self.h = hashlib.sha256()
        self.pos = 0
        self.committed = False

    def write(self, buf: bytes) -> None:
        mv = memoryview(buf)
        while mv:
            n = self.f.write(mv)
            mv = mv[n:]
        self.pos += len(buf)
        self.c._hash(self.h, buf)

    def copy_from(self, fd: int, start: int, end: int) -> None:
        """Append the bytes ``[start, end)`` of the open file ``fd``."""
        pos = start
        while pos < end:
            buf = os.pread(fd, min(self.c.CHUNK, end - pos), pos)
            if not buf:
                raise TarDamage(f"unexpected end of data at byte {pos}")
            self.write(buf)
            pos += len(buf)

    def close(self) -> None:
        """End the archive and hand the shard to the background fsync + rename."""
        self.write(end_of_archive(self.pos))
        self.c._close(self)
