"""The ``mds`` writer: one MDS directory per work unit (byte-identical to what a MosaicML
``MDSWriter`` writes, see :mod:`mmprep_mds.shards`), merged into one index.

Layout under the writer's root (``OUT/<path>``)::

    index.json                     merged index (written by finalize; ``merge_index`` semantics)
    <unit id>/index.json           the unit's own index (written only after a clean finish)
    <unit id>/shard.00000.mds      shards (``.mds.zstd`` etc. with compression)

so ``StreamingDataset(local=OUT/<path>, remote=None)`` reads the whole dataset, exactly as
micro_diffusion's per-process ``out/<i>/`` directories merged with
``streaming.base.util.merge_index``.

Crash safety: ``MDSWriter.__exit__`` calls ``finish()`` even when the ``with`` body raised,
which writes a valid-looking ``index.json`` over partial data. This writer writes a unit's
``index.json`` only after all its shards, and on any exception removes the unit's partial
directory, so no index exists for an unfinished unit; the engine only moves the staged
directory into place after ``write_unit`` returned.
"""

from __future__ import annotations

import gc
import shutil
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import Field, field_validator

from mmprep import UnitInfo, Writer, WriterOptions

from . import encoding as E
from .index import check_dataset, merge_unit_indexes
from .shards import UnitShardWriter


class MdsWriterOptions(WriterOptions):
    """Options of the ``mds`` writer."""

    preset: Literal["raw", "latents"] | None = Field(
        default=None,
        description=(
            "micro_diffusion layout: 'raw' = {width:int32, height:int32, jpg:jpeg, caption:str}; "
            "'latents' = {caption:str, caption_latents, latents_256, latents_512: float16 raw bytes} "
            "(+ jpg:jpeg with save_images). None: every frame column, encodings inferred."
        ),
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="MDS column -> encoding ('str', 'int32', 'bytes', 'jpeg', 'json', 'ndarray:float16:4,32,32', ...); "
        "overrides inferred/preset encodings and adds columns to a preset",
    )
    rename: dict[str, str] = Field(
        default_factory=dict,
        description="frame column -> MDS column (presets also map image_bytes -> jpg when jpg is absent)",
    )
    exclude: list[str] = Field(default_factory=list, description="Frame columns never written")
    size_limit: int | str | None = Field(
        default=E.MICRO_DIFFUSION_SIZE_LIMIT,
        description="Shard size limit in bytes or '64mb' style (default 256 MiB, micro_diffusion's); None: one shard per unit",
    )
    compression: str | None = Field(default=None, description="Shard compression: zstd, zstd:7, gz, bz2, br, snappy; None")
    hashes: list[str] = Field(default_factory=list, description="Shard hashes recorded in the index (e.g. [xxh64, sha1])")
    arrays: Literal["bytes", "ndarray"] = Field(
        default="bytes",
        description="Numeric array columns: 'bytes' = raw little-endian values (micro_diffusion), "
        "'ndarray' = MDS 'ndarray:<dtype>:<shape>'",
    )
    array_dtype: str | None = Field(
        default=None,
        description="Cast numeric array columns to this dtype before storing (the latents preset uses float16)",
    )
    image_encoding: Literal["auto", "jpeg", "png", "bytes"] = Field(
        default="auto",
        description="Encoding of image byte columns (stored verbatim; 'auto' = from the magic bytes)",
    )
    save_images: bool = Field(default=False, description="latents preset: also store jpg:jpeg (micro_diffusion --save_images)")

    @field_validator("compression")
    @classmethod
    def _compression(cls, v):
        return E.check_compression(v)

    @field_validator("hashes")
    @classmethod
    def _hashes(cls, v):
        bad = [h for h in v if h not in E.HASHES]
        if bad:
            raise ValueError(f"unknown hash {bad} (known: {', '.join(sorted(E.HASHES))})")
        return sorted(set(v))

    @field_validator("columns")
    @classmethod
    def _columns(cls, v):
        for enc in v.values():
            E.check_encoding(enc)
        return v

    @field_validator("array_dtype")
    @classmethod
    def _array_dtype(cls, v):
        if v is not None and v not in E._NDARRAY_DTYPES:
            raise ValueError(f"unknown dtype {v!r}")
        return v

    @field_validator("size_limit")
    @classmethod
    def _size_limit(cls, v):
        if v is None or v == 0:
            return None
        if isinstance(v, str):
            from re import fullmatch

            m = fullmatch(r"\s*(\d+)\s*([kmgt]?i?b?)\s*", v.lower())
            if not m:
                raise ValueError(f"cannot read size {v!r} (e.g. 268435456, '64mb')")
            mult = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2)[:1] if m.group(2) else ""]
            v = int(m.group(1)) * mult
        if v < 0 or v >= 2**32:
            raise ValueError("must be in [0, 2**32) bytes (MDS stores offsets as uint32)")
        return v


