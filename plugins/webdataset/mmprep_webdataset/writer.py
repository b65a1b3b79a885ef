"""Writer ``webdataset``: deterministic, atomic, exact-size tar shards; NeMo and LLM2CLIP layouts.

Modes
-----
``shards`` (default)
    ``write_unit`` writes the unit's samples, in row order, into the hidden top-level file
    ``.part-<unit>.tar`` (the engine moves it into ``OUT/<path>/`` atomically; a file, not a
    shared sub-directory, so parallel commits never touch each other's entries; hidden, so
    ``*.tar`` globs such as NeMo's never see it), plus ``.part-<unit>.json``, the byte offset
    and key of every sample in the part. ``finalize`` repacks every
    part in unit-index order into the final shards by copying member blocks byte for byte
    (whole runs of samples as one byte range, located by the part index after a cheap check
    of it against the part; a part without a valid index is scanned header by header):
    with ``samples_per_shard: N`` every shard but the last holds exactly N samples, whatever
    was rejected and however many workers ran; with ``max_shard_bytes`` a shard is closed
    before it would exceed the size; with neither, one shard per non-empty unit. Each shard
    is written under a hidden temp name, fsynced (unless ``fsync: false``) and renamed; the
    SHA-256 and the fsync + rename run on background threads while the next shard is copied.
    ``shards.json`` lists every shard (name, samples, bytes, sha256, first/last key, and the
    key list unless ``list_keys: false``); the parts are deleted afterwards unless
    ``keep_parts``. Running finalize again gives the same bytes (or is a no-op once the parts
    are gone and ``shards.json`` matches).
``sidecar``
    Rows come from the ``webdataset`` source (one unit = one input shard; the shard's URL is
    in ``shard_column``, the original key in ``key_column``). Writes ``<shard>_<suffix>.tar``
    holding only ``columns`` for the same keys in the same order (LLM2CLIP: raw float32 bytes
    in members ``<key>.<column>``). A missing, extra or reordered key is an error naming it.
``merge``
    Same input; rewrites each input shard with the new members added (existing members copied
    verbatim; members of a sample sorted by name), atomically.

Member names and encodings (``layout: members``)
-----------------------------------------------
``<key>.<ext>`` with the key sanitised to ``[A-Za-z0-9_-]``. Extension per column, unless
``extensions`` maps it: ``image_columns`` → ``jpg``/``png``/``webp``/``gif`` from the bytes'
magic number; ``caption`` → ``txt``; a column named like a known extension (``txt``,
``json``, ``cls``, ``jpg``...) → itself; other strings → ``<col>.txt``; ints and bools →
``<col>.cls``; floats → ``<col>.txt``; structs / non-numeric lists → ``<col>.json``; numeric
lists/arrays (and binary columns declared in ``arrays``) → ``<col>.npy``; other binary →
``<col>`` (raw). Null values are skipped. Members of a sample are sorted by name.

``layout: nemo-precache``: one ``<key>.pickle`` holding ``{encoding name: numpy array}``
(float16 for ``precision: 16``, float32 for 32) per sample, plus the original
``<key>.jpg``/``<key>.txt`` when ``save_original_in_tar``; with ``pickle_encodings: false``
one ``<key>.<encoding name>.npy`` member per encoding instead.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmprep import UnitInfo, Writer, WriterOptions

from ._tar import (
    BLOCK,
    AtomicFile,
    ShardCommitter,
    TarBuilder,
    TarDamage,
    safe_key,
    scan_samples,
)

KNOWN_EXTS = {
    "txt", "json", "cls", "jpg", "jpeg", "png", "webp", "gif", "npy", "pickle", "pyd", "pth", "mp4", "wav", "flac", "bin",
}
INDEX = "shards.json"
PART_PREFIX = ".part-"
PART_INDEX_FORMAT = "mmprep-webdataset-part/1"
_NUMERIC = (pl.Float16, pl.Float32, pl.Float64, pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)


class ArraySpec(BaseModel):
    """dtype and shape of a binary column holding raw array bytes."""

    model_config = ConfigDict(extra="forbid")
    dtype: str = Field(description="numpy dtype of the bytes, e.g. float16")
    shape: list[int] | None = Field(default=None, description="shape of one sample's array (null: 1-D)")


class WebDatasetWriterOptions(WriterOptions):
    mode: Literal["shards", "sidecar", "merge"] = Field(
        default="shards", description="shards: new tar shards; sidecar/merge: add columns to the input shards by key"
    )
    layout: Literal["members", "nemo-precache"] = Field(
        default="members", description="members: one member per column; nemo-precache: one .pickle of encodings per sample"
    )
    columns: list[str] | None = Field(
        default=None,
        description="Columns to write (default: all but key, dataset and __-prefixed bookkeeping columns). "
        "Required for sidecar/merge (the new columns)",
    )
    exclude: list[str] = Field(default_factory=list, description="Columns never written")
    extensions: dict[str, str] = Field(default_factory=dict, description="column -> member extension (overrides the defaults)")
    image_columns: list[str] = Field(
        default_factory=lambda: ["image_bytes"], description="Binary columns whose extension comes from the image format"
    )
    arrays: dict[str, ArraySpec] = Field(
        default_factory=dict, description="Binary columns holding raw arrays: {column: {dtype, shape}} (written as npy/arrays)"
    )
    samples_per_shard: int | None = Field(default=None, ge=1, description="Exactly this many samples per shard (the last may hold fewer)")
    max_shard_bytes: int | None = Field(default=None, ge=1024, description="Close a shard before it would exceed this size")
    shard_pattern: str = Field(
        default="{shard:05d}.tar",
        description="Shard file name; fields {shard} (= {n}, the shard index) and pattern_vars, e.g. 't{task}_r{rank}_{n}.tar'",
    )
    pattern_vars: dict[str, int | str] = Field(default_factory=dict, description="Extra fields of shard_pattern, e.g. {task: 0, rank: 0}")
    start_shard: int = Field(default=0, ge=0, description="Index of the first shard")
    wdinfo: bool = Field(default=False, description="Write wdinfo.pkl (NeMo): {tar_files, chunk_size, total_key_count}")
    wdinfo_name: str = Field(default="wdinfo.pkl", description="File name of the wdinfo pickle")
    wdinfo_include_partial: bool = Field(
        default=False, description="List the last, partial shard in wdinfo.pkl (NeMo lists only full shards)"
    )
    list_keys: bool = Field(default=True, description="Store each shard's key list in shards.json")
    keep_parts: bool = Field(default=False, description="Keep the per-unit part tars after finalize")
    fsync: bool = Field(
        default=True,
        description="fsync each shard before renaming it into place, so a visible shard also survives a power loss "
        "(false: the OS writes it back later, as webdataset's ShardWriter does; shards stay atomic for crashed processes)",
    )
    # NeMo precache layout
    encodings: list[str] | None = Field(
        default=None, description="nemo-precache: columns stored as encodings (default: array columns and 'arrays')"
    )
    encoding_names: dict[str, str] = Field(default_factory=dict, description="nemo-precache: column -> key in the pickle / npy member")
    precision: Literal[16, 32] = Field(default=32, description="nemo-precache: 16 → float16 arrays, 32 → float32")
    pickle_encodings: bool = Field(default=True, description="nemo-precache: one .pickle dict per sample; false: one .npy per encoding")
    save_original_in_tar: bool = Field(default=False, description="nemo-precache: also store the image (jpg...) and caption (txt)")
    caption_column: str = Field(default="caption", description="Column written as <key>.txt")
    # sidecar / merge
    sidecar_suffix: str = Field(default="text_embeddings", description="sidecar: <shard>_<suffix>.tar")
    array_format: Literal["raw", "npy"] = Field(
        default="raw", description="sidecar/merge: arrays as raw bytes in <key>.<column> (LLM2CLIP) or <key>.<column>.npy"
    )
    raw_dtype: str = Field(default="float32", description="sidecar/merge: dtype of raw array bytes")
    shard_column: str = Field(default="__url__", description="sidecar/merge: column holding the input shard's path")
    key_column: str = Field(default="__key__", description="sidecar/merge: column holding the original member key")
    location: Literal["out", "beside-input"] = Field(
        default="out", description="sidecar/merge: write under OUT/<path> or next to the input shard (local inputs only)"
    )

    @model_validator(mode="after")
    def _check(self):
        if self.samples_per_shard and self.max_shard_bytes:
            raise ValueError("give samples_per_shard or max_shard_bytes, not both")
        if self.mode != "shards" and not self.columns:
            raise ValueError(f"mode {self.mode}: 'columns' must name the new columns to add")
        if self.mode != "shards" and self.layout != "members":
            raise ValueError("sidecar/merge modes use layout: members")
        if self.wdinfo and not self.samples_per_shard:
            raise ValueError("wdinfo needs samples_per_shard (its chunk_size)")
        try:
            _shard_name(self.shard_pattern, 0, self.pattern_vars)
        except (KeyError, ValueError, IndexError) as e:
            raise ValueError(f"shard_pattern {self.shard_pattern!r}: {e!r}") from None
        for ext in self.extensions.values():
            if "/" in ext or ".." in ext or not ext:
                raise ValueError(f"bad extension {ext!r}")
        return self


def _shard_name(pattern: str, i: int, extra: dict) -> str:
    name = pattern.format(shard=i, n=i, **extra)
    if "/" in name or name.startswith(".") or not name.endswith(".tar"):
        raise ValueError(f"shard names must be plain '*.tar' file names, got {name!r}")
    return name


def _leaf_numpy_dtype(dt):
    import numpy as np

    while isinstance(dt, (pl.List, pl.Array)):
        dt = dt.inner
    names = {pl.Float16: "float16", pl.Float32: "float32", pl.Float64: "float64", pl.Int8: "int8", pl.Int16: "int16",
             pl.Int32: "int32", pl.Int64: "int64", pl.UInt8: "uint8", pl.UInt16: "uint16", pl.UInt32: "uint32", pl.UInt64: "uint64"}
    for k, v in names.items():
        if dt == k:
            return np.dtype(v)
    return None


def image_ext(b: bytes) -> str:
    """jpg / png / webp / gif from the magic number; 'bin' when unknown."""
    if b[:3] == b"\xff\xd8\xff":
        return "jpg"
    if b[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if b[:4] == b"RIFF" and b[8:12] == b"WEBP":
        return "webp"
    if b[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return "bin"


def _npy(arr) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


class WebDatasetWriter(Writer):
    """Write WebDataset tars: exact-size atomic shards, wdinfo.pkl, NeMo precache layout, sidecar/merge by key."""

    name = "webdataset"
    Options = WebDatasetWriterOptions

    # -- column → member encoders ------------------------------------------------------
    def _selected(self, df: pl.DataFrame) -> list[str]:
        o = self.options
        if o.columns is not None:
            missing = [c for c in o.columns if c not in df.columns]
            if missing:
                raise KeyError(f"webdataset writer: columns {missing} not in the rows (have {df.columns})")
            cols = list(o.columns)
        else:
            cols = [c for c in df.columns if c not in ("key", "dataset") and not c.startswith("__")]
        return [c for c in cols if c not in o.exclude]

    def _array_values(self, s: pl.Series, dtype: str | None = None) -> list:
        """Per-row numpy arrays (None for nulls) of a numeric list/array or declared binary column."""
        import numpy as np

        o = self.options
        if s.dtype == pl.Binary:
            spec = o.arrays.get(s.name)
            dt = np.dtype(spec.dtype if spec else (dtype or o.raw_dtype))
            shape = tuple(spec.shape) if spec and spec.shape else None
            out = []
            for b in s.to_list():
                if b is None:
                    out.append(None)
                    continue
                a = np.frombuffer(b, dtype=dt)
                out.append(a.reshape(shape) if shape else a)
            return out
        if isinstance(s.dtype, pl.Array) and s.null_count() == 0:
            arr = s.to_numpy()
            return list(arr)
        leaf = _leaf_numpy_dtype(s.dtype)
        return [None if v is None else np.asarray(v, dtype=leaf) for v in s.to_list()]

    def _is_array(self, s: pl.Series) -> bool:
        if s.name in self.options.arrays:
            return True
        dt = s.dtype
        while isinstance(dt, (pl.List, pl.Array)):
            dt = dt.inner
            if dt in _NUMERIC:
                return True
        return False

    def _column_members(self, df: pl.DataFrame, col: str) -> tuple[list, list]:
        """(per-row member suffix or None, per-row bytes or None) for one column."""
        o = self.options
        s = df[col]
        n = df.height
        ext = o.extensions.get(col)
        dt = s.dtype
        if ext is not None:
            return [ext] * n, self._encode_as(s, ext)
        if col in o.image_columns and dt == pl.Binary:
            vals = s.to_list()
            return [None if v is None else image_ext(v) for v in vals], vals
        if self._is_array(s):
            vals = self._array_values(s)
            name = col if col.endswith(".npy") or col == "npy" else f"{col}.npy"
            return [name] * n, [None if v is None else _npy(v) for v in vals]
        if col == o.caption_column and dt == pl.String:
            ext = "txt"
        elif col in KNOWN_EXTS or col.rsplit(".", 1)[-1] in KNOWN_EXTS:
            ext = col
        elif dt == pl.String:
            ext = f"{col}.txt"
        elif dt == pl.Boolean or dt.is_integer():
            ext = f"{col}.cls"
        elif dt.is_float():
            ext = f"{col}.txt"
        elif dt == pl.Binary:
            ext = col
        else:
            ext = f"{col}.json"
        return [ext] * n, self._encode_as(s, ext)

    def _encode_as(self, s: pl.Series, ext: str) -> list:
        last = ext.rsplit(".", 1)[-1]
        dt = s.dtype
        vals = s.to_list() if not self._is_array(s) or last != "npy" else None
        if last == "npy":
            return [None if v is None else _npy(v) for v in self._array_values(s)]
        if dt == pl.Binary:
            return vals
        if last == "json":
            return [None if v is None else json.dumps(v, sort_keys=True, ensure_ascii=False, default=str).encode() for v in vals]
        if last == "cls":
            return [None if v is None else str(int(v)).encode() for v in vals]
        if last == "pickle" or last == "pyd":
            return [None if v is None else pickle.dumps(v, protocol=4) for v in vals]
        if dt == pl.String:
            return [None if v is None else v.encode("utf-8") for v in vals]
        if isinstance(dt, (pl.Struct, pl.List)):
            return [None if v is None else json.dumps(v, sort_keys=True, ensure_ascii=False, default=str).encode() for v in vals]
        return [None if v is None else str(v).encode("utf-8") for v in vals]

    def _nemo_members(self, df: pl.DataFrame) -> list[tuple[list, list]]:
        import numpy as np

        o = self.options
        dtype = np.float16 if o.precision == 16 else np.float32
        enc_cols = o.encodings
        if enc_cols is None:
            enc_cols = [c for c in df.columns if c not in ("key", "dataset") and not c.startswith("__") and self._is_array(df[c])]
        missing = [c for c in enc_cols if c not in df.columns]
        if missing:
            raise KeyError(f"webdataset writer (nemo-precache): encodings {missing} not in the rows (have {df.columns})")
        if not enc_cols:
            raise KeyError(f"webdataset writer (nemo-precache): no encoding columns (set 'encodings'; rows have {df.columns})")
        n = df.height
        arrays = {c: self._array_values(df[c], dtype=None) for c in enc_cols}
        names = {c: o.encoding_names.get(c, c) for c in enc_cols}
        out: list[tuple[list, list]] = []
        if o.pickle_encodings:
            blobs = []
            for i in range(n):
                d = {names[c]: np.asarray(arrays[c][i], dtype=dtype) for c in enc_cols if arrays[c][i] is not None}
                blobs.append(pickle.dumps(d, protocol=4))
            out.append((["pickle"] * n, blobs))
        else:
            for c in enc_cols:
                out.append(([f"{names[c]}.npy"] * n, [None if a is None else _npy(np.asarray(a, dtype=dtype)) for a in arrays[c]]))
        if o.save_original_in_tar:
            for c in o.image_columns:
                if c in df.columns:
                    out.append(self._column_members(df, c))
            if o.caption_column in df.columns:
                out.append((["txt"] * n, self._encode_as(df[o.caption_column], "txt")))
        return out

    def _sample_members(self, df: pl.DataFrame, cols: list[str]) -> list[list[tuple[str, bytes]]]:
        """Per row: the sorted (member suffix, bytes) list."""
        if self.options.layout == "nemo-precache":
            per_col = self._nemo_members(df)
        else:
            per_col = [self._column_members(df, c) for c in cols]
        rows: list[list[tuple[str, bytes]]] = [[] for _ in range(df.height)]
        for exts, vals in per_col:
            for i, (e, v) in enumerate(zip(exts, vals)):
                if v is not None and e is not None:
                    rows[i].append((e, v))
        for r in rows:
            r.sort(key=lambda m: m[0])
            for a, b in zip(r, r[1:]):
                if a[0] == b[0]:
                    raise ValueError(f"webdataset writer: two columns map to the member extension {a[0]!r}; set 'extensions'")
        return rows

    # -- write ----------------------------------------------------------------------------
    def write_unit(self, df: pl.DataFrame, unit: UnitInfo, staging: Path) -> dict[str, Any]:
        if self.options.mode != "shards":
            return self._write_sidecar_or_merge(df, unit, staging)
        if df.height == 0:
            return {"samples": 0, "bytes": 0, "part": None}
        cols = self._selected(df)
        keys = [safe_key(k) for k in df["key"].to_list()]
        rows = self._sample_members(df, cols)
        part = staging / f"{PART_PREFIX}{unit.id}.tar"
        staging.mkdir(parents=True, exist_ok=True)
        starts = []
        with open(part, "wb", buffering=1 << 20) as f:
            tb = TarBuilder(f)
            for key, members in zip(keys, rows):
                starts.append(tb.pos)
                for ext, data in members:
                    tb.add(f"{key}.{ext}", data)
            end = tb.pos
            tb.close()
        # where each sample starts: finalize copies byte ranges without re-reading the headers
        index = {"format": PART_INDEX_FORMAT, "bytes": tb.pos, "end": end, "keys": keys, "starts": starts}
        (staging / _part_index_name(unit.id)).write_text(json.dumps(index, separators=(",", ":")))
        return {"samples": len(keys), "bytes": tb.pos, "part": part.name}

    # -- finalize ---------------------------------------------------------------------------
    def finalize(self, root: Path, records: list[dict[str, Any]], manifest: dict[str, Any]) -> dict[str, Any]:
        if self.options.mode != "shards":
            return self._finalize_sidecar(root, records)
        o = self.options
        root = Path(root)
        for tmp in root.glob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)
        units = [(r["unit"], r["rows"]) for r in sorted(records, key=lambda r: r["index"]) if r["rows"]]
        old = _read_index(root)
        parts = [root / f"{PART_PREFIX}{u}.tar" for u, _ in units]
        missing = [p for p in parts if not p.exists()]
        if missing:
            if old is not None and old.get("units") == [u for u, _ in units] and all((root / s["name"]).exists() for s in old["shards"]):
                return self._info(old)  # already finalized and the parts were removed: nothing to do
            raise FileNotFoundError(f"{missing[0]}: part of a completed unit is missing (and {root / INDEX} does not match)")

        shards: list[dict] = []
        cur: dict | None = None
        sink = None
        keys: list[str] = []
        committer = ShardCommitter(fsync=o.fsync)
        per_shard = o.samples_per_shard

        def open_shard():
            nonlocal cur, sink, keys
            name = _shard_name(o.shard_pattern, o.start_shard + len(shards), o.pattern_vars)
            sink = committer.open(root / name)
            cur = {"name": name, "samples": 0}
            keys = []

        def close_shard():
            nonlocal cur, sink
            if cur is None:
                return
            sink.close()  # fsync + rename in the background; the digest is filled in below
            cur["bytes"] = sink.pos
            cur["sha256"] = None  # verify detects any flipped byte
            cur["first_key"], cur["last_key"] = (keys[0], keys[-1]) if keys else (None, None)
            if o.list_keys:
                cur["keys"] = list(keys)
            shards.append(cur)
            cur = sink = None

        try:
            for (unit, rows), part in zip(units, parts):
                pkeys, starts, ends = _part_samples(part, unit, rows)
                n = len(pkeys)
                fd = os.open(part, os.O_RDONLY)
                try:
                    i = 0
                    while i < n:
                        if cur is None:
                            open_shard()
                        # take a run of samples for this shard and copy it as one byte range
                        if not o.max_shard_bytes:
                            j = min(n, i + per_shard - cur["samples"]) if per_shard else n
                        else:
                            j = i
                            size = sink.pos
                            while j < n:
                                sz = ends[j] - starts[j]
                                if (j > i or cur["samples"]) and size + sz + 2 * BLOCK > o.max_shard_bytes:
                                    break
                                size += sz
                                j += 1
                        if j > i:
                            sink.copy_from(fd, starts[i], ends[j - 1])
                            cur["samples"] += j - i
                            keys.extend(pkeys[i:j])
                            i = j
                        if i < n or (per_shard and cur["samples"] >= per_shard):
                            close_shard()
                finally:
                    os.close(fd)
                if not per_shard and not o.max_shard_bytes:
                    close_shard()
            close_shard()
            for s, digest in zip(shards, committer.results()):
                s["sha256"] = digest
        except BaseException:
            committer.abort()
            raise

        index = {
            "format": "mmprep-webdataset/1",
            "mode": "shards",
            "layout": o.layout,
            "samples_per_shard": o.samples_per_shard,
            "max_shard_bytes": o.max_shard_bytes,
            "total": sum(s["samples"] for s in shards),
            "units": [u for u, _ in units],
            "shards": shards,
        }
        if o.wdinfo:
            index["wdinfo"] = o.wdinfo_name
            _write_atomic(root / o.wdinfo_name, pickle.dumps(self._wdinfo(shards), protocol=4))
        if old is not None:  # shards of an earlier, different finalize
            new_names = {s["name"] for s in shards}
            for s in old.get("shards", []):
                if s["name"] not in new_names:
                    (root / s["name"]).unlink(missing_ok=True)
        _write_atomic(root / INDEX, json.dumps(index, indent=1).encode())
        if not o.keep_parts:
            for (u, _), p in zip(units, parts):
                p.unlink(missing_ok=True)
                (root / _part_index_name(u)).unlink(missing_ok=True)
        return self._info(index)

    def _wdinfo(self, shards: list[dict]) -> dict:
        o = self.options
        n = o.samples_per_shard
        full = [s["name"] for s in shards if s["samples"] == n or (o.wdinfo_include_partial and s["samples"])]
        return {"tar_files": sorted(full), "chunk_size": n, "total_key_count": len(full) * n}

    @staticmethod
    def _info(index: dict) -> dict:
        sh = index.get("shards", [])
        return {
            "shards": len(sh),
            "samples": index.get("total", 0),
            "bytes": sum(s.get("bytes", 0) for s in sh),
            "samples_per_shard": index.get("samples_per_shard"),
            "first": sh[0]["name"] if sh else None,
            "last": sh[-1]["name"] if sh else None,
            "last_samples": sh[-1]["samples"] if sh else 0,
            "index": INDEX,
            "wdinfo": index.get("wdinfo"),
        }

    # -- sidecar / merge ---------------------------------------------------------------------
    def _new_members(self, df: pl.DataFrame) -> list[list[tuple[str, bytes]]]:
        o = self.options
        cols = self._selected(df)
        per_col = []
        n = df.height
        for c in cols:
            s = df[c]
            if c in o.extensions:
                per_col.append(([o.extensions[c]] * n, self._encode_as(s, o.extensions[c])))
            elif self._is_array(s):
                import numpy as np

                vals = self._array_values(s)
                if o.array_format == "raw":
                    dt = np.dtype(o.raw_dtype)
                    per_col.append(([c] * n, [None if v is None else np.ascontiguousarray(v, dtype=dt).tobytes() for v in vals]))
                else:
                    per_col.append(([f"{c}.npy"] * n, [None if v is None else _npy(v) for v in vals]))
            else:
                per_col.append(([c] * n, self._encode_as(s, c)))
        rows: list[list[tuple[str, bytes]]] = [[] for _ in range(n)]
        for exts, vals in per_col:
            for i, (e, v) in enumerate(zip(exts, vals)):
                if v is not None:
                    rows[i].append((e, v))
        return rows

    def _output_name(self, shard_url: str) -> str:
        base = shard_url.rstrip("/").rsplit("/", 1)[-1]
        if self.options.mode == "merge":
            return base
        stem = base[:-4] if base.endswith(".tar") else base
        return f"{stem}_{self.options.sidecar_suffix}.tar"

    def _write_sidecar_or_merge(self, df: pl.DataFrame, unit: UnitInfo, staging: Path) -> dict[str, Any]:
        from mmprep.storage import is_local, open_url

        o = self.options
        for c in (o.shard_column, o.key_column):
            if c not in df.columns:
                raise KeyError(f"webdataset writer ({o.mode}): column {c!r} missing; read the input with the webdataset source")
        shards = df[o.shard_column].unique(maintain_order=True).to_list() if df.height else []
        if len(shards) > 1:
            raise ValueError(f"webdataset writer ({o.mode}): one unit holds rows of {len(shards)} input shards ({shards[:2]}...)")
        if not shards:
            raise ValueError(f"webdataset writer ({o.mode}): unit {unit.id} has no rows left, so its shard cannot be matched key by key")
        url = shards[0]
        keys = df[o.key_column].to_list()
        new = self._new_members(df)
        out_name = self._output_name(url)
        if o.location == "beside-input":
            if not is_local(url):
                raise ValueError(f"location: beside-input needs a local input shard, got {url!r}")
            target = Path(url.removeprefix("file://")).with_name(out_name)
        else:
            target = staging / out_name
        with open_url(url) as fh:
            data = fh.read()
        src = io.BytesIO(data)
        samples, damage = scan_samples(src, url)
        if damage:
            raise TarDamage(damage)
        _check_alignment(url, [s.key for s in samples], keys)
        with AtomicFile(target) as f:
            tb = TarBuilder(f)
            for s, key, members in zip(samples, keys, new):
                if o.mode == "sidecar":
                    for ext, blob in members:
                        tb.add(f"{key}.{ext}", blob)
                    continue
                added = {f"{key}.{ext}": blob for ext, blob in members}
                entries: list[tuple[str, Any]] = [(name, (st, en)) for name, st, en in s.members if name not in added]
                entries += list(added.items())
                entries.sort(key=lambda e: e[0])
                for name, val in entries:
                    if isinstance(val, tuple):
                        tb.add_raw(memoryview(data)[val[0]: val[1]])
                    else:
                        tb.add(name, val)
            tb.close()
        return {"samples": len(keys), "input": url, "output": out_name, "bytes": tb.pos, "location": o.location}

    def _finalize_sidecar(self, root: Path, records: list[dict]) -> dict[str, Any]:
        entries = [
            {"unit": r["unit"], "input": r["stats"].get("input"), "output": r["stats"].get("output"), "samples": r["stats"].get("samples", 0)}
            for r in sorted(records, key=lambda r: r["index"])
            if r.get("stats")
        ]
        index = {
            "format": "mmprep-webdataset/1",
            "mode": self.options.mode,
            "location": self.options.location,
            "total": sum(e["samples"] for e in entries),
            "outputs": entries,
        }
        _write_atomic(Path(root) / INDEX, json.dumps(index, indent=1).encode())
        return {"mode": self.options.mode, "outputs": len(entries), "samples": index["total"], "index": INDEX}

    # -- verify ---------------------------------------------------------------------------------
    def verify(self, root: Path, manifest: dict[str, Any]) -> list[str]:
        return verify_output(self.options, Path(root), manifest)


def _part_index_name(unit_id: str) -> str:
    return f"{PART_PREFIX}{unit_id}.json"


def _part_samples(part: Path, unit_id: str, rows: int) -> tuple[list[str], list[int], list[int]]:
    """(keys, start offsets, end offsets) of the samples of a unit's part tar.

    From the index ``write_unit`` left beside the part, after checking it against the part
    (size, count, a ustar header naming the key at every sample start, the end-of-archive
    block); a part without a usable index is scanned header by header instead.
    """
    n = None
    try:
        idx = json.loads((part.parent / _part_index_name(unit_id)).read_text())
        keys, starts, end = idx["keys"], idx["starts"], idx["end"]
        if idx.get("format") == PART_INDEX_FORMAT and idx["bytes"] == part.stat().st_size and len(keys) == len(starts) == rows:
            n = rows
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if n is not None and _index_matches(part, keys, starts, end):
        return keys, starts, starts[1:] + [end]
    with open(part, "rb") as src:
        samples, damage = scan_samples(src, str(part))
    if damage:
        raise TarDamage(damage)
    if len(samples) != rows:
        raise ValueError(f"{part}: {len(samples)} samples, the unit record says {rows}")
    for s in samples:
        if not s.contiguous():
            raise ValueError(f"{part}: members of sample {s.key!r} are not contiguous")
    return [s.key for s in samples], [s.start for s in samples], [s.end for s in samples]


def _index_matches(part: Path, keys: list[str], starts: list[int], end: int) -> bool:
    if any(b <= a for a, b in zip(starts, starts[1:] + [end])) or (starts and starts[0] != 0) or end % BLOCK:
        return False
    fd = os.open(part, os.O_RDONLY)
    try:
        for k, st in zip(keys, starts):
            blk = os.pread(fd, BLOCK, st)
            if len(blk) != BLOCK or blk[257:262] != b"ustar":
                return False
            if blk[156:157] != b"x" and not blk.startswith(k.encode() + b"."):  # 'x': pax header, long name
                return False
        return os.pread(fd, BLOCK, end) == b"\0" * BLOCK
    finally:
        os.close(fd)


def _check_alignment(url: str, shard_keys: list[str], row_keys: list[str]) -> None:
    for i, (a, b) in enumerate(zip(shard_keys, row_keys)):
        if a != b:
            raise ValueError(f"{url}: key mismatch at sample {i}: the shard has {a!r}, the rows have {b!r}")
    if len(shard_keys) > len(row_keys):
        raise ValueError(f"{url}: key {shard_keys[len(row_keys)]!r} (sample {len(row_keys)}) has no row (was it rejected?)")
    if len(row_keys) > len(shard_keys):
        raise ValueError(f"{url}: row key {row_keys[len(shard_keys)]!r} is not in the shard")


def _sha256(path: Path) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    with AtomicFile(path) as f:
        f.write(data)


def _read_index(root: Path) -> dict | None:
    p = root / INDEX
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except ValueError:
        return None


class _SafeUnpickler(pickle.Unpickler):
    """Only plain containers and scalars: wdinfo.pkl holds nothing else."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"wdinfo.pkl refers to {module}.{name}; only dict/list/str/int are expected")


