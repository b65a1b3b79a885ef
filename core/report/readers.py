"""Read samples and per-sample statistics from any supported dataset layout.

A *view* of a dataset gives two things to the report:

* ``samples(n, seed)``: a seeded random sample of ``n`` rows, each normalised to a
  :class:`Sample` (key, dataset, image bytes, caption or LLaVA turns, sizes);
* ``stats(columns, cap)``: a polars frame with one row per sample (at most ``cap``) holding
  ``width``/``height`` (original size), ``caption_len`` and the numeric columns asked for.

Formats (detected from the path by :func:`open_dataset`): parquet file/dir/glob, JSON lines
(plain or LLaVA conversations), a LLaVA JSON list, WebDataset tars (file, dir or glob) and
MosaicML MDS directories (``index.json``, read with ``streaming.StreamingDataset``).
Heavy libraries (streaming) are imported inside functions only.
"""

from __future__ import annotations

import glob as _glob
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import polars as pl

IMAGE_BYTES_COLUMNS = ("image_bytes", "jpg", "jpeg", "png", "webp", "image", "img")
IMAGE_PATH_COLUMNS = ("image_path", "image", "url", "path", "file")
CAPTION_COLUMNS = ("caption", "txt", "text", "prompt", "TEXT")
KEY_COLUMNS = ("key", "__key__", "id")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif")


@dataclass
class Sample:
    key: str
    dataset: str | None = None
    image: bytes | None = None
    image_note: str | None = None
    caption: str | None = None
    turns: list[tuple[str, str]] | None = None
    orig_size: tuple[int, int] | None = None
    stored_size: tuple[int, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# -- normalising one row ----------------------------------------------------------------------
def _first(row: dict, names: Iterable[str], types: tuple) -> tuple[str | None, Any]:
    for n in names:
        v = row.get(n)
        if v is not None and isinstance(v, types):
            return n, v
    return None, None


def _int(v: Any) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def parse_turns(conv: Any) -> list[tuple[str, str]] | None:
    """LLaVA ``conversations`` (list of {from, value}) as (role, text) pairs."""
    if isinstance(conv, str):
        try:
            conv = json.loads(conv)
        except ValueError:
            return None
    if isinstance(conv, dict):
        conv = conv.get("conversations")
    if not isinstance(conv, list):
        return None
    out = []
    for t in conv:
        if isinstance(t, dict) and "value" in t:
            out.append((str(t.get("from", t.get("role", "?"))), str(t["value"])))
    return out or None


def _payload(row: dict) -> dict | None:
    """A LLaVA payload carried in a JSON string column (e.g. ``llava``)."""
    for k, v in row.items():
        if isinstance(v, str) and v.startswith("{") and '"conversations"' in v:
            try:
                d = json.loads(v)
            except ValueError:
                continue
            if isinstance(d, dict):
                return d
    return None


def resolve_image_path(p: str, roots: list[Path]) -> Path | None:
    if p.startswith("file://"):
        p = p[7:]
    if "://" in p:
        return None
    cand = [Path(p)] if os.path.isabs(p) else [r / p for r in roots]
    for c in cand:
        if c.is_file():
            return c
    return None


def normalise(row: dict, roots: list[Path], dataset: str | None = None) -> Sample:
    """Map a row of any layout onto a :class:`Sample`."""
    payload = _payload(row)
    if payload is not None and "conversations" not in row:
        row = {**payload, **{k: v for k, v in row.items() if not (isinstance(v, str) and v.startswith("{"))}}
    kname, key = _first(row, KEY_COLUMNS, (str, int))
    s = Sample(key=str(key) if key is not None else "?", dataset=row.get("dataset") or dataset)
    _, img = _first(row, IMAGE_BYTES_COLUMNS, (bytes, bytearray, memoryview))
    if img is not None:
        s.image = bytes(img)
    else:
        pname, p = _first(row, IMAGE_PATH_COLUMNS, (str, list))
        if isinstance(p, list):
            s.extra["images"] = len(p)
            p = p[0] if p and isinstance(p[0], str) else None
        if isinstance(p, str):
            f = resolve_image_path(p, roots)
            if f is not None:
                s.image = f.read_bytes()
            else:
                s.image_note = f"image not available here: {p}"
    if s.image is None and s.image_note is None:
        s.image_note = "no image in this sample"
    s.turns = parse_turns(row.get("conversations"))
    _, cap = _first(row, CAPTION_COLUMNS, (str,))
    s.caption = cap
    w, h = _int(row.get("width", row.get("original_width"))), _int(row.get("height", row.get("original_height")))
    if w and h:
        s.orig_size = (w, h)
    sw, sh = _int(row.get("stored_width")), _int(row.get("stored_height"))
    if sw and sh:
        s.stored_size = (sw, sh)
    elif s.image is not None:
        s.stored_size = image_size(s.image)
    for k, v in row.items():
        if k in KEY_COLUMNS or k in ("dataset", "conversations", "width", "height", "stored_width", "stored_height"):
            continue
        if k in CAPTION_COLUMNS and v == s.caption:
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool) or isinstance(v, str) and len(v) <= 120 and not v.startswith("{"):
            s.extra[k] = v
        elif isinstance(v, (bytes, bytearray)) and k not in IMAGE_BYTES_COLUMNS:
            s.extra[k] = f"<{len(v)} bytes>"
        elif isinstance(v, np.ndarray):
            s.extra[k] = f"<array {v.dtype} {list(v.shape)}>"
    return s