class MdsWriter(Writer):
    """Write MosaicML MDS shards (one MDS directory per unit, merged index.json; micro_diffusion presets)."""

    name = "mds"
    Options = MdsWriterOptions
    #: Shard writing is one memory copy per byte in one thread: with workers > 1 units run
    #: in processes, so several units are written at once.
    per_sample = True

    # -- planning -------------------------------------------------------------------
    def layout(self, df: pl.DataFrame) -> E.Layout:
        """Decide the MDS columns for a unit's frame (deterministic given its schema)."""
        o = self.options
        df_cols = [c for c in df.columns if not c.startswith("_") and c not in o.exclude]
        rename = dict(o.rename)
        preset = self._preset_columns()
        if preset is not None:
            for src, dst in E.PRESET_RENAME.items():
                if dst in preset and dst not in df_cols and src in df_cols and src not in rename and dst not in rename.values():
                    rename[src] = dst
        unknown = [c for c in rename if c not in df.columns]
        if unknown:
            raise KeyError(f"mds writer: rename names columns {unknown} not in the rows (have {df.columns})")
        name_to_src = {rename.get(c, c): c for c in df_cols}
        plans: list[E.ColumnPlan] = []
        if preset is not None:
            wanted = {**preset, **o.columns}
            missing = [c for c in wanted if c not in name_to_src]
            if missing:
                raise KeyError(
                    f"mds writer (preset {o.preset!r}): columns {missing} not in the rows "
                    f"(have {df_cols}; map yours with rename: {{your_column: {missing[0]}}})"
                )
            for name, enc in wanted.items():
                src = name_to_src[name]
                plans.append(self._plan_declared(name, src, enc, df.get_column(src)))
        else:
            for name, src in name_to_src.items():
                s = df.get_column(src)
                if name in o.columns:
                    plans.append(self._plan_declared(name, src, o.columns[name], s))
                    continue
                p = E.infer_encoding(name, s, o.arrays, o.array_dtype, o.image_encoding)
                if p is None:
                    continue
                p.name, p.source = name, src
                plans.append(p)
            missing = [c for c in o.columns if c not in name_to_src]
            if missing:
                raise KeyError(f"mds writer: columns {missing} not in the rows (have {df_cols})")
        plans.sort(key=lambda p: p.name)
        return E.Layout(plans)

    def _preset_columns(self) -> dict[str, str] | None:
        o = self.options
        if o.preset == "raw":
            return dict(E.RAW_COLUMNS)
        if o.preset == "latents":
            cols = dict(E.LATENTS_COLUMNS)
            if o.save_images:
                cols["jpg"] = "jpeg"
            return cols
        return None

    def _plan_declared(self, name: str, src: str, enc: str, s: pl.Series) -> E.ColumnPlan:
        plan = E.ColumnPlan(name, src, enc)
        if isinstance(s.dtype, pl.Array):
            leaf, shape = E.array_inner(s.dtype)
            leaf_np = E.np_dtype_name(leaf)
            if leaf_np is not None:
                dt = self.options.array_dtype
                if dt is None and self.options.preset == "latents" and name in E.LATENTS_SHAPES:
                    dt = E.LATENTS_DTYPE
                if enc.startswith("ndarray:") and enc.split(":")[1]:
                    dt = enc.split(":")[1]
                plan.array_dtype, plan.array_shape = dt or leaf_np, shape
        return plan

    # -- writing --------------------------------------------------------------------
    def write_unit(self, df: pl.DataFrame, unit: UnitInfo, staging: Path) -> dict[str, Any]:
        """Write the unit's rows as ``staging/<unit.id>/`` (shards + the unit's index.json)."""
        layout = self.layout(df)
        unit_dir = Path(staging) / unit.id
        if unit_dir.exists():
            shutil.rmtree(unit_dir)
        if df.height == 0:
            return {"samples": 0, "shards": 0, "bytes": 0, "columns": layout.mds_columns, "arrays": _arrays(layout)}
        encoded = None
        # ~(columns x rows) short-lived memoryviews: a cyclic GC pass over a large heap in
        # the middle of them costs more than the whole encoding, and they form no cycles.
        gc_enabled = gc.isenabled()
        gc.disable()
        try:
            encoded = layout.encode(df)  # before any file exists: bad values fail early
            o = self.options
            writer = UnitShardWriter(unit_dir, layout.mds_columns, compression=o.compression,
                                     hashes=list(o.hashes), size_limit=o.size_limit)
            writer.write_columns(encoded)
            # index.json last, only after every shard was written (never MDSWriter's __exit__,
            # which writes an index over partial data when the body raised)
            index = writer.finish()
        except BaseException:
            shutil.rmtree(unit_dir, ignore_errors=True)
            raise
        finally:
            encoded = None  # release the column buffers' views
            if gc_enabled:
                gc.enable()
        nbytes = sum(
            (sh.get("zip_data") or sh["raw_data"])["bytes"] for sh in index["shards"]
        )
        return {
            "samples": sum(sh["samples"] for sh in index["shards"]),
            "shards": len(index["shards"]),
            "bytes": nbytes,
            "columns": layout.mds_columns,
            "arrays": _arrays(layout),
        }

    # -- finalize / verify ----------------------------------------------------------
    def finalize(self, root: Path, records: list[dict[str, Any]], manifest: dict[str, Any]) -> dict[str, Any]:
        """Merge every unit's index into ``root/index.json`` (idempotent, atomic replace)."""
        root = Path(root)
        units = [r["unit"] for r in sorted(records, key=lambda r: r.get("index", 0))
                 if (r.get("stats") or {}).get("samples", r.get("rows", 0))]
        info = merge_unit_indexes(root, units)
        arrays: dict[str, Any] = {}
        for r in records:
            for col, d in ((r.get("stats") or {}).get("arrays") or {}).items():
                arrays.setdefault(col, d)
        info["encoder_columns"] = _encoder_columns(info.get("columns", {}), arrays, manifest, self.options.preset)
        return info

    def verify(self, root: Path, manifest: dict[str, Any]) -> list[str]:
        """Shards present, complete, hashes match; StreamingDataset reads the count the manifest says."""
        return check_dataset(Path(root), _expected_samples(manifest, self))


