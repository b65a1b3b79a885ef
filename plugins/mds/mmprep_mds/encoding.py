"""Column planning for MDS: which frame column becomes which MDS column with which encoding,
and vectorised encoding of a whole column into per-sample byte strings.

Every fast path here produces exactly the bytes ``streaming``'s own ``mds_encode`` would
produce for the same value (tests compare them), except for ``jpeg``/``png`` columns fed
with encoded image bytes: those are stored verbatim (MDS's ``jpeg`` encoder would decode
and re-encode them at quality 75), which is what a reader gets back with ``Image.open``.

Nothing here imports ``streaming`` at module level (plugin imports must stay cheap).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

# -- what micro_diffusion writes ---------------------------------------------------------
#: micro_diffusion ``prepare/*/convert.py``: the raw image-caption dataset.
RAW_COLUMNS: dict[str, str] = {"width": "int32", "height": "int32", "jpg": "jpeg", "caption": "str"}
#: micro_diffusion ``prepare/*/precompute.py``: the precomputed latents dataset.
LATENTS_COLUMNS: dict[str, str] = {
    "caption": "str",
    "caption_latents": "bytes",
    "latents_256": "bytes",
    "latents_512": "bytes",
}
#: Shapes and dtype its ``latents_loader`` reads back with ``np.frombuffer(x, float16)``.
LATENTS_SHAPES: dict[str, tuple[int, ...]] = {
    "caption_latents": (77, 1024),
    "latents_256": (4, 32, 32),
    "latents_512": (4, 64, 64),
}
LATENTS_DTYPE = "float16"
#: micro_diffusion's shard size limit: ``size_limit=256 * (2**20)``.
MICRO_DIFFUSION_SIZE_LIMIT = 256 * (1 << 20)

#: Shared-vocabulary columns mapped onto the preset names when the preset column is absent.
PRESET_RENAME: dict[str, str] = {"image_bytes": "jpg"}

SIZE_NAMES = {"width", "height", "original_width", "original_height"}
IMAGE_NAMES = {"jpg", "jpeg", "png", "image", "image_bytes", "img"}

_SCALARS = {
    "int8": "<i1", "int16": "<i2", "int32": "<i4", "int64": "<i8",
    "uint8": "<u1", "uint16": "<u2", "uint32": "<u4", "uint64": "<u8",
    "float16": "<f2", "float32": "<f4", "float64": "<f8",
}  # fmt: skip
_PASSTHROUGH = {"bytes", "jpeg", "png"}
_NDARRAY_DTYPES = {"uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float16", "float32", "float64"}

# -- validation of writer options without importing streaming -----------------------------
_COMPRESSION = re.compile(r"^(?:br(?::(?:[0-9]|1[01]))?|bz2(?::[1-9])?|gz(?::[0-9])?|snappy|zstd(?::(?:[1-9]|1[0-9]|2[0-2]))?)$")
HASHES = {
    "md5", "sha1", "sha224", "sha256", "sha384", "sha512", "sha3_224", "sha3_256", "sha3_384",
    "sha3_512", "blake2b", "blake2s", "xxh32", "xxh64", "xxh128", "xxh3_64", "xxh3_128",
}  # fmt: skip
_BASE_ENCODINGS = {
    "bytes", "str", "int", "ndarray", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32",
    "int64", "float16", "float32", "float64", "str_int", "str_float", "str_decimal", "pil", "jpeg",
    "jpeg_array", "jpegarray", "png", "list[pil]", "list[jpeg]", "list[png]", "pkl", "json",
}  # fmt: skip


def check_compression(v: str | None) -> str | None:
    if v in (None, "", "none", "None"):
        return None
    if not _COMPRESSION.match(v):
        raise ValueError(f"unknown compression {v!r} (one of br, bz2, gz, snappy, zstd, optionally ':<level>')")
    return v


def check_encoding(enc: str) -> str:
    base, _, rest = enc.partition(":")
    if base not in _BASE_ENCODINGS:
        raise ValueError(f"unknown MDS encoding {enc!r} (known: {', '.join(sorted(_BASE_ENCODINGS))})")
    if base == "ndarray" and rest:
        parts = rest.split(":")
        if parts[0] and parts[0] not in _NDARRAY_DTYPES:
            raise ValueError(f"{enc!r}: unknown ndarray dtype {parts[0]!r}")
        if len(parts) > 1 and parts[1] and not re.fullmatch(r"\d+(?:,\d+)*", parts[1]):
            raise ValueError(f"{enc!r}: shape must be comma-separated integers")
    elif rest:
        raise ValueError(f"{enc!r}: only 'ndarray' takes ':<dtype>:<shape>'")
    return enc


def encoded_size(enc: str) -> int | None:
    """Fixed byte size of every value of an MDS encoding, or None (variable size):
    ``streaming``'s ``get_mds_encoded_size`` without importing it (tests compare the two)."""
    base, _, rest = enc.partition(":")
    if base in _SCALARS and not rest:
        return np.dtype(_SCALARS[base]).itemsize
    if enc == "int":
        return 8
    if base == "ndarray" and rest:
        parts = rest.split(":")
        if not parts[0] or parts[0] not in _NDARRAY_DTYPES:
            raise ValueError(f"{enc!r}: unknown ndarray dtype {parts[0]!r}")
        if len(parts) < 2:
            return None
        return int(np.prod([int(d) for d in parts[1].split(",")])) * np.dtype(parts[0]).itemsize
    if base not in _BASE_ENCODINGS or rest:
        raise ValueError(f"Unsupported encoding: {enc}.")
    return None


