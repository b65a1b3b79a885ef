"""Table sources: parquet, csv, jsonl, json on any fsspec URL."""

from __future__ import annotations

import io
import os
from typing import Any

import polars as pl
from pydantic import Field, field_validator

from ..component import Options, Source
from ..errors import ConfigError
from ..storage import expand_paths, is_local, open_url, redact, url_filesystem


class TableOptions(Options):
    path: str | list[str] = Field(description="File path, list of paths or glob; any fsspec URL")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options (credentials, endpoint)")
    columns: list[str] | None = Field(default=None, description="Columns to read (before rename); default all")
    rename: dict[str, str] = Field(default_factory=dict, description="Rename columns onto the shared vocabulary")

    @field_validator("path")
    @classmethod
    def _non_empty(cls, v):
        if not v:
            raise ValueError("must name at least one file")
        return v


class TableSource(Source):
    """Base of the table sources."""

    Options = TableOptions
    fmt = ""

    def files(self) -> list[str]:
        o = self.options
        paths = o.path if isinstance(o.path, list) else [o.path]
        paths = [self.context.resolve(p) for p in paths]
        files = expand_paths(paths, o.storage_options)
        if not files:
            raise ConfigError(f"path: no file matches {o.path!r}")
        return files

    def fingerprint(self) -> dict[str, Any]:
        fs_sizes = {}
        for f in self.files():
            fs, p = url_filesystem(f, self.options.storage_options)
            try:
                fs_sizes[f] = fs.size(p)
            except Exception:
                fs_sizes[f] = None
        return {"files": fs_sizes}

    def scan(self) -> pl.LazyFrame:
        files = self.files()
        try:
            if all(is_local(f) for f in files):
                lf = self._scan_local(files)
            else:
                lf = self._scan_remote(files)
            schema = lf.collect_schema()
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(f"path: cannot read {self.fmt} input {files[0]!r}: {type(e).__name__}: {e}") from None
        o = self.options
        if o.columns is not None:
            missing = [c for c in o.columns if c not in schema]
            if missing:
                raise ConfigError(f"columns: {missing} not in the input (it has {schema.names()})")
            lf = lf.select(o.columns)
            schema = lf.collect_schema()
        if o.rename:
            missing = [c for c in o.rename if c not in schema]
            if missing:
                raise ConfigError(f"rename: {missing} not in the input (it has {schema.names()})")
            lf = lf.rename(o.rename)
        return lf

    def _scan_local(self, files: list[str]) -> pl.LazyFrame:
        raise TypeError

    def _scan_remote(self, files: list[str]) -> pl.LazyFrame:
        frames = []
        for f in files:
            with open_url(f, self.options.storage_options) as fh:
                frames.append(self._read_bytes(fh.read()))
        return pl.concat(frames, how="diagonal").lazy() if len(frames) > 1 else frames[0].lazy()

    def _read_bytes(self, data: bytes) -> pl.DataFrame:
        raise TypeError


