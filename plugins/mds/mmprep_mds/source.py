"""The ``mds`` source: an existing MDS dataset (local directory or remote URL) as input rows.

Partitions are the shards listed in ``index.json`` (or groups of ``shards_per_partition``
shards), one work unit each. Shards are read as raw MDS files (compressed ones are
decompressed with streaming's own codecs): image columns (``jpeg``/``png``) come back as the
exact stored bytes, other columns are decoded with streaming's ``mds_decode``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import Field, field_validator

from mmprep import Options, Partition, PartitionData, Source
from mmprep.errors import ConfigError

from .index import INDEX, parse_shard, shard_file

#: MDS column -> shared vocabulary (applied when the target is not already a column).
DEFAULT_RENAME = {"jpg": "image_bytes", "jpeg": "image_bytes", "png": "image_bytes", "image": "image_bytes"}
_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


class MdsSourceOptions(Options):
    """Options of the ``mds`` source."""

    path: str = Field(description="MDS dataset root (holding index.json): a local dir or any fsspec URL (s3://, gs://, ...)")
    cache_dir: str | None = Field(
        default=None, description="Local directory remote index/shards are downloaded into (required for remote paths)"
    )
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for a remote path")
    split: str | None = Field(default=None, description="Sub-directory of path holding the index (streaming's split)")
    columns: list[str] | None = Field(default=None, description="MDS columns to read (default all)")
    rename: dict[str, str] | None = Field(
        default=None,
        description="MDS column -> row column; default maps jpg/jpeg/png/image -> image_bytes, others unchanged",
    )
    key_column: str | None = Field(
        default="key",
        description="MDS column holding the stable key (used when present); else '<dataset>-<shard>-<index in shard>'",
    )
    shards_per_partition: int = Field(default=1, ge=1, description="Shards per work unit")

    @field_validator("path")
    @classmethod
    def _nonempty(cls, v):
        if not v:
            raise ValueError("must name the dataset directory")
        return v


def _is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _strip_file(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def _slug(s: str) -> str:
    return _SAFE.sub("_", s).strip("_")


class MdsSource(Source):
    """Read an existing MosaicML MDS dataset (local or remote) as rows, one unit per shard group."""

    name = "mds"
    Options = MdsSourceOptions

    # -- locations ------------------------------------------------------------------
    def _root(self) -> str:
        o = self.options
        root = o.path if _is_remote(o.path) else self.context.resolve(_strip_file(o.path))
        if o.split:
            root = root.rstrip("/") + "/" + o.split.strip("/")
        return root

    def _cache(self) -> Path | None:
        o = self.options
        if not o.cache_dir:
            return None
        c = Path(self.context.resolve(o.cache_dir))
        if o.split:
            c = c / o.split.strip("/")
        return c

    def _fetch(self, rel: str, expected_size: int | None = None) -> bytes:
        """Bytes of ``root/rel``: local read, or download into the cache (reused when complete)."""
        root = self._root()
        if not _is_remote(root):
            return Path(root, rel).read_bytes()
        cache = self._cache()
        if cache is None:
            raise ConfigError(f"source.cache_dir: required to read the remote MDS dataset {root}")
        local = cache / rel
        if local.exists() and (expected_size is None or local.stat().st_size == expected_size):
            return local.read_bytes()
        from mmprep.storage import open_url

        with open_url(root.rstrip("/") + "/" + rel, self.options.storage_options) as fh:
            data = fh.read()
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".dl.", dir=local.parent)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, local)
        return data

    def index(self) -> dict[str, Any]:
        try:
            return json.loads(self._fetch(INDEX) if _is_remote(self._root()) else Path(self._root(), INDEX).read_bytes())
        except FileNotFoundError:
            raise ConfigError(f"source.path: no {INDEX} under {self._root()} (not an MDS dataset?)") from None

    def fingerprint(self) -> dict[str, Any]:
        idx = self.index()
        return {"index": {shard_file(s)["basename"]: shard_file(s)["bytes"] for s in idx["shards"]}}

    # -- partitions -----------------------------------------------------------------
    def partitions(self) -> list[Partition]:
        from streaming.base.util import clean_stale_shared_memory

        # A reader killed earlier may have left shared memory behind; clean it before reading.
        clean_stale_shared_memory()
        shards = self.index()["shards"]
        k = self.options.shards_per_partition
        parts = []
        for i in range(0, len(shards), k):
            group = shards[i:i + k]
            first = _slug(shard_file(group[0])["basename"].rsplit(".mds", 1)[0])
            pid = first if k == 1 else f"{first}-x{len(group)}"
            parts.append(Partition(pid, {"shards": group, "first": i}, sum(int(s["samples"]) for s in group)))
        return parts

    def read_partition(self, partition: Partition) -> PartitionData:
        columns_out: dict[str, list] = {}
        keys: list[str] = []
        rejected: dict[str, int] = {}
        examples: dict[str, list[dict]] = {}
        encodings: dict[str, str] = {}
        prefix = f"{_slug(self.context.dataset)}-" if self.context.dataset else ""
        for sh in partition.info["shards"]:
            stem = _slug(sh["raw_data"]["basename"].rsplit(".mds", 1)[0])
            wanted = [(name, enc) for name, enc in zip(sh["column_names"], sh["column_encodings"])
                      if self.options.columns is None or name in self.options.columns or name == self.options.key_column]
            for name, enc in wanted:  # the schema is known even when every row is lost
                encodings.setdefault(name, enc)
                columns_out.setdefault(name, [])
            try:
                data = self._shard_bytes(sh)
                n, raw = parse_shard(data, sh["column_names"], sh["column_encodings"], sh["column_sizes"])
                if n != sh["samples"]:
                    raise ValueError(f"holds {n} samples, the index says {sh['samples']}")
            except Exception as e:
                reason = "mds:unreadable-shard"
                rejected[reason] = rejected.get(reason, 0) + int(sh["samples"])
                examples.setdefault(reason, []).append(
                    {"key": stem, "message": f"{shard_file(sh)['basename']}: {type(e).__name__}: {e}"})
                continue
            for name, enc, vals in zip(sh["column_names"], sh["column_encodings"], raw):
                if name in columns_out:
                    columns_out[name].extend(_decode(enc, vals))
            keys.extend(f"{prefix}{stem}-{j:06d}" for j in range(n))
        frame = self._frame(columns_out, encodings, keys)
        return PartitionData(frame, rejected, examples)

    def _shard_bytes(self, sh: dict[str, Any]) -> bytes:
        raw = sh["raw_data"]
        root = self._root()
        if not sh.get("zip_data") and not _is_remote(root):
            return Path(root, raw["basename"]).read_bytes()
        if sh.get("zip_data"):
            z = sh["zip_data"]
            if not _is_remote(root) and Path(root, raw["basename"]).exists():
                return Path(root, raw["basename"]).read_bytes()
            from streaming.base.compression import decompress

            return decompress(sh["compression"], self._fetch(z["basename"], z["bytes"]))
        return self._fetch(raw["basename"], raw["bytes"])

    def _frame(self, cols: dict[str, list], encodings: dict[str, str], keys: list[str]) -> pl.DataFrame:
        o = self.options
        series = []
        for name, vals in cols.items():
            series.append(_series(name, encodings[name], vals))
        df = pl.DataFrame(series) if series else pl.DataFrame({"key": keys})
        if o.key_column and o.key_column in df.columns:
            key = df.get_column(o.key_column).cast(pl.String).str.replace_all(r"[^A-Za-z0-9_-]", "_")
            df = df.drop(o.key_column)
        else:
            key = pl.Series("key", keys, pl.String)
        if "key" in df.columns:
            df = df.drop("key")
        rename = DEFAULT_RENAME if o.rename is None else o.rename
        mapping = {}
        taken = set(df.columns)
        for src, dst in rename.items():
            if src in df.columns and dst not in taken and dst not in mapping.values():
                mapping[src] = dst
        df = df.rename(mapping)
        return df.insert_column(0, key.alias("key"))


def _decode(enc: str, vals: list[bytes]) -> list:
    if enc in ("jpeg", "png", "bytes"):
        return vals
    if enc == "str":
        return [v.decode("utf-8") for v in vals]
    from streaming.base.format.mds.encodings import mds_decode

    if enc == "pil":  # streaming's own raw-pixel layout: store as PNG (lossless)
        import io

        out = []
        for v in vals:
            buf = io.BytesIO()
            mds_decode(enc, v).save(buf, format="PNG")
            out.append(buf.getvalue())
        return out
    return [mds_decode(enc, v) for v in vals]


_NP_POLARS = {
    "int8": pl.Int8, "int16": pl.Int16, "int32": pl.Int32, "int64": pl.Int64,
    "uint8": pl.UInt8, "uint16": pl.UInt16, "uint32": pl.UInt32, "uint64": pl.UInt64,
    "float16": pl.Float16, "float32": pl.Float32, "float64": pl.Float64,
}  # fmt: skip


def _series(name: str, enc: str, vals: list) -> pl.Series:
    if enc in ("jpeg", "png", "bytes", "pil"):
        return pl.Series(name, vals, pl.Binary)
    if enc == "str":
        return pl.Series(name, vals, pl.String)
    if enc in _NP_POLARS:
        return pl.Series(name, np.asarray(vals, dtype=enc), _NP_POLARS[enc])
    if enc == "int":
        return pl.Series(name, [int(v) for v in vals], pl.Int64)
    if enc.startswith("ndarray") and not vals:
        parts = enc.split(":")
        if len(parts) == 3 and parts[1] and parts[2]:
            return pl.Series(name, np.empty((0, *map(int, parts[2].split(","))), parts[1]))
    if enc.startswith("ndarray") and vals and all(isinstance(v, np.ndarray) for v in vals):
        shapes = {v.shape for v in vals}
        if len(shapes) == 1:
            return pl.Series(name, np.stack(vals))
        return pl.Series(name, [v.ravel().tolist() for v in vals])
    try:
        return pl.Series(name, vals, strict=False)
    except Exception:
        return pl.Series(name, [json.dumps(v, default=str) for v in vals], pl.String)
