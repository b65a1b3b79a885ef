"""Writing one MDS dataset directory from whole pre-encoded columns, byte-identical to
``streaming.base.MDSWriter`` without importing ``streaming``.

Why not ``MDSWriter`` itself: ``import streaming`` imports torch and torchvision (5-8 s in
every fresh worker process, more than writing 20,000 samples takes), and its per-sample
``write`` builds each sample's bytes, then each shard's bytes, then a second copy of the
shard with its header: four copies of every byte before the file write. Here a shard goes
to its file with ``writev`` straight from the column buffers (one copy), hashes are
computed on the way, and nothing is read back.

What is reproduced exactly (``tests/mds/test_writer.py`` compares files byte for byte with
a plain ``MDSWriter`` loop, with size limits, hashes, compression and the empty first shard):

* the shard config (``version``, ``format``, ``compression``, ``hashes``, ``size_limit``,
  ``column_names`` sorted, ``column_encodings``, ``column_sizes``) as sorted-key JSON;
* the shard cut rule of ``Writer.write`` (``size_limit < shard bytes + sample bytes + 4``,
  shard bytes starting at ``8 + len(config)``) -- including the empty shard ``MDSWriter``
  writes when the very first sample exceeds the limit;
* ``encode_joint_shard``: ``uint32 n | uint32 offsets[n + 1] | config | samples``, each
  sample ``uint32 sizes of the variable-size columns | column bytes``;
* ``_process_file`` (raw hashes, compressed file + its hashes) and ``index.json``
  (``{"version": 2, "shards": [...]}``, ``sort_keys``).

Compression (rare for image/latent data) uses ``streaming``'s own codecs, so only that path
imports it.
"""

from __future__ import annotations

import json
import os
from itertools import chain
from pathlib import Path

import numpy as np

from . import encoding as E

#: Linux ``IOV_MAX``: the most buffers one ``writev`` call accepts.
IOV_MAX = 1024


def write_buffers(fd: int, bufs: list, hashers: list) -> int:
    """Write ``bufs`` back to back to ``fd`` with ``os.writev`` (one copy, into the file),
    feeding each buffer to every hasher on the way. Returns the number of bytes written."""
    total = 0
    for start in range(0, len(bufs), IOV_MAX):
        chunk = bufs[start:start + IOV_MAX]
        for h in hashers:
            for b in chunk:
                h.update(b)
        want = sum(map(len, chunk))
        got = os.writev(fd, chunk)
        if got < want:  # a short write (signals, odd file systems): finish this chunk piece by piece
            skip = got
            for b in chunk:
                ln = len(b)
                if skip >= ln:
                    skip -= ln
                    continue
                mv = memoryview(b).cast("B")[skip:]
                skip = 0
                while mv:
                    mv = mv[os.write(fd, mv):]
        total += want
    return total


def new_hasher(algo: str):
    """The hash object ``streaming.base.hashing.get_hash(algo, data)`` uses, fed incrementally."""
    import hashlib

    if algo in E.HASHES and hasattr(hashlib, algo):
        return getattr(hashlib, algo)()
    if algo in E.HASHES:
        import xxhash

        return getattr(xxhash, algo)()
    raise ValueError(f"unknown hash {algo!r}")