def image_size(b: bytes) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(b)) as im:
            return im.size
    except Exception:
        return None


def caption_len_of(row: dict) -> int | None:
    _, cap = _first(row, CAPTION_COLUMNS, (str,))
    if cap is not None:
        return len(cap)
    turns = parse_turns(row.get("conversations")) or (parse_turns(_payload(row)) if _payload(row) else None)
    if turns:
        answers = [t for r, t in turns if r in ("gpt", "assistant")]
        return len(answers[0]) if answers else len(turns[-1][1])
    return None


def _stats_rows(rows: list[dict], numeric: list[str]) -> pl.DataFrame:
    data: dict[str, list] = {"width": [], "height": [], "caption_len": [], "dataset": []}
    for c in numeric:
        data[c] = []
    for r in rows:
        data["width"].append(_int(r.get("width", r.get("original_width"))))
        data["height"].append(_int(r.get("height", r.get("original_height"))))
        data["caption_len"].append(caption_len_of(r))
        data["dataset"].append(r.get("dataset") if isinstance(r.get("dataset"), str) else None)
        for c in numeric:
            v = r.get(c)
            data[c].append(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None)
    return pl.DataFrame(data, schema={"width": pl.Int64, "height": pl.Int64, "caption_len": pl.Int64, "dataset": pl.String, **{c: pl.Float64 for c in numeric}})


def stats_from_lazy(lf: pl.LazyFrame, numeric: list[str], cap: int) -> pl.DataFrame:
    """Stats columns of a table, vectorised (reads only the columns needed)."""
    schema = lf.collect_schema()
    exprs = []
    for name, alts in (("width", ("width", "original_width")), ("height", ("height", "original_height"))):
        col = next((c for c in alts if c in schema and schema[c].is_numeric()), None)
        exprs.append(pl.col(col).cast(pl.Int64).alias(name) if col else pl.lit(None, dtype=pl.Int64).alias(name))
    cap_col = next((c for c in CAPTION_COLUMNS if c in schema and schema[c] == pl.String), None)
    exprs.append(pl.col(cap_col).str.len_chars().cast(pl.Int64).alias("caption_len") if cap_col else pl.lit(None, dtype=pl.Int64).alias("caption_len"))
    exprs.append(pl.col("dataset").cast(pl.String) if "dataset" in schema else pl.lit(None, dtype=pl.String).alias("dataset"))
    for c in numeric:
        ok = c in schema and schema[c].is_numeric()
        exprs.append(pl.col(c).cast(pl.Float64).alias(c) if ok else pl.lit(None, dtype=pl.Float64).alias(c))
    df = lf.head(cap).select(exprs).collect()
    if cap_col is None and "conversations" not in schema:
        # a LLaVA payload in a JSON string column: caption length of the first answer
        js = [c for c, t in schema.items() if t == pl.String and c not in ("key", "dataset")]
        for c in js:
            vals = lf.head(cap).select(c).collect().to_series().to_list()
            if vals and isinstance(vals[0], str) and '"conversations"' in vals[0]:
                df = df.with_columns(pl.Series("caption_len", [caption_len_of({c: v}) for v in vals], dtype=pl.Int64))
                break
    return df