# -- planning ----------------------------------------------------------------------------
@dataclass
class ColumnPlan:
    """One MDS column: where its values come from and how they are encoded."""

    name: str  # MDS column name
    source: str  # frame column
    encoding: str
    array_dtype: str | None = None  # numeric array columns: dtype they are stored as
    array_shape: tuple[int, ...] | None = None  # per-sample shape of array columns

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"source": self.source, "encoding": self.encoding}
        if self.array_dtype is not None:
            d["dtype"] = self.array_dtype
            d["shape"] = list(self.array_shape or ())
        return d


def _is_array(dt: pl.DataType) -> bool:
    return isinstance(dt, pl.Array)


def array_inner(dt: pl.DataType) -> tuple[pl.DataType, tuple[int, ...]]:
    """Leaf dtype and per-sample shape of a (nested) polars Array dtype."""
    shape = []
    while isinstance(dt, pl.Array):
        shape.append(dt.size)
        dt = dt.inner
    return dt, tuple(shape)


_POLARS_NP = {
    pl.Int8: "int8", pl.Int16: "int16", pl.Int32: "int32", pl.Int64: "int64",
    pl.UInt8: "uint8", pl.UInt16: "uint16", pl.UInt32: "uint32", pl.UInt64: "uint64",
    pl.Float16: "float16", pl.Float32: "float32", pl.Float64: "float64",
}  # fmt: skip


def np_dtype_name(dt: pl.DataType) -> str | None:
    for k, v in _POLARS_NP.items():
        if dt == k:
            return v
    return None


def _image_kind(series: pl.Series) -> str:
    """'jpeg', 'png' or 'bytes' from the magic bytes of the first non-null values."""
    head = series.drop_nulls().head(8).to_list()
    if head and all(isinstance(b, (bytes, bytearray)) and b[:3] == b"\xff\xd8\xff" for b in head):
        return "jpeg"
    if head and all(isinstance(b, (bytes, bytearray)) and b[:8] == b"\x89PNG\r\n\x1a\n" for b in head):
        return "png"
    return "bytes"