def read_wdinfo(path: Path) -> dict:
    with open(path, "rb") as f:
        return _SafeUnpickler(f).load()


def verify_output(o: WebDatasetWriterOptions, root: Path, manifest: dict[str, Any]) -> list[str]:
    """Problems of a webdataset writer output (empty list = valid); each names the file/key."""
    problems: list[str] = []
    index = _read_index(root)
    if index is None:
        return [f"{root / INDEX}: missing or unreadable (was the run finalized?)"]
    expected = None
    for w in manifest.get("writers", []) or []:
        if w.get("type") == "webdataset" and w.get("path", "") == o.path:
            expected = (w.get("info") or {}).get("samples")
    if expected is None:
        expected = (manifest.get("totals") or {}).get("written")
    if o.mode != "shards":
        return problems + _verify_sidecars(o, root, index, expected)
    seen: dict[str, str] = {}
    total = 0
    shards = index.get("shards", [])
    for k, s in enumerate(shards):
        p = root / s["name"]
        if not p.exists():
            problems.append(f"{p}: listed in {INDEX} but missing")
            continue
        with open(p, "rb") as f:
            samples, damage = scan_samples(f, str(p))
        if damage:
            problems.append(damage)
        size = p.stat().st_size
        if isinstance(s.get("bytes"), int) and size != s["bytes"]:
            problems.append(f"{p}: {size} bytes, {INDEX} says {s['bytes']} (truncated or modified)")
        elif s.get("sha256") and _sha256(p) != s["sha256"]:
            problems.append(f"{p}: content differs from the sha256 in {INDEX} (modified after it was written)")
        n = len(samples)
        total += n
        if n != s["samples"]:
            problems.append(f"{p}: {n} samples, {INDEX} says {s['samples']}")
        if o.samples_per_shard and k < len(shards) - 1 and n != o.samples_per_shard:
            problems.append(f"{p}: {n} samples, expected exactly {o.samples_per_shard} (only the last shard may hold fewer)")
        if s.get("keys") is not None and [x.key for x in samples] != s["keys"]:
            problems.append(f"{p}: keys differ from the list in {INDEX}")
        for x in samples:
            if x.key in seen:
                problems.append(f"{p}: key {x.key!r} also in {seen[x.key]}")
            else:
                seen[x.key] = s["name"]
    if expected is not None and total != expected:
        problems.append(f"{root}: {total} samples in the shards, the manifest says {expected}")
    listed = {s["name"] for s in shards}
    for p in sorted(root.glob("*.tar")):
        if p.name not in listed and not p.name.startswith("."):
            problems.append(f"{p}: a tar not listed in {INDEX}")
            with open(p, "rb") as f:
                for x in scan_samples(f, str(p))[0]:
                    if x.key in seen:
                        problems.append(f"{p}: key {x.key!r} also in {seen[x.key]}")
                        break
    if o.wdinfo:
        wp = root / (index.get("wdinfo") or o.wdinfo_name)
        if not wp.exists():
            problems.append(f"{wp}: missing")
        else:
            try:
                info = read_wdinfo(wp)
                n = o.samples_per_shard
                want = sorted(s["name"] for s in shards if s["samples"] == n or (o.wdinfo_include_partial and s["samples"]))
                if set(info) != {"tar_files", "chunk_size", "total_key_count"}:
                    problems.append(f"{wp}: keys {sorted(info)} != ['chunk_size', 'tar_files', 'total_key_count']")
                elif info["tar_files"] != want:
                    problems.append(f"{wp}: tar_files {info['tar_files'][:3]}... do not match the shards {want[:3]}...")
                elif info["chunk_size"] != n or info["total_key_count"] != len(want) * n:
                    problems.append(f"{wp}: chunk_size/total_key_count {info['chunk_size']}/{info['total_key_count']} wrong")
            except Exception as e:
                problems.append(f"{wp}: unreadable ({type(e).__name__}: {e})")
    return problems