# -- views ---------------------------------------------------------------------------------------
class View:
    """A dataset on disk: count, stats and a seeded sample."""

    fmt = "?"

    def __init__(self, path: str, roots: list[Path] | None = None, dataset: str | None = None):
        self.path = path
        self.roots = roots or []
        self.dataset = dataset
        self.notes: list[str] = []

    def count(self) -> int:
        raise TypeError(f"{type(self).__name__} must implement count()")

    def stats(self, numeric: list[str], cap: int) -> pl.DataFrame:
        raise TypeError(f"{type(self).__name__} must implement stats()")

    def samples(self, n: int, seed: int) -> list[Sample]:
        raise TypeError(f"{type(self).__name__} must implement samples()")

    @staticmethod
    def pick(total: int, n: int, seed: int) -> list[int]:
        if total <= n:
            return list(range(total))
        rng = np.random.default_rng(seed)
        return sorted(int(i) for i in rng.choice(total, size=n, replace=False))


def _expand(path: str, exts: tuple[str, ...]) -> list[str]:
    """A file, a directory (its files with these extensions, recursively, no hidden ones) or a glob."""
    p = Path(path)
    if any(ch in path for ch in "*?["):
        files = sorted(_glob.glob(path, recursive=True))
    elif p.is_dir():
        files = sorted(
            str(f) for f in p.rglob("*")
            if f.is_file() and f.name.endswith(exts) and not any(part.startswith((".", "_")) for part in f.relative_to(p).parts)
        )
    else:
        files = [path] if p.exists() else []
    return [f for f in files if f.endswith(exts)]


class ParquetView(View):
    fmt = "parquet"

    def __init__(self, path, roots=None, dataset=None):
        super().__init__(path, roots, dataset)
        self.files = _expand(path, (".parquet",))
        if not self.files:
            raise FileNotFoundError(f"no parquet files at {path}")

    def lazy(self) -> pl.LazyFrame:
        return pl.scan_parquet(self.files)

    def count(self):
        return int(self.lazy().select(pl.len()).collect().item())

    def stats(self, numeric, cap):
        return stats_from_lazy(self.lazy(), numeric, cap)

    def samples(self, n, seed):
        idx = self.pick(self.count(), n, seed)
        df = self.lazy().with_row_index("__i").filter(pl.col("__i").is_in(pl.Series(idx, dtype=pl.UInt32).implode())).drop("__i").collect()
        return [normalise(r, self.roots, self.dataset) for r in df.iter_rows(named=True)]


class JsonView(View):
    """JSON lines (plain rows or LLaVA payloads) or a JSON list (``llava-json``)."""

    fmt = "jsonl"

    def __init__(self, path, roots=None, dataset=None):
        super().__init__(path, roots, dataset)
        self.files = _expand(path, (".jsonl", ".json"))
        if not self.files:
            raise FileNotFoundError(f"no .jsonl/.json files at {path}")
        self.roots = [*self.roots, *{Path(f).parent for f in self.files}]
        self._rows: list[dict] | None = None

    def rows(self, cap: int | None = None) -> list[dict]:
        if self._rows is None:
            rows: list[dict] = []
            for f in self.files:
                with open(f) as fh:
                    if f.endswith(".json"):
                        doc = json.load(fh)
                        rows.extend(doc if isinstance(doc, list) else [doc])
                    else:
                        rows.extend(json.loads(line) for line in fh if line.strip())
            self._rows = rows
        if any(isinstance(r, dict) and "conversations" in r for r in self._rows[:5]):
            self.fmt = "llava"
        return self._rows if cap is None else self._rows[:cap]

    def count(self):
        return len(self.rows())

    def stats(self, numeric, cap):
        rows = self.rows(cap)
        df = _stats_rows(rows, numeric)
        if df.height and df["width"].null_count() == df.height:
            # no size metadata (LLaVA): the image files' headers give the stored size
            from PIL import Image

            sizes = []
            for r in rows[:5000]:
                _, p = _first(r, IMAGE_PATH_COLUMNS, (str, list))
                p = p[0] if isinstance(p, list) and p and isinstance(p[0], str) else p
                f = resolve_image_path(p, self.roots) if isinstance(p, str) else None
                try:
                    with Image.open(f) as im:
                        sizes.append(im.size)
                except Exception:
                    sizes.append((None, None))
            sizes += [(None, None)] * (df.height - len(sizes))
            df = df.with_columns(pl.Series("width", [w for w, _ in sizes], dtype=pl.Int64),
                                 pl.Series("height", [h for _, h in sizes], dtype=pl.Int64))
            self.notes.append("width/height histograms show the stored image files' sizes (no size metadata in the rows)")
        return df

    def samples(self, n, seed):
        rows = self.rows()
        return [normalise(rows[i], self.roots, self.dataset) for i in self.pick(len(rows), n, seed)]