def infer_encoding(name: str, series: pl.Series, arrays: str = "bytes", array_dtype: str | None = None,
                   image_encoding: str = "auto") -> ColumnPlan | None:
    """Encoding for one frame column (None: the column cannot be stored and is skipped)."""
    dt = series.dtype
    if dt == pl.Null:
        return None
    if dt == pl.String or dt == pl.Categorical or isinstance(dt, pl.Enum):
        return ColumnPlan(name, name, "str")
    if dt == pl.Boolean:
        return ColumnPlan(name, name, "uint8")
    if dt in (pl.Int8, pl.Int16, pl.Int32, pl.UInt8, pl.UInt16):
        return ColumnPlan(name, name, "int32")
    if dt in (pl.UInt32, pl.Int64):
        if name in SIZE_NAMES and series.len() and (series.min() or 0) >= -(2**31) and (series.max() or 0) < 2**31:
            return ColumnPlan(name, name, "int32")  # image sizes: int32 like micro_diffusion
        return ColumnPlan(name, name, "int64")
    if dt == pl.UInt64:
        return ColumnPlan(name, name, "uint64")
    if dt in (pl.Float16, pl.Float32, pl.Float64):
        return ColumnPlan(name, name, np_dtype_name(dt))
    if dt == pl.Binary:
        if image_encoding != "auto":
            return ColumnPlan(name, name, image_encoding if name.lower() in IMAGE_NAMES else "bytes")
        if name.lower() in IMAGE_NAMES:
            return ColumnPlan(name, name, _image_kind(series))
        return ColumnPlan(name, name, "bytes")
    if _is_array(dt):
        leaf, shape = array_inner(dt)
        leaf_np = np_dtype_name(leaf)
        if leaf_np is not None:
            out_dt = array_dtype or leaf_np
            enc = "bytes" if arrays == "bytes" else f"ndarray:{out_dt}:{','.join(map(str, shape))}"
            return ColumnPlan(name, name, enc, out_dt, shape)
        return ColumnPlan(name, name, "json")
    if isinstance(dt, (pl.List, pl.Struct)):
        return ColumnPlan(name, name, "json")
    if dt in (pl.Date, pl.Datetime, pl.Time, pl.Duration) or isinstance(dt, (pl.Datetime, pl.Duration, pl.Decimal)):
        return ColumnPlan(name, name, "str")
    return None


# -- encoding whole columns --------------------------------------------------------------
def _split(buf: bytes, n: int, k: int) -> list[memoryview]:
    """Zero-copy fixed-size slices of one buffer."""
    mv = memoryview(buf).cast("B")
    return [mv[i * k:(i + 1) * k] for i in range(n)]


def _binary_views(series: pl.Series) -> list[memoryview]:
    """Zero-copy per-row views of a Binary column (Arrow binary-view or large_binary buffers).

    Avoids materialising one Python ``bytes`` per row (a copy of every image and latent):
    the shard writer hands the views to ``writev``, so each value is copied exactly once,
    into the shard file.
    """
    import pyarrow as pa

    arr = series.to_arrow(compat_level=pl.CompatLevel.newest())  # binary views: zero-copy
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_binary_view(arr.type):
        # Arrow binary views: 16 bytes per value = int32 length, then either the value inline
        # (<= 12 bytes) or int32 prefix, int32 buffer index, int32 offset into that buffer.
        bufs = arr.buffers()
        n = len(arr)
        views = np.frombuffer(bufs[1], dtype=np.int32, count=4 * (arr.offset + n)).reshape(-1, 4)[arr.offset:]
        data = [memoryview(b).cast("B") if b is not None else None for b in bufs[2:]]
        lens = views[:, 0].astype(np.int64)
        inline = lens <= 12
        offs = views[:, 3].astype(np.int64)
        if not inline.any():  # typical for images, latents: every value lives in a data buffer
            bidx = views[:, 2]
            if data and (bidx == 0).all():
                d0 = data[0]
                return [d0[a:b] for a, b in zip(offs.tolist(), (offs + lens).tolist())]
            return [data[i][a:b] for i, a, b in zip(bidx.tolist(), offs.tolist(), (offs + lens).tolist())]
        vbytes = memoryview(bufs[1]).cast("B")  # pyarrow exports signed chars: view as unsigned bytes
        pos = (np.arange(arr.offset, arr.offset + n, dtype=np.int64) * 16 + 4).tolist()
        return [vbytes[p:p + ln] if ln <= 12 else data[i][a:a + ln]
                for p, ln, i, a in zip(pos, lens.tolist(), views[:, 2].tolist(), offs.tolist())]
    if not pa.types.is_large_binary(arr.type):
        arr = arr.cast(pa.large_binary())
    _, offs, data = arr.buffers()
    n = len(arr)
    offsets = np.frombuffer(offs, dtype=np.int64, count=n + 1, offset=arr.offset * 8).tolist()
    if data is None:
        return [memoryview(b"")] * n
    mv = memoryview(data).cast("B")
    return [mv[offsets[i]:offsets[i + 1]] for i in range(n)]


