"""The LaViDa-O data YAML, accepted as-is (``mmprep run data.yaml --out DIR``).

Recognised when the document has a top-level ``datasets`` list whose entries have
``json_path``. Each entry becomes a native dataset (semantics of LaViDa-O's
``llava/train/train.py`` YAML loader):

* ``json_path`` -> a ``parquet`` / ``csv`` / ``json`` / ``jsonl`` source by extension
  (LaViDa-O rejects csv; mmprep accepts it). Relative paths resolve against the YAML's folder.
* ``columns`` -> the source's columns.
* implicit aesthetic cutoff: when the (selected) columns include ``fltLaionAesthScore``, keep
  ``score > aes_cutoff``, or ``> 5`` when ``aes_cutoff`` is absent (a warning is logged);
  ``aes_cutoff: null`` disables it. As in LaViDa-O the implicit cutoff only applies to table
  inputs (parquet, csv); an explicit ``aes_cutoff`` applies to every input.
* ``min_size`` -> ``min-size`` on ``intWidth``/``intHeight`` (both must exist).
* ``max_enc_images: {column, value}`` -> ``max-list-length``.
* ``sampling_strategy`` -> the core sampling string (same syntax: all, first:N, end:N,
  random:N, dup:N, N may be P%). LaViDa-O draws ``random`` with pandas' seed 42; mmprep with
  the run's seed (``run.seed``), so the chosen rows differ from LaViDa-O's.
* ``preprocess_fn`` + ``process_fn_kwargs`` -> the matching ``llava-*`` formatter restricted
  to the dataset (an mmprep formatter name is accepted too); no ``preprocess_fn`` ->
  ``llava-passthrough`` (the rows already are LLaVA records). kwargs a function does not
  take are ignored with a warning, as LaViDa-O's ``**kwargs`` does.
* ``image_root`` -> ``llava-image-root`` on the ``image`` column.
* ``name`` (default ``none``; repeated names get ``_2``, ``_3``... inside mmprep, the YAML
  written back keeps the original), ``length_group``, top-level ``weights``/``batch_sizes``
  -> the ``llava-jsonl`` writer's data YAML.

Optional top-level ``run``, ``media``, ``write``, ``format``, ``encode`` sections are native
mmprep sections and replace the defaults (``write``: ``llava-jsonl`` into OUT with
``data.yaml``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mmprep import ConfigError

log = logging.getLogger("mmprep.llava")

EXT_SOURCE = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".json": "json"}
ENTRY_KEYS = {
    "name", "json_path", "sampling_strategy", "preprocess_fn", "process_fn_kwargs", "columns",
    "aes_cutoff", "min_size", "max_enc_images", "image_root", "length_group",
}
TOP_KEYS = {"datasets", "weights", "batch_sizes"}
NATIVE_KEYS = {"run", "media", "write", "format", "encode", "version"}
AES_COLUMN = "fltLaionAesthScore"
DEFAULT_AES = 5


def is_lavida(document: Any) -> bool:
    if not isinstance(document, dict):
        return False
    ds = document.get("datasets")
    return isinstance(ds, list) and bool(ds) and all(isinstance(d, dict) for d in ds) and any("json_path" in d for d in ds)


def _schema(kind: str, path: str, columns: list[str] | None) -> list[str]:
    import polars as pl

    if kind == "parquet":
        names = pl.scan_parquet(path).collect_schema().names()
    elif kind == "csv":
        names = pl.scan_csv(path).collect_schema().names()
    elif kind == "jsonl":
        names = pl.scan_ndjson(path, infer_schema_length=1000).collect_schema().names()
    else:
        import json

        with open(path, "rb") as fh:
            doc = json.load(fh)
        names = []
        for rec in doc[:1000] if isinstance(doc, list) else []:
            if isinstance(rec, dict):
                names += [k for k in rec if k not in names]
    if columns is not None:
        return [c for c in names if c in columns]
    return names


def _resolve(path: str, base: Path) -> str:
    if "://" in path or os.path.isabs(path):
        return path
    return str((base / path).resolve())


def translate(document: Any, path: str) -> dict | None:
    if not is_lavida(document):
        return None
    from .formatters import ALIASES, UNSUPPORTED

    from mmprep.registry import load

    reg = load()
    errors: list[str] = []
    base = Path(path).parent if path and not Path(path).is_dir() else Path(path or ".")
    base = base.resolve()
    for k in document:
        if k not in TOP_KEYS | NATIVE_KEYS:
            log.warning("LaViDa-O data YAML %s: top-level key %r is ignored", path, k)

    datasets: list[dict] = []
    fmt: list[dict] = []
    yaml_entries: dict[str, dict] = {}
    taken: set[str] = set()
    for i, entry in enumerate(document["datasets"]):
        p = f"datasets[{i}]"
        for k in entry:
            if k not in ENTRY_KEYS:
                log.warning("%s.%s: not a LaViDa-O dataset key, ignored", p, k)
        jp = entry.get("json_path")
        if not isinstance(jp, str) or not jp:
            errors.append(f"{p}.json_path: missing (the data file of this dataset)")
            continue
        ext = os.path.splitext(jp.split("?")[0])[1].lower()
        kind = EXT_SOURCE.get(ext)
        if kind is None:
            errors.append(f"{p}.json_path: unsupported file type {ext or '(none)'!r} of {jp!r} (use .parquet, .csv, .json or .jsonl)")
            continue
        resolved = _resolve(jp, base)
        local = "://" not in resolved
        if local and not os.path.exists(resolved):
            errors.append(f"{p}.json_path: file not found: {resolved}")
            continue
        columns = entry.get("columns")
        if columns is not None and (not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)):
            errors.append(f"{p}.columns: must be a list of column names")
            continue
        schema: list[str] | None = None
        if local:
            try:
                schema = _schema(kind, resolved, columns)
            except Exception as e:
                errors.append(f"{p}.json_path: cannot read {kind} file {resolved}: {type(e).__name__}: {e}")
                continue
            if columns is not None:
                missing = [c for c in columns if c not in schema]
                if missing:
                    errors.append(f"{p}.columns: {missing} not in {jp}")
                    continue

        orig_name = str(entry.get("name", "none"))
        name, n = orig_name, 2
        while name in taken:
            name, n = f"{orig_name}_{n}", n + 1
        taken.add(name)

        source: dict[str, Any] = {"type": kind, "path": resolved}
        if columns is not None:
            source["columns"] = list(columns)
        filters: list[dict] = []
        # aesthetic cutoff (implicit in LaViDa-O for table inputs)
        if "aes_cutoff" in entry:
            cutoff = entry["aes_cutoff"]
            if cutoff is not None:
                if not isinstance(cutoff, (int, float)) or isinstance(cutoff, bool):
                    errors.append(f"{p}.aes_cutoff: must be a number or null, got {cutoff!r}")
                elif schema is not None and AES_COLUMN not in schema:
                    if kind in ("parquet", "csv"):
                        pass  # LaViDa-O: the cutoff only applies when the column exists
                    else:
                        log.warning("%s.aes_cutoff: no %s column in %s; ignored", p, AES_COLUMN, jp)
                else:
                    filters.append({"type": "aesthetic", "column": AES_COLUMN, "cutoff": float(cutoff)})
        elif kind in ("parquet", "csv") and schema is not None and AES_COLUMN in schema:
            log.warning(
                "%s (%s): column %s present and no aes_cutoff given: applying LaViDa-O's implicit cutoff > %s "
                "(set aes_cutoff: null to keep every row)", p, orig_name, AES_COLUMN, DEFAULT_AES,
            )
            filters.append({"type": "aesthetic", "column": AES_COLUMN, "cutoff": float(DEFAULT_AES)})
        if "min_size" in entry:
            ms = entry["min_size"]
            if not isinstance(ms, int) or isinstance(ms, bool) or ms < 0:
                errors.append(f"{p}.min_size: must be a whole number >= 0, got {ms!r}")
            elif schema is not None and not {"intHeight", "intWidth"} <= set(schema):
                errors.append(f"{p}.min_size: requires the columns intHeight and intWidth (the input has {schema})")
            else:
                filters.append({"type": "min-size", "min_size": ms, "width_column": "intWidth", "height_column": "intHeight"})
        mei = entry.get("max_enc_images")
        if mei is not None:
            if not isinstance(mei, dict) or set(mei) != {"column", "value"}:
                errors.append(f"{p}.max_enc_images: must be {{column: <list column>, value: <max count>}}, got {mei!r}")
            elif schema is not None and mei["column"] not in schema:
                errors.append(f"{p}.max_enc_images.column: {mei['column']!r} not in the input (it has {schema})")
            else:
                filters.append({"type": "max-list-length", "column": mei["column"], "value": mei["value"]})
        if kind in ("json", "jsonl") and any(k in entry for k in ("min_size", "max_enc_images", "aes_cutoff")):
            log.warning("%s: LaViDa-O applies aes_cutoff/min_size/max_enc_images to parquet inputs only; mmprep applies them to %s too", p, kind)

        ss = entry.get("sampling_strategy", "all")
        sampling = "all" if ss is None else str(ss)

        datasets.append({"name": name, "source": source, "filters": filters, "sampling": sampling})

        if entry.get("image_root") is not None:
            fmt.append({"type": "llava-image-root", "root": str(entry["image_root"]), "column": "image", "datasets": [name]})

        fn = entry.get("preprocess_fn")
        kwargs = entry.get("process_fn_kwargs") or {}
        if not isinstance(kwargs, dict):
            errors.append(f"{p}.process_fn_kwargs: must be a mapping, got {kwargs!r}")
            kwargs = {}
        if fn is None:
            ftype, defaults = "llava-passthrough", {"keep_id": False}
        elif fn in ALIASES:
            ftype, defaults = ALIASES[fn]
        elif isinstance(fn, str) and fn.startswith("llava-") and fn in reg.components["formatter"]:
            ftype, defaults = fn, {}
        else:
            known = sorted(ALIASES) + sorted(n for n in reg.components["formatter"] if n.startswith("llava-") and n != "llava-image-root")
            hint = " (a LaViDa-O function mmprep-llava does not implement: use llava-template)" if fn in UNSUPPORTED else ""
            errors.append(f"{p}.preprocess_fn: unknown {fn!r}{hint}; known: {', '.join(known)}")
            continue
        cls = reg.components["formatter"][ftype]
        opts = dict(defaults)
        for k, v in kwargs.items():
            if k in cls.Options.model_fields:
                opts[k] = v
            else:
                log.warning("%s.process_fn_kwargs.%s: not an option of %s (%s); ignored", p, k, ftype, fn)
        if ftype in ("llava-t2i", "llava-t2i-hash") and schema is not None:
            # LaViDa-O adds gen_score / hpsv2 when the row has the column
            for opt, col in (("gen_score_column", AES_COLUMN), ("hpsv2_column", "hpsv2")):
                if opts.get(opt, col) not in schema:
                    opts[opt] = None
        if ftype == "llava-edit" and schema is not None and opts.get("hpsv2_column", "hpsv2") not in schema:
            opts["hpsv2_column"] = None
        opts["datasets"] = [name]
        if "id" not in opts:
            opts["id"] = "key"
        try:
            cls.Options.model_validate(opts)
        except ValidationError as e:
            for err in e.errors():
                loc = ".".join(str(x) for x in err["loc"])
                errors.append(f"{p}.process_fn_kwargs.{loc}: {err['msg']}")
            continue
        fmt.append({"type": ftype, **opts})
        yaml_entries[name] = {"name": orig_name, "length_group": str(entry.get("length_group", "default"))}

    if errors:
        raise ConfigError(errors)

    data_yaml: dict[str, Any] = {"file": "data.yaml", "datasets": yaml_entries}
    for k in ("weights", "batch_sizes"):
        if document.get(k) is not None:
            if not isinstance(document[k], dict):
                raise ConfigError(f"{k}: must be a mapping length_group -> number")
            data_yaml[k] = document[k]
    doc: dict[str, Any] = {
        "datasets": datasets,
        "format": fmt,
        "write": [{"type": "llava-jsonl", "path": "", "data_yaml": data_yaml}],
        "run": {"samples_per_unit": 10_000},
    }
    for k in NATIVE_KEYS:
        if k in document and k != "version":
            doc[k] = document[k] if k != "format" else fmt + list(document[k])
    return doc