def _decode_member(ext: str, data: bytes) -> Any:
    last = ext.rsplit(".", 1)[-1]
    if last in ("txt", "text", "caption"):
        return data.decode("utf-8", "replace")
    if last == "cls":
        try:
            return int(data.decode().strip())
        except ValueError:
            return data.decode("utf-8", "replace")
    if last == "json":
        try:
            return json.loads(data)
        except ValueError:
            return None
    if last in ("pickle", "pyd"):
        import pickle

        try:
            obj = pickle.loads(data)
        except Exception:
            return f"<{len(data)} bytes pickle>"
        if isinstance(obj, dict):
            return {k: (f"<array {v.dtype} {list(v.shape)}>" if isinstance(v, np.ndarray) else v) for k, v in obj.items()}
        return obj
    if last == "npy":
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
            return f"<array {arr.dtype} {list(arr.shape)}>"
        except Exception:
            return f"<{len(data)} bytes>"
    return data


def _flatten_sample(key: str, members: dict[str, Any]) -> dict:
    row: dict[str, Any] = {"__key__": key}
    for ext, v in members.items():
        last = ext.rsplit(".", 1)[-1]
        if last in IMAGE_EXTS and isinstance(v, bytes) and "." not in ext:
            row.setdefault("image_bytes", v)
            continue
        if ext in ("txt", "caption"):
            row["caption"] = v
        elif ext == "json" and isinstance(v, dict):
            for k, x in v.items():
                row.setdefault(k, x)
        elif last == "pickle" and isinstance(v, dict):
            for k, x in v.items():
                row.setdefault(k, x)
        else:
            name = ext.rsplit(".", 1)[0] if "." in ext else ext
            row.setdefault(name, v)
    return row


class WebDatasetView(View):
    """WebDataset tar shards: members grouped by key (basename up to the first dot); sidecar
    tars holding the same keys merge into the same samples."""

    fmt = "webdataset"
    SMALL = 1 << 16

    def __init__(self, path, roots=None, dataset=None, max_scan: int = 100_000):
        super().__init__(path, roots, dataset)
        self.files = _expand(path, (".tar",))
        if not self.files:
            raise FileNotFoundError(f"no .tar files at {path}")
        self.max_scan = max_scan
        self._index: dict[str, dict[str, tuple[str, int, int]]] | None = None

    def index(self) -> dict[str, dict[str, tuple[str, int, int]]]:
        """key -> {ext: (tar path, data offset, size)}, in shard order (headers only)."""
        if self._index is None:
            idx: dict[str, dict[str, tuple[str, int, int]]] = {}
            for f in self.files:
                with tarfile.open(f, "r") as tf:
                    for m in tf:
                        if not m.isfile():
                            continue
                        d, base = os.path.split(m.name)
                        stem, _, ext = base.partition(".")
                        key = f"{d}/{stem}" if d else stem
                        if key not in idx and len(idx) >= self.max_scan:
                            continue
                        idx.setdefault(key, {})[ext] = (f, m.offset_data, m.size)
            if len(idx) >= self.max_scan:
                self.notes.append(f"only the first {self.max_scan} samples of the tars were indexed")
            self._index = idx
        return self._index

    def _read(self, members: dict[str, tuple[str, int, int]], small_only: bool) -> dict[str, Any]:
        out = {}
        for ext, (f, off, size) in members.items():
            if small_only and (ext.rsplit(".", 1)[-1] in IMAGE_EXTS or size > self.SMALL):
                continue
            with open(f, "rb") as fh:
                fh.seek(off)
                out[ext] = _decode_member(ext, fh.read(size))
        return out

    def count(self):
        return len(self.index())

    def stats(self, numeric, cap):
        rows = []
        for key, members in list(self.index().items())[:cap]:
            row = _flatten_sample(key, self._read(members, small_only=True))
            if row.get("width") is None:
                img = next((members[e] for e in members if e in IMAGE_EXTS), None)
                if img is not None:  # no size metadata: the stored size is the only one known
                    with open(img[0], "rb") as fh:
                        fh.seek(img[1])
                        sz = image_size(fh.read(img[2]))
                    if sz:
                        row["width"], row["height"] = sz
            rows.append(row)
        return _stats_rows(rows, numeric)

    def samples(self, n, seed):
        items = list(self.index().items())
        out = []
        for i in self.pick(len(items), n, seed):
            key, members = items[i]
            s = normalise(_flatten_sample(key, self._read(members, small_only=False)), self.roots, self.dataset)
            s.key = key
            s.extra["members"] = ", ".join(sorted(members))
            out.append(s)
        return out