def _numeric_matrix(series: pl.Series) -> np.ndarray:
    """(n, *shape) numpy array of a numeric Array column."""
    arr = series.to_numpy()
    if arr.dtype == object:  # nulls inside
        raise ValueError(f"column {series.name!r}: null values cannot be stored in MDS")
    return arr


def encode_column(plan: ColumnPlan, series: pl.Series) -> list[bytes | memoryview]:
    """Encode one column into one bytes-like value per row (same bytes as ``mds_encode``).

    Values may be zero-copy ``memoryview`` slices of the column's buffers.
    """
    enc = plan.encoding
    n = series.len()
    if n == 0:
        return []
    if series.null_count() and enc != "json":
        idx = series.is_null().arg_true()[0]
        raise ValueError(f"column {plan.source!r}: null value at row {idx} cannot be stored as MDS {enc!r}")
    dt = series.dtype
    base, _, rest = enc.partition(":")
    if enc == "str":
        if dt != pl.String:
            series = series.cast(pl.String)
        return _binary_views(series.cast(pl.Binary))
    if enc in _PASSTHROUGH and dt == pl.Binary:
        return _binary_views(series)
    if enc in _SCALARS and (dt.is_numeric() or dt == pl.Boolean):
        np_dt = np.dtype(_SCALARS[enc])
        arr = series.to_numpy()
        if dt.is_integer() and np_dt.kind in "iu":
            info = np.iinfo(np_dt)
            lo, hi = series.min(), series.max()
            if lo < info.min or hi > info.max:
                raise ValueError(f"column {plan.source!r}: values [{lo}, {hi}] do not fit MDS {enc!r}")
        return _split(np.ascontiguousarray(arr.astype(np_dt)).tobytes(), n, np_dt.itemsize)
    if _is_array(dt) and (enc == "bytes" or base == "ndarray"):
        leaf, shape = array_inner(dt)
        if np_dtype_name(leaf) is not None:
            out_dt = plan.array_dtype or np_dtype_name(leaf)
            if base == "ndarray":
                parts = rest.split(":") if rest else []
                if parts and parts[0]:
                    out_dt = parts[0]
                if len(parts) < 2 or not parts[1] or not parts[0]:
                    return _generic(plan, [np.asarray(x) for x in _numeric_matrix(series).astype(out_dt)])
                want = tuple(int(s) for s in parts[1].split(","))
                if want != shape:
                    raise ValueError(f"column {plan.source!r}: shape {shape} does not match {enc!r}")
            arr = _numeric_matrix(series).astype(np.dtype(out_dt).newbyteorder("<"), copy=False)
            arr = np.ascontiguousarray(arr)
            return _split(arr.tobytes(), n, arr[0].nbytes if n else 0)
    if base == "ndarray" and dt == pl.Binary:
        # raw little-endian bytes declared as a fixed ndarray: the bytes are the values
        parts = rest.split(":") if rest else []
        if len(parts) >= 2 and parts[0] and parts[1]:
            size = int(np.prod([int(s) for s in parts[1].split(",")])) * np.dtype(parts[0]).itemsize
            bad = series.bin.size() != size
            if bad.any():
                raise ValueError(f"column {plan.source!r}: {bad.sum()} values are not {size} bytes ({enc!r})")
            return _binary_views(series)
    return _generic(plan, series.to_list())


def _generic(plan: ColumnPlan, values: list[Any]) -> list[bytes]:
    from streaming.base.format.mds.encodings import mds_encode

    enc = plan.encoding
    if enc in ("jpeg", "png", "pil"):
        raise ValueError(f"column {plan.source!r}: {enc!r} needs encoded image bytes (a Binary column)")
    if enc == "json":
        return [json.dumps(v).encode("utf-8") for v in values]
    if enc.startswith("ndarray"):
        values = [np.asarray(v) for v in values]
    return [mds_encode(enc, v) for v in values]


@dataclass
class Layout:
    """The MDS columns of one writer, in MDSWriter's (sorted) order."""

    columns: list[ColumnPlan] = field(default_factory=list)

    @property
    def mds_columns(self) -> dict[str, str]:
        return {c.name: c.encoding for c in self.columns}

    def encode(self, df: pl.DataFrame) -> list[list[bytes]]:
        return [encode_column(c, df.get_column(c.source)) for c in self.columns]