def _arrays(layout: E.Layout) -> dict[str, Any]:
    return {c.name: {"dtype": c.array_dtype, "shape": list(c.array_shape or ()), "encoding": c.encoding}
            for c in layout.columns if c.array_dtype is not None}


def _encoder_declared(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{column: {dtype, shape}}`` declared by the run's encoders, wherever the manifest keeps them."""
    out: dict[str, dict[str, Any]] = {}
    enc = manifest.get("encoders") or []
    items = enc.values() if isinstance(enc, dict) else enc
    for e in items:
        if not isinstance(e, dict):
            continue
        for key in ("output_columns", "outputs", "columns"):
            cols = e.get(key)
            if isinstance(cols, dict):
                for c, d in cols.items():
                    if isinstance(d, dict) and ("dtype" in d or "shape" in d):
                        out.setdefault(c, {k: d[k] for k in ("dtype", "shape") if k in d})
    return out


def _encoder_columns(columns: dict[str, str], arrays: dict[str, Any], manifest: dict[str, Any],
                     preset: str | None) -> dict[str, Any]:
    """Shapes/dtypes of the stored encoder-output columns (what a reader needs for frombuffer)."""
    out: dict[str, Any] = {}
    declared = _encoder_declared(manifest)
    for col, enc in columns.items():
        d = None
        if col in arrays:
            d = {k: arrays[col][k] for k in ("dtype", "shape")}
        elif col in declared:
            d = dict(declared[col])
        elif preset == "latents" and col in E.LATENTS_SHAPES:
            d = {"dtype": E.LATENTS_DTYPE, "shape": list(E.LATENTS_SHAPES[col]), "declared_by": "preset"}
        if d is not None:
            d["encoding"] = enc
            out[col] = d
    return out


def _expected_samples(manifest: dict[str, Any], writer: MdsWriter) -> int | None:
    """Rows this writer should hold according to the run manifest (None: unknown).

    Every writer receives every written row of every unit, so the expected count is the
    sum of the units' ``rows_written`` (falling back to ``totals.written``).
    """
    units = manifest.get("units")
    if isinstance(units, list) and units and all(isinstance(u, dict) and "rows_written" in u for u in units):
        return sum(int(u["rows_written"]) for u in units)
    written = (manifest.get("totals") or {}).get("written")
    return int(written) if isinstance(written, int) else None
