"""Built-in writers: parquet and jsonl, one file per unit (committed atomically by the engine)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import Field, field_validator

from ..component import UnitInfo, Writer, WriterOptions


class TableWriterOptions(WriterOptions):
    columns: list[str] | None = Field(default=None, description="Columns to write (default: all)")
    exclude: list[str] = Field(default_factory=list, description="Columns never written")


class TableWriter(Writer):
    """Shared logic of the per-unit table writers."""

    ext = ""
    per_sample = False

    def select(self, df: pl.DataFrame) -> pl.DataFrame:
        o = self.options
        if o.columns is not None:
            missing = [c for c in o.columns if c not in df.columns]
            if missing:
                raise KeyError(f"{self.name} writer: columns {missing} not in the rows (have {df.columns})")
            df = df.select(o.columns)
        return df.drop([c for c in o.exclude if c in df.columns])

    def filename(self, unit: UnitInfo) -> str:
        return f"part-{unit.id}.{self.ext}"

    def write_unit(self, df, unit, staging):
        df = self.select(df)
        path = staging / self.filename(unit)
        self._write(df, path)
        return {"files": [path.name], "rows": df.height, "bytes": path.stat().st_size}

    def _write(self, df: pl.DataFrame, path: Path) -> None:
        raise TypeError

    def _count(self, path: Path) -> int:
        raise TypeError

    def verify(self, root, manifest):
        problems = []
        for rec in manifest.get("units", []):
            if not rec.get("rows_written", 0) and not (root / self.filename(UnitInfo(rec["id"], 0, 0))).exists():
                continue
            f = root / self.filename(UnitInfo(rec["id"], 0, 0))
            if not f.exists():
                problems.append(f"{f}: missing")
                continue
            try:
                n = self._count(f)
            except Exception as e:
                problems.append(f"{f}: unreadable ({type(e).__name__}: {e})")
                continue
            if n != rec.get("rows_written"):
                problems.append(f"{f}: {n} rows, the unit record says {rec.get('rows_written')}")
        return problems


class ParquetWriterOptions(TableWriterOptions):
    compression: str = "zstd"

    @field_validator("compression")
    @classmethod
    def _c(cls, v):
        allowed = ("zstd", "snappy", "lz4", "gzip", "brotli", "uncompressed")
        if v not in allowed:
            raise ValueError(f"must be one of {allowed}")
        return v


class ParquetWriter(TableWriter):
    """Write rows as parquet, one file per work unit."""

    name = "parquet"
    ext = "parquet"
    Options = ParquetWriterOptions

    def _write(self, df, path):
        df.write_parquet(path, compression=self.options.compression)

    def _count(self, path):
        return pl.scan_parquet(path).select(pl.len()).collect().item()


class JsonlWriterOptions(TableWriterOptions):
    binary: str = Field(default="drop", description="Binary columns: 'drop' or 'base64'")

    @field_validator("binary")
    @classmethod
    def _b(cls, v):
        if v not in ("drop", "base64"):
            raise ValueError("must be 'drop' or 'base64'")
        return v


class JsonlWriter(TableWriter):
    """Write rows as JSON lines, one file per work unit."""

    name = "jsonl"
    ext = "jsonl"
    Options = JsonlWriterOptions

    def _write(self, df, path):
        binary = [c for c, t in df.schema.items() if t == pl.Binary]
        if binary:
            if self.options.binary == "drop":
                df = df.drop(binary)
            else:
                df = df.with_columns(
                    pl.col(c).map_elements(lambda b: base64.b64encode(b).decode(), return_dtype=pl.String) for c in binary
                )
        df.write_ndjson(path)

    def _count(self, path):
        n = 0
        with open(path, "rb") as fh:
            for line in fh:
                if line.strip():
                    json.loads(line)
                    n += 1
        return n


ALL: list[type[Any]] = [ParquetWriter, JsonlWriter]
