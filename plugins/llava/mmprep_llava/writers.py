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
file, and ``finalize`` can run again. With the media stage on (``image_bytes`` present), each
row's image is written to ``images/<key>.<ext>`` and the payload path (the formatter's
``mmprep-media://`` placeholder) is rewritten to it: to ``image_base`` when set, else to the
absolute path under the run's output when known, else to ``images/<key>.<ext>`` relative to
the writer root.
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

from .payload import MEDIA_SCHEME

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
    image_base: str | None = Field(default=None, description="Prefix of rewritten image paths (default: absolute path of images/ when known)")

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

    def _image_prefix(self) -> str:
        o = self.options
        if o.image_base:
            return o.image_base.rstrip("/") + "/"
        out = getattr(self.context, "out", None)
        if out:
            return str((Path(out) / o.path / "images").resolve()) + "/"
        return "images/"

    def write_unit(self, df: pl.DataFrame, unit: UnitInfo, staging: Path) -> dict[str, Any]:
        o = self.options
        if o.column not in df.columns:
            raise KeyError(f"{self.name} writer: payload column {o.column!r} not in the rows (add a llava-* formatter; have {df.columns})")
        stats: dict[str, Any] = {"rows": df.height, "files": [], "datasets": {}, "images": 0}
        col = pl.col(o.column)
        if o.images and "image_bytes" in df.columns:
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
        from .payload import media_path

        names = df.select(media_path(df, pl.lit(None, dtype=pl.String)).str.strip_prefix(MEDIA_SCHEME).alias("n"), pl.col("image_bytes"))
        d = staging / "images"
        d.mkdir(parents=True, exist_ok=True)
        n = 0
        for name, data in names.iter_rows():  # one file per image: truly per sample
            if data is None or name is None:
                continue
            (d / name).write_bytes(data)
            n += 1
        return n

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