class UnitShardWriter:
    """One MDS directory (shards + index.json), written column-wise; see the module doc."""

    format = "mds"
    extra_bytes_per_sample = 4  # the sample's offset entry

    def __init__(self, out: str | Path, columns: dict[str, str], compression: str | None = None,
                 hashes: list[str] | None = None, size_limit: int | None = None):
        self.local = str(out)
        self.compression = compression or None
        self.hashes = list(hashes or [])
        if self.hashes != sorted(self.hashes):
            raise ValueError("Hashes must be unique and in sorted order.")
        self.size_limit = size_limit or None
        self.column_names = sorted(columns)
        self.column_encodings = [columns[c] for c in self.column_names]
        self.column_sizes = [E.encoded_size(e) for e in self.column_encodings]
        self.config_data = json.dumps(self.get_config(), sort_keys=True).encode("utf-8")
        self.extra_bytes_per_shard = 4 + 4 + len(self.config_data)
        self.shards: list[dict] = []
        os.makedirs(self.local, exist_ok=True)

    def get_config(self) -> dict:
        return {
            "version": 2,
            "format": self.format,
            "compression": self.compression,
            "hashes": self.hashes,
            "size_limit": self.size_limit,
            "column_names": self.column_names,
            "column_encodings": self.column_encodings,
            "column_sizes": self.column_sizes,
        }

    def _name_next_shard(self) -> tuple[str, str | None]:
        raw = f"shard.{len(self.shards):05}.{self.format}"
        if not self.compression:
            return raw, None
        from streaming.base.compression import get_compression_extension

        return raw, f"{raw}.{get_compression_extension(self.compression)}"

    def write_columns(self, encoded: list[list]) -> None:
        """Write every sample: ``encoded[i][j]`` = bytes of column ``column_names[i]``, row j."""
        n = len(encoded[0]) if encoded else 0
        if not n:
            return
        sizes = np.zeros(n, np.int64)
        var_lens = []
        for col, name, size in zip(encoded, self.column_names, self.column_sizes):
            lens = np.fromiter(map(len, col), np.int64, n)
            if size is None:
                var_lens.append(lens)
            elif (lens != size).any():
                raise KeyError(f"Unexpected data size in column {name!r}: was this data typed with the correct encoding?")
            sizes += lens
        cols = list(encoded)
        if var_lens:
            heads = np.stack(var_lens, axis=1)
            if heads.max() >= 2**32:
                raise ValueError("an MDS value is 4 GiB or larger (sizes are stored as uint32)")
            cols.insert(0, E._split(heads.astype("<u4").tobytes(), n, 4 * len(var_lens)))
            sizes += 4 * len(var_lens)
        # Shard boundaries: MDSWriter.write's rule, sample by sample.
        limit, extra = self.size_limit, self.extra_bytes_per_sample
        cur, start = self.extra_bytes_per_shard, 0
        for i, s in enumerate(sizes.tolist()):
            s += extra
            if limit and limit < cur + s:
                self._flush_rows(cols, sizes, start, i)
                cur, start = self.extra_bytes_per_shard, i
            cur += s
        self._flush_rows(cols, sizes, start, n)

    def _flush_rows(self, cols: list[list], sizes: np.ndarray, a: int, b: int) -> None:
        raw_name, zip_name = self._name_next_shard()
        k = b - a
        offsets = np.zeros(k + 1, np.int64)
        np.cumsum(sizes[a:b], out=offsets[1:])
        offsets += 4 + 4 * (k + 1) + len(self.config_data)
        bufs: list = [np.uint32(k).tobytes() + offsets.astype(np.uint32).tobytes() + self.config_data]
        bufs += chain.from_iterable(zip(*[c[a:b] for c in cols]))
        if self.compression:
            from streaming.base.compression import compress

            raw = b"".join(bufs)
            raw_info = self._file_info(raw_name, [raw])
            data = compress(self.compression, raw)
            zip_info = self._file_info(zip_name, [data])
            with open(os.path.join(self.local, zip_name), "wb") as fh:
                fh.write(data)
        else:
            hashers = [new_hasher(algo) for algo in self.hashes]
            fd = os.open(os.path.join(self.local, raw_name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            try:
                nbytes = write_buffers(fd, bufs, hashers)
            finally:
                os.close(fd)
            raw_info = {"basename": raw_name, "bytes": nbytes,
                        "hashes": {algo: h.hexdigest() for algo, h in zip(self.hashes, hashers)}}
            zip_info = None
        obj = {"samples": k, "raw_data": raw_info, "zip_data": zip_info}
        obj.update(self.get_config())
        self.shards.append(obj)

    def _file_info(self, basename: str, bufs: list) -> dict:
        hashes = {}
        for algo in self.hashes:
            h = new_hasher(algo)
            for b in bufs:
                h.update(b)
            hashes[algo] = h.hexdigest()
        return {"basename": basename, "bytes": sum(map(len, bufs)), "hashes": hashes}

    def finish(self) -> dict:
        """Write ``index.json`` (after every shard; MDSWriter's ``_write_index``); return it."""
        index = {"version": 2, "shards": self.shards}
        with open(os.path.join(self.local, "index.json"), "w") as fh:
            json.dump(index, fh, sort_keys=True)
        return index