class ParquetSource(TableSource):
    """Read parquet files (local or any fsspec URL), lazily and with projection pushdown.

    Supports :meth:`~mmprep.component.Source.take`: a plan keeps only each planned row's
    position, and units read the binary columns (image bytes) straight from the files, one
    sliced scan per file a unit touches (polars reads only the row groups in the slice)."""

    name = "parquet"
    fmt = "parquet"
    supports_take = True

    def _scan_local(self, files):
        return pl.scan_parquet(files)

    def _scan_remote(self, files):
        # polars scans fsspec file objects lazily (range reads, projection pushdown).
        # (pl.scan_pyarrow_dataset is not used: it counts 0 rows after with_row_index.)
        fs, _ = url_filesystem(files[0], self.options.storage_options)
        handles = [fs.open(url_filesystem(f, self.options.storage_options)[1], "rb") for f in files]
        return pl.scan_parquet(handles)

    # -- take -------------------------------------------------------------------------------
    def _identity(self, url: str, src) -> dict[str, Any]:
        """Size plus what tells a rewrite apart (local mtime, object ETag/last-modified), of the
        file ``src`` (from :meth:`_open`) holds open: a remote handle already has its details."""
        if isinstance(src, str):
            st = os.stat(src)
            return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        info = getattr(src, "details", None)
        if not info:
            fs, p = url_filesystem(url, self.options.storage_options)
            info = fs.info(p)
        ident = {"size": info.get("size")}
        for k in ("ETag", "etag", "LastModified", "last_modified", "mtime", "updated", "generation"):
            if info.get(k) is not None:
                ident[k] = str(info[k])
        return ident

    def _open(self, url: str):
        if is_local(url):
            return url[len("file://"):] if url.startswith("file://") else url
        fs, p = url_filesystem(url, self.options.storage_options)
        return fs.open(p, "rb")

    def take_state(self) -> dict[str, Any]:
        import pyarrow.parquet as pq

        files = []
        for f in self.files():
            src = self._open(f)
            try:
                files.append({"url": f, "rows": pq.read_metadata(src).num_rows, **self._identity(f, src)})
            finally:
                if not isinstance(src, str):
                    src.close()
        return {"files": files}

    def take(self, columns: list[str], rows, state: dict[str, Any]) -> pl.DataFrame:
        import numpy as np

        files = state["files"]
        starts = np.cumsum([0] + [f["rows"] for f in files])
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= starts[-1]):
            raise ValueError(f"take: row positions outside the input's {starts[-1]} rows")
        renamed = {v: k for k, v in self.options.rename.items()}  # name in scan() -> name in the file
        src_cols = [renamed.get(c, c) for c in columns]
        which = np.searchsorted(starts, rows, side="right") - 1
        pieces, order = [], []
        for fi in np.unique(which):
            f = files[fi]
            sel = np.nonzero(which == fi)[0]
            local = rows[sel] - starts[fi]
            lo, hi = int(local.min()), int(local.max()) + 1
            src = self._open(f["url"])
            try:
                now = self._identity(f["url"], src)
                changed = [f"{k} {v} -> {now.get(k)}" for k, v in f.items() if k not in ("url", "rows") and now.get(k) != v]
                if changed:
                    raise RuntimeError(
                        f"input file {redact(f['url'])} changed since the plan was made ({', '.join(changed)}); "
                        "its rows can no longer be read back: rerun with --overwrite"
                    )
                chunk = pl.scan_parquet(src).slice(lo, hi - lo).select(src_cols).collect()
            finally:
                if not isinstance(src, str):
                    src.close()
            if chunk.height != hi - lo:
                raise RuntimeError(f"input file {redact(f['url'])} has fewer rows than planned; rerun with --overwrite")
            pieces.append(chunk[local - lo])
            order.append(sel)
        if not pieces:
            return pl.DataFrame({c: [] for c in columns}).clear()
        out = pl.concat(pieces) if len(pieces) > 1 else pieces[0]
        pos = np.concatenate(order)
        if not np.all(pos[:-1] < pos[1:]):  # back into the asked order
            out = out[np.argsort(pos, kind="stable")]
        return out.rename(dict(zip(src_cols, columns)))


class CsvOptions(TableOptions):
    separator: str = ","
    has_header: bool = True
    encoding: str = "utf8"


class CsvSource(TableSource):
    """Read CSV files (local or any fsspec URL)."""

    name = "csv"
    fmt = "csv"
    Options = CsvOptions

    def _kw(self):
        o = self.options
        return dict(separator=o.separator, has_header=o.has_header, encoding=o.encoding if o.encoding in ("utf8", "utf8-lossy") else "utf8")

    def _scan_local(self, files):
        return pl.scan_csv(files, **self._kw())

    def _read_bytes(self, data):
        return pl.read_csv(io.BytesIO(data), **self._kw())


class JsonlSource(TableSource):
    """Read JSON-lines files (one object per line; local or any fsspec URL)."""

    name = "jsonl"
    fmt = "jsonl"

    def _scan_local(self, files):
        return pl.scan_ndjson(files, infer_schema_length=10_000)

    def _read_bytes(self, data):
        return pl.read_ndjson(io.BytesIO(data), infer_schema_length=10_000)


class JsonOptions(TableOptions):
    records_key: str | None = Field(default=None, description="Key of the list of records when the file is an object")


class JsonSource(TableSource):
    """Read JSON files holding a list of records (LLaVA style), local or any fsspec URL."""

    name = "json"
    fmt = "json"
    Options = JsonOptions

    def _scan_local(self, files):
        frames = []
        for f in files:
            with open(f, "rb") as fh:
                frames.append(self._read_bytes(fh.read()))
        return pl.concat(frames, how="diagonal").lazy() if len(frames) > 1 else frames[0].lazy()

    def _read_bytes(self, data):
        import json

        doc = json.loads(data)
        if self.options.records_key:
            doc = doc[self.options.records_key]
        if not isinstance(doc, list):
            raise ValueError("expected a JSON list of records (set records_key for an object)")
        return pl.DataFrame(doc, infer_schema_length=None)


ALL = [ParquetSource, CsvSource, JsonlSource, JsonSource]
