"""Writers of LLaVA payloads: ``llava-jsonl`` and ``llava-json``.

Both read the payload column (a JSON string per row, made by a ``llava-*`` formatter).

Layout under the writer's root (``OUT/<path>``):

* ``llava-jsonl``: ``part-<unit>.jsonl`` per unit (one payload per line), or
  ``<dataset>/part-<unit>.jsonl`` with ``by_dataset``; with ``merge`` (implied by
  ``data_yaml``) ``finalize`` also concatenates them, in unit order, into ``data.jsonl`` or
  ``<dataset>.jsonl``;
* ``llava-json``: per-unit parts under ``_parts/`` and, at ``finalize``, the single JSON list
  LLaVA trainers load (``data.json``, or ``<dataset>.json`` with ``by_dataset``);
* ``data_yaml``: a LaViDa-O data YAML pointing at the merged files (``sampling_strategy: all``,
  no ``preprocess_fn`` = LaViDa-O's identity), carrying ``name``, ``length_group``,
  ``weights`` and ``batch_sizes``.

Merged files are written to a temporary name and renamed, so a reader never sees a partial
file, and ``finalize`` can run again.

Images: with the media stage on, every image it materialised is written as a file and the
payload paths (the formatters' ``mmprep-media://`` placeholders) are rewritten to it. The
main image (``image_bytes``) becomes ``<key>.<ext>``; an image of one of the media stage's
``extra_image_columns`` ``c`` (``c_media``: multi-image lists, edit inputs and targets)
becomes ``<key>-<c>.<ext>``, or ``<key>-<c>-<i>.<ext>`` for the i-th image of a list. The
files go to ``images/`` under the writer root (committed with the unit), or to
``images_url`` (any directory or fsspec URL, e.g. ``s3://bucket/llava-images/``: written
during the unit, each file atomically — a temp name then a rename locally, one PUT on an
object store — with deterministic names, so a redone unit rewrites the same files). Payload
paths get ``image_base`` when set, else ``images_url``, else the absolute path of ``images/``
under the run's output when known, else ``images/`` relative to the writer root.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import Field, model_validator

from mmprep import Options, UnitInfo, Writer, WriterOptions
from mmprep.config import slugify
from mmprep.storage import is_local, url_filesystem

from .payload import EXTRA_BYTES_SUFFIX, MEDIA_SCHEME

PARTS = "_parts"


class DatasetEntry(Options):
    name: str | None = Field(default=None, description="Name written to the data YAML (default: the dataset's name)")
    length_group: str = Field(default="default", description="LaViDa-O length_group")


class DataYamlOptions(Options):
    file: str = Field(default="data.yaml", description="File name under the writer root")
    datasets: dict[str, DatasetEntry] = Field(default_factory=dict, description="Per mmprep dataset name: YAML name and length_group")
    weights: dict[str, float] | None = Field(default=None, description="weights per length_group")
    batch_sizes: dict[str, float] | None = Field(default=None, description="batch_sizes per length_group")
    absolute_paths: bool = Field(default=True, description="json_path as absolute paths (LaViDa-O opens them relative to its cwd)")


class LlavaWriterOptions(WriterOptions):
    column: str = Field(default="llava", description="Payload column (JSON strings)")
    by_dataset: bool = Field(default=False, description="One file per dataset instead of one for all")
    data_yaml: DataYamlOptions | None = Field(default=None, description="Also write a LaViDa-O data YAML (implies by_dataset and merged files)")
    images: bool = Field(default=True, description="With image_bytes present, write images/<key>.<ext> and point the payloads at them")
    image_base: str | None = Field(default=None, description="Prefix of rewritten image paths (default: images_url, else the absolute path of images/ when known)")
    images_url: str | None = Field(
        default=None,
        description="Write the images to this directory or fsspec URL (e.g. s3://bucket/llava-images/) instead of images/ under the writer root",
    )
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for images_url (credentials, endpoint); masked in everything stored")

    @model_validator(mode="after")
    def _yaml(self):
        if self.data_yaml is not None:
            self.by_dataset = True
        return self


class LlavaJsonlOptions(LlavaWriterOptions):
    merge: bool = Field(default=False, description="Also concatenate the per-unit files into one file (per dataset with by_dataset)")

    @model_validator(mode="after")
    def _merge(self):
        if self.data_yaml is not None:
            self.merge = True
        return self


def _image_columns(df: pl.DataFrame) -> list[str]:
    """The media stage's image bytes in the rows: ``image_bytes`` and every ``<c>_media`` of its
    ``extra_image_columns`` (recognised by ``c`` beside it), binary or lists of binary."""
    out = []
    for c, dt in df.schema.items():
        inner = dt.inner if isinstance(dt, (pl.List, pl.Array)) else dt
        if inner != pl.Binary:
            continue
        if c == "image_bytes" or (c.endswith(EXTRA_BYTES_SUFFIX) and c[: -len(EXTRA_BYTES_SUFFIX)] in df.columns):
            out.append(c)
    return out


class _LlavaWriter(Writer):
    """Shared logic of the LLaVA writers."""

    parts_dir = ""
    merged_ext = ""

    # -- per unit ----------------------------------------------------------------------
    def part_path(self, unit_id: str, slug: str | None) -> str:
        base = f"{self.parts_dir}/" if self.parts_dir else ""
        if slug is not None:
            return f"{base}{slug}/part-{unit_id}.jsonl"
        return f"{base}part-{unit_id}.jsonl"

    def _images_url(self) -> str | None:
        u = self.options.images_url
        return None if u is None else self.context.resolve(u).rstrip("/")

    def _image_prefix(self) -> str:
        o = self.options
        if o.image_base:
            return o.image_base.rstrip("/") + "/"
        if o.images_url:
            return self._images_url() + "/"
        out = getattr(self.context, "out", None)
        if out:
            return str((Path(out) / o.path / "images").resolve()) + "/"
        return "images/"

    def write_unit(self, df: pl.DataFrame, unit: UnitInfo, staging: Path) -> dict[str, Any]:
        o = self.options
        if df.height == 0 and o.column not in df.columns:  # every row of the unit was rejected before formatting
            return {"rows": 0, "files": [], "datasets": {}, "images": 0}
        if o.column not in df.columns:
            raise KeyError(f"{self.name} writer: payload column {o.column!r} not in the rows (add a llava-* formatter; have {df.columns})")
        stats: dict[str, Any] = {"rows": df.height, "files": [], "datasets": {}, "images": 0}
        col = pl.col(o.column)
        if o.images and _image_columns(df):
            stats["images"] = self._write_images(df, staging)
            col = col.str.replace_all(MEDIA_SCHEME, self._image_prefix(), literal=True)
        if o.by_dataset:
            names = df["dataset"] if "dataset" in df.columns else pl.Series([unit.datasets[0] if unit.datasets else "data"] * df.height)
            frame = pl.DataFrame({"dataset": names, "p": df.select(col).to_series()})
            groups = [(n, frame.filter(pl.col("dataset") == n)["p"]) for n in frame["dataset"].unique(maintain_order=True).to_list()]
        else:
            groups = [(None, df.select(col).to_series())]
        for name, payloads in groups:
            slug = slugify(name) if name is not None else None
            rel = self.part_path(unit.id, slug)
            dest = staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            _write_lines(payloads, dest)
            stats["files"].append(rel)
            if name is not None:
                stats["datasets"][name] = {"slug": slug, "rows": len(payloads), "file": rel}
        return stats

    def _write_images(self, df: pl.DataFrame, staging: Path) -> int:
        from .payload import media_files

        frames = []
        for c in _image_columns(df):
            f = df.select(media_files(df, c).alias("n"), pl.col(c).alias("d"))
            if isinstance(df.schema[c], (pl.List, pl.Array)):
                f = f.explode("n", "d")
            frames.append(f.filter(pl.col("n").is_not_null() & pl.col("d").is_not_null()))
        files = pl.concat(frames)
        url = self._images_url()
        if url is None:
            d = staging / "images"
            d.mkdir(parents=True, exist_ok=True)
            for name, data in files.iter_rows():  # one file per image: truly per sample
                (d / name).write_bytes(data)
        elif is_local(url):
            d = Path(url.removeprefix("file://"))
            d.mkdir(parents=True, exist_ok=True)
            for name, data in files.iter_rows():
                tmp = d / f".{name}.tmp-{os.getpid()}"
                tmp.write_bytes(data)
                os.replace(tmp, d / name)
        else:
            fs, root = url_filesystem(url, self.options.storage_options)
            # one PUT per object (atomic on object stores); fsspec runs a batch concurrently
            batch: dict[str, bytes] = {}
            size = 0
            for name, data in files.iter_rows():
                batch[f"{root}/{name}"] = data
                size += len(data)
                if size >= 64 << 20:
                    fs.pipe(batch)
                    batch, size = {}, 0
            if batch:
                fs.pipe(batch)
        return files.height

    # -- finalize ----------------------------------------------------------------------
    def _groups(self, records: list[dict[str, Any]]) -> dict[str | None, list[str]]:
        """Output group (dataset name, or None) -> part files in unit order."""
        groups: dict[str | None, list[str]] = {}
        for rec in sorted(records, key=lambda r: r["index"]):
            st = rec.get("stats") or {}
            if self.options.by_dataset:
                for name, info in (st.get("datasets") or {}).items():
                    groups.setdefault(name, []).append(info["file"])
            else:
                for f in st.get("files", []):
                    groups.setdefault(None, []).append(f)
        return groups

    def merged_name(self, name: str | None) -> str:
        return f"{slugify(name)}.{self.merged_ext}" if name is not None else f"data.{self.merged_ext}"

    def _merge(self, root: Path, records: list[dict[str, Any]], manifest: dict[str, Any]) -> dict[str, Any]:
        groups = self._groups(records)
        if self.options.by_dataset:  # datasets with no written row still get an (empty) file
            for name in (manifest.get("datasets") or {}):
                groups.setdefault(name, [])
        elif not groups:
            groups[None] = []
        files: dict[str, dict[str, Any]] = {}
        for name, parts in groups.items():
            target = root / self.merged_name(name)
            rows = self._assemble(root, parts, target)
            files[self.merged_name(name)] = {"dataset": name, "rows": rows}
        info: dict[str, Any] = {"files": files}
        if self.options.data_yaml is not None:
            info["data_yaml"] = self._write_yaml(root, files, manifest)
        return info

    def _assemble(self, root: Path, parts: list[str], target: Path) -> int:
        raise TypeError(f"writer {self.name!r} defines no _assemble()")

    def _write_yaml(self, root: Path, files: dict[str, dict[str, Any]], manifest: dict[str, Any]) -> str:
        import yaml

        y = self.options.data_yaml
        entries = []
        skipped = []
        for fname, info in files.items():
            ds = info["dataset"]
            if not info["rows"]:
                skipped.append(ds)  # LaViDa-O loads sample 0 of every dataset: leave empty ones out
                continue
            e = y.datasets.get(ds) or DatasetEntry()
            path = root / fname
            entries.append(
                {
                    "name": e.name or ds,
                    "json_path": str(path.resolve()) if y.absolute_paths else fname,
                    "sampling_strategy": "all",
                    "length_group": e.length_group,
                }
            )
        doc: dict[str, Any] = {"datasets": entries}
        if y.weights is not None:
            doc["weights"] = y.weights
        if y.batch_sizes is not None:
            doc["batch_sizes"] = y.batch_sizes
        text = (
            "# LaViDa-O data config written by mmprep-llava: payloads are final (no preprocess_fn),\n"
            f"# made by config {manifest.get('config_hash', '?')}.\n" + yaml.safe_dump(doc, sort_keys=False)
        )
        if skipped:
            text += "# datasets with no written sample (left out): " + ", ".join(map(str, skipped)) + "\n"
        target = root / y.file
        _atomic_write_text(target, text)
        return y.file

    # -- verify ------------------------------------------------------------------------
    def verify(self, root, manifest):
        problems: list[str] = []
        units = {u["id"]: u for u in manifest.get("units", [])}
        info = {}
        for w in manifest.get("writers", []):
            if w.get("type") == self.name and w.get("path", "") == self.options.path:
                info = w.get("info") or {}
        for uid, u in units.items():
            if not u.get("rows_written"):
                continue
            slug = slugify(u["dataset"]) if self.options.by_dataset and u.get("dataset") else None
            found = [f for f in [root / self.part_path(uid, slug)] if f.exists()]
            if not found:
                problems.append(f"{root}: no part file for unit {uid}")
                continue
            n = 0
            for f in found:
                try:
                    n += _count_jsonl(f)
                except ValueError as e:
                    problems.append(f"{f}: {e}")
            if n != u["rows_written"]:
                problems.append(f"{root}: unit {uid} has {n} payloads, the record says {u['rows_written']}")
        for fname, finfo in (info.get("files") or {}).items():
            f = root / fname
            if not f.exists():
                problems.append(f"{f}: missing")
                continue
            try:
                n = self._count_merged(f)
            except ValueError as e:
                problems.append(f"{f}: {e}")
                continue
            if n != finfo.get("rows"):
                problems.append(f"{f}: {n} payloads, the manifest says {finfo.get('rows')}")
        return problems

    def _count_merged(self, path: Path) -> int:
        return _count_jsonl(path)


class LlavaJsonlWriter(_LlavaWriter):
    """Write LLaVA payloads as JSON lines, one file per unit (optionally merged, + LaViDa-O data YAML)."""

    name = "llava-jsonl"
    Options = LlavaJsonlOptions
    merged_ext = "jsonl"

    def finalize(self, root, records, manifest):
        if not self.options.merge:
            return {"parts": sum(len(g) for g in self._groups(records).values()), "rows": sum(r["rows"] for r in records)}
        return self._merge(root, records, manifest)

    def _assemble(self, root, parts, target):
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        rows = 0
        with open(tmp, "wb") as out:
            for rel in parts:
                with open(root / rel, "rb") as fh:
                    data = fh.read()
                if data:
                    out.write(data if data.endswith(b"\n") else data + b"\n")
                    rows += data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
        os.replace(tmp, target)
        return rows


class LlavaJsonOptions(LlavaWriterOptions):
    indent: int | None = Field(default=None, ge=0, description="Pretty-print the merged JSON with this indent (slower)")


class LlavaJsonWriter(_LlavaWriter):
    """Write LLaVA payloads as the single JSON list LLaVA trainers load (assembled at finalize)."""

    name = "llava-json"
    Options = LlavaJsonOptions
    parts_dir = PARTS
    merged_ext = "json"

    def finalize(self, root, records, manifest):
        return self._merge(root, records, manifest)

    def _assemble(self, root, parts, target):
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        rows = 0
        indent = self.options.indent
        with open(tmp, "w", encoding="utf-8") as out:
            out.write("[")
            for rel in parts:
                with open(root / rel, encoding="utf-8") as fh:
                    for line in fh:
                        line = line.rstrip("\n")
                        if not line:
                            continue
                        if indent is not None:
                            line = json.dumps(json.loads(line), indent=indent, ensure_ascii=False)
                        out.write(("\n" if rows == 0 else ",\n") + line)
                        rows += 1
            out.write("\n]\n" if rows else "]\n")
        os.replace(tmp, target)
        return rows

    def _count_merged(self, path):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"not valid JSON ({e})") from None
        if not isinstance(doc, list):
            raise ValueError("not a JSON list")
        return len(doc)


def _write_lines(payloads: pl.Series, dest: Path) -> None:
    # JSON strings from json_encode have no raw newline: write them verbatim, one per line
    if len(payloads):
        pl.DataFrame({"p": payloads}).write_csv(dest, include_header=False, quote_style="never")
    else:
        dest.write_bytes(b"")


def _count_jsonl(path: Path) -> int:
    n = 0
    with open(path, "rb") as fh:
        for i, line in enumerate(fh):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"line {i + 1}: invalid JSON ({e})") from None
                n += 1
    return n


def _atomic_write_text(target: Path, text: str) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)


ALL = [LlavaJsonlWriter, LlavaJsonWriter]