class MdsView(View):
    """A MosaicML MDS directory (``index.json``), read with ``streaming.StreamingDataset``."""

    fmt = "mds"

    def __init__(self, path, roots=None, dataset=None):
        super().__init__(path, roots, dataset)
        if not (Path(path) / "index.json").is_file():
            raise FileNotFoundError(f"no index.json in {path}")
        self._ds = None

    def ds(self):
        if self._ds is None:
            from streaming.base import StreamingDataset
            from streaming.base.util import clean_stale_shared_memory

            clean_stale_shared_memory()
            self._ds = StreamingDataset(local=str(Path(self.path).resolve()), remote=None, shuffle=False, batch_size=1)
        return self._ds

    def _row(self, i: int) -> dict:
        row = dict(self.ds()[i])
        for k, v in list(row.items()):
            if hasattr(v, "save") and hasattr(v, "size"):  # a PIL image (jpeg/png encodings)
                buf = io.BytesIO()
                v.convert("RGB").save(buf, format="JPEG", quality=90)
                row[k] = buf.getvalue()
        return row

    def count(self):
        return len(self.ds())

    def stats(self, numeric, cap):
        # read only the small columns: image columns decode lazily only when asked
        ds = self.ds()
        rows = []
        for i in range(min(cap, len(ds))):
            sample = ds[i]
            rows.append({k: v for k, v in sample.items() if not isinstance(v, (bytes, bytearray)) and not hasattr(v, "save")})
        return _stats_rows(rows, numeric)

    def samples(self, n, seed):
        ds = self.ds()
        out = []
        for i in self.pick(len(ds), n, seed):
            s = normalise(self._row(i), self.roots, self.dataset)
            if s.key == "?":
                s.key = f"#{i}"
            out.append(s)
        return out


def detect(path: str) -> str:
    """The format of a dataset path: mmprep, mds, parquet, webdataset, jsonl."""
    p = Path(path)
    if p.is_dir():
        if (p / "_mmprep" / "manifest.json").is_file():
            return "mmprep"
        if (p / "index.json").is_file():
            return "mds"
        for fmt, exts in (("parquet", (".parquet",)), ("webdataset", (".tar",)), ("jsonl", (".jsonl", ".json"))):
            if _expand(path, exts):
                return fmt
        raise FileNotFoundError(f"{path}: no mmprep output, MDS index.json, parquet, tar or JSON lines files found")
    name = path.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".tar"):
        return "webdataset"
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    if p.name == "index.json":
        return "mds"
    raise FileNotFoundError(f"{path}: cannot tell the dataset format (expected a directory, *.parquet, *.tar or *.jsonl/*.json)")


def open_view(fmt: str, path: str, roots: list[Path] | None = None, dataset: str | None = None) -> View:
    if fmt == "mds":
        return MdsView(str(Path(path).parent) if Path(path).name == "index.json" else path, roots, dataset)
    cls = {"parquet": ParquetView, "webdataset": WebDatasetView, "jsonl": JsonView, "llava": JsonView}[fmt]
    return cls(path, roots, dataset)