def _verify_sidecars(o: WebDatasetWriterOptions, root: Path, index: dict, expected) -> list[str]:
    from mmprep.storage import open_url

    problems = []
    total = 0
    for e in index.get("outputs", []):
        out = (Path(e["input"].removeprefix("file://")).with_name(e["output"]) if index.get("location") == "beside-input" else root / e["output"])
        if not out.exists():
            problems.append(f"{out}: missing")
            continue
        with open(out, "rb") as f:
            osamples, damage = scan_samples(f, str(out))
        if damage:
            problems.append(damage)
        total += len(osamples)
        if o.mode == "sidecar":
            try:
                with open_url(e["input"]) as fh:
                    isamples, idamage = scan_samples(io.BytesIO(fh.read()), e["input"])
            except OSError as ex:
                problems.append(f"{e['input']}: input shard unreadable ({ex})")
                continue
            ik, ok = [s.key for s in isamples], [s.key for s in osamples]
            if ik != ok:
                bad = next((i for i, (a, b) in enumerate(zip(ik, ok)) if a != b), min(len(ik), len(ok)))
                a = ik[bad] if bad < len(ik) else None
                b = ok[bad] if bad < len(ok) else None
                problems.append(f"{out}: not aligned with {e['input']} at sample {bad}: input key {a!r}, sidecar key {b!r}")
        if len(osamples) != e["samples"]:
            problems.append(f"{out}: {len(osamples)} samples, {INDEX} says {e['samples']}")
    if expected is not None and total != expected:
        problems.append(f"{root}: {total} samples in the outputs, the manifest says {expected}")
    return problems
