"""The pipeline file: loading, ``${ENV}`` interpolation, dialects, validation.

Everything is validated before any work: the structure, every component's options, the
sampling strings and the cross-references. All errors are collected and reported together,
each prefixed with its path in the document (``datasets[1].filters[0].min: ...``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from . import sampling as sampling_mod
from .component import Component, Context, Options
from .errors import ConfigError
from .registry import Registry, load
from .storage import mask_config

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DATASET_NAME = re.compile(r"^[A-Za-z0-9_.\- ]+$")


class KeyOptions(Options):
    """How the stable sample key is made."""

    column: str | None = None
    """Use this column as the key (sanitised to [A-Za-z0-9_-]; duplicates are a plan error)."""
    prefix: str | None = None
    """Prefix of derived keys (default: the dataset name, sanitised)."""


class DatasetSpec(Options):
    name: str
    """Unique dataset name (the `dataset` column; derived keys start with it)."""
    source: dict[str, Any] | str
    """The source component: `{type: parquet, path: ...}`."""
    key: KeyOptions = Field(default_factory=KeyOptions)
    """How stable sample keys are made."""
    filters: list[dict[str, Any] | str] = Field(default_factory=list)
    """Filters applied in order; rejections counted per filter."""
    sampling: str = "all"
    """Sampling string (LaViDa-O semantics): all, first:N, end:N, random:N, dup:N, hash:F; N may be P%."""


class RunOptions(Options):
    out: str | None = None
    """Output directory (`--out` overrides): a local path, or an object-store URL (`s3://bucket/prefix`,
    any fsspec URL) mirrored from a local work directory (see `work_dir`)."""
    work_dir: str | None = None
    """For an object-store `out`: the local directory where units are committed and finalize runs before
    upload (default ~/.cache/mmprep/work/<hash of the URL>, or $MMPREP_WORK_DIR/<hash>). It needs room for the
    whole output until finalize."""
    storage_options: dict[str, Any] = Field(default_factory=dict)
    """fsspec options of an object-store `out` (endpoint_url, key, secret, ...); credentials are masked in
    everything stored."""
    workers: int = Field(default=1, ge=1)
    """Worker processes of the local executor."""
    samples_per_unit: int = Field(default=10_000, ge=1)
    """Rows per work unit (table sources); the unit is the unit of commit and resume."""
    read_ahead: int = Field(default=1, ge=0)
    """Units read ahead, in a thread, while the current unit is processed when units run in the driver
    (`workers: 1`, e.g. one GPU): the next unit's input read overlaps this one's encoding and writing.
    Each holds one more unit in memory; 0 reads each unit when its turn comes. (With several worker
    processes their reads already overlap each other's work.)"""
    defer_binary: bool = True
    """Binary columns (image bytes, at any nesting) of inputs that support it (parquet) are not copied
    into `_mmprep/plan.parquet`: the plan keeps each row's position and every unit reads those columns
    from the input files. The files must stay unchanged until the run ends (checked: size and mtime or
    ETag); false copies everything, so the input may change or go away after planning."""
    seed: int = 0
    """Seed of every random choice (sampling, per-sample draws)."""
    executor: Literal["local", "ray"] = "local"
    """Executor: `local` (process pool; array mode with --shard) or `ray` (pip install mmprep[ray])."""
    ray_address: str | None = None
    """Ray cluster address for executor `ray` (default: an existing cluster from RAY_ADDRESS, else a local one)."""
    ray_encoder_actors: int | None = Field(default=None, ge=1)
    """Executor `ray`: actors that hold the encoder models (one GPU each); default one per GPU of the cluster,
    none without GPUs (encoders then run in the unit actors unless this asks for CPU encoder actors)."""
    overwrite: bool = False
    """Replace an existing output of a different pipeline."""
    device: str = "auto"
    """Encoder device: auto, cpu, cuda, cuda:N."""
    max_examples: int = Field(default=5, ge=0)
    """Example (key, message) pairs kept per rejection reason and unit."""
    processes: Literal["auto", "always", "never"] = "auto"
    """Worker processes: 'auto' uses them only when a stage does per-sample Python work
    (media, encoders, per-sample formatters/writers, partitioned sources)."""
    status: bool = False
    """Write per-sample status (key, status, reason, message) to OUT/_mmprep/status/."""


class PipelineDoc(Options):
    version: Literal[1] = 1
    datasets: list[DatasetSpec] = Field(min_length=1)
    media: dict[str, Any] | None = None
    format: list[dict[str, Any] | str] = Field(default_factory=list)
    encode: list[dict[str, Any] | str] = Field(default_factory=list)
    write: list[dict[str, Any] | str] = Field(min_length=1)
    run: RunOptions = Field(default_factory=RunOptions)


#: Run options that do not change the output: excluded from the config hash.
RUNTIME_ONLY = ("out", "work_dir", "storage_options", "workers", "executor", "ray_address", "ray_encoder_actors", "overwrite", "device", "processes", "read_ahead")


@dataclass
class Dataset:
    name: str
    slug: str
    source: Component
    filters: list[Component]
    sampling: sampling_mod.Sampling
    key: KeyOptions


@dataclass
class Pipeline:
    """A validated pipeline: the normalised document and its component instances.

    ``doc`` is the normalised document with credentials masked (stored in run.json and the
    manifest, hashed for resume); ``worker_doc`` keeps them and only travels to workers.
    """

    doc: dict[str, Any]
    worker_doc: dict[str, Any]
    source_path: str | None
    base_dir: Path
    run_options: RunOptions
    datasets: list[Dataset]
    media: Any
    formatters: list[Component]
    encoders: list[Component]
    writers: list[Component]
    registry: Registry
    warnings: list[str] = field(default_factory=list)

    @property
    def config_hash(self) -> str:
        return config_hash(self.doc)

    # Python API mirroring the CLI ------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> "Pipeline":
        return load_pipeline(path, overrides=overrides)

    @classmethod
    def from_dict(cls, document: dict[str, Any], base_dir: str | Path | None = None, source: str | None = None) -> "Pipeline":
        return build_pipeline(document, base_dir=Path(base_dir or Path.cwd()), source=source)

    def run(self, **kwargs: Any):
        """Plan and execute (see :func:`mmprep.engine.run` for the keyword arguments)."""
        from .engine import run

        return run(self, **kwargs)


def config_hash(doc: dict[str, Any]) -> str:
    d = copy.deepcopy(doc)
    for k in RUNTIME_ONLY:
        d.get("run", {}).pop(k, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def slugify(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")
    return s or "dataset"


# -- loading ------------------------------------------------------------------------
def interpolate(obj: Any, path: str = "", errors: list[str] | None = None) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string; missing vars are errors."""
    errors = errors if errors is not None else []
    if isinstance(obj, str):

        def sub(m: re.Match) -> str:
            var, default = m.group(1), m.group(2)
            if var in os.environ:
                return os.environ[var]
            if default is not None:
                return default
            errors.append(f"{path or '<root>'}: environment variable {var} is not set")
            return m.group(0)

        return _ENV.sub(sub, obj)
    if isinstance(obj, dict):
        return {k: interpolate(v, f"{path}.{k}" if path else str(k), errors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [interpolate(v, f"{path}[{i}]", errors) for i, v in enumerate(obj)]
    return obj


def read_document(path: str | Path) -> Any:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"pipeline file not found", source=str(path))
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read: {e}", source=str(path)) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f"line {mark.line + 1}, column {mark.column + 1}: "
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"invalid YAML: {where}{problem}", source=str(path)) from None


def load_pipeline(path: str | Path, overrides: dict[str, Any] | None = None, registry: Registry | None = None) -> Pipeline:
    """Read, interpolate, translate (dialects) and validate a pipeline file."""
    doc = read_document(path)
    return build_pipeline(doc, base_dir=Path(path).resolve().parent, source=str(path), overrides=overrides, registry=registry)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_pipeline(
    doc: Any,
    base_dir: Path,
    source: str | None = None,
    overrides: dict[str, Any] | None = None,
    registry: Registry | None = None,
    interpolate_env: bool = True,
) -> Pipeline:
    reg = registry or load()
    errors: list[str] = []
    if interpolate_env:
        doc = interpolate(doc, errors=errors)
    if errors:
        raise ConfigError(errors, source)
    if not isinstance(doc, dict):
        raise ConfigError(f"the pipeline must be a mapping, got {type(doc).__name__}", source)
    try:
        translated = reg.pm.hook.translate_config(document=doc, path=source or str(base_dir))
    except ConfigError as e:
        raise ConfigError(e.errors, source) from None
    if translated is not None:
        doc = translated
    if overrides:
        doc = _deep_merge(doc, overrides)
    spec = _validate_structure(doc, errors)
    ctx = Context(base_dir=base_dir, seed=spec.run.seed)
    normalised: dict[str, Any] = {"version": 1, "datasets": [], "format": [], "encode": [], "write": []}

    datasets: list[Dataset] = []
    slugs: dict[str, int] = {}
    for i, ds in enumerate(spec.datasets):
        p = f"datasets[{i}]"
        dctx = Context(base_dir=base_dir, seed=spec.run.seed, dataset=ds.name)
        if not ds.name.strip():
            errors.append(f"{p}.name: must not be empty")
        slug = slugify(ds.key.prefix or ds.name)
        if slug in slugs:
            errors.append(f"{p}.name: dataset name {ds.name!r} clashes with datasets[{slugs[slug]}] (names must be unique)")
        slugs[slug] = i
        src, src_doc = _component(reg, "source", ds.source, f"{p}.source", dctx, errors)
        filters, filter_docs = [], []
        for j, f in enumerate(ds.filters):
            comp, fdoc = _component(reg, "filter", f, f"{p}.filters[{j}]", dctx, errors)
            filters.append(comp)
            filter_docs.append(fdoc)
        try:
            samp = sampling_mod.parse(ds.sampling)
        except ValueError as e:
            errors.append(f"{p}.sampling: {e}")
            samp = sampling_mod.Sampling()
        datasets.append(Dataset(ds.name, slug, src, filters, samp, ds.key))
        normalised["datasets"].append(
            {
                "name": ds.name,
                "source": src_doc,
                "key": ds.key.model_dump(mode="json"),
                "filters": filter_docs,
                "sampling": ds.sampling,
            }
        )

    media = None
    if spec.media is not None:
        from .media import MediaStage

        try:
            media = MediaStage.from_config(spec.media, ctx)
            normalised["media"] = media.options.model_dump(mode="json", context={"secrets": "keep"})
        except ValidationError as e:
            errors.extend(f"media.{m}".replace(".<root>", "") for m in _pydantic_errors(e))
        except ConfigError as e:
            errors.extend(f"media.{m}" for m in e.errors)

    lists = {}
    for section, kind in (("format", "formatter"), ("encode", "encoder"), ("write", "writer")):
        comps = []
        for j, c in enumerate(getattr(spec, section)):
            comp, cdoc = _component(reg, kind, c, f"{section}[{j}]", ctx, errors)
            comps.append(comp)
            normalised[section].append(cdoc)
        lists[section] = comps

    seen_paths: dict[tuple[str, str], int] = {}
    for j, w in enumerate(lists["write"]):
        if w is None:
            continue
        key = (w.name, getattr(w.options, "path", ""))
        if key in seen_paths:
            errors.append(f"write[{j}]: a second {w.name!r} writer into the same path {key[1]!r} (give each its own 'path')")
        seen_paths[key] = j

    normalised["run"] = spec.run.model_dump(mode="json")
    if errors:
        raise ConfigError(errors, source)
    return Pipeline(
        doc=mask_config(normalised),
        worker_doc=normalised,
        source_path=source,
        base_dir=base_dir,
        run_options=spec.run,
        datasets=datasets,
        media=media,
        formatters=lists["format"],
        encoders=lists["encode"],
        writers=lists["write"],
        registry=reg,
    )


def _validate_model(model, data, prefix: str, errors: list[str]):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors.extend(f"{prefix}{'.' if prefix and not m.startswith('<') else ''}{m}".replace(".<root>", "") for m in _pydantic_errors(e))
        return None


def _validate_structure(doc: dict[str, Any], errors: list[str]) -> PipelineDoc:
    """Validate the sections one by one so every error is reported, not just the first."""
    for k in doc:
        if k not in PipelineDoc.model_fields:
            errors.append(f"{k}: unknown section (sections: {', '.join(PipelineDoc.model_fields)})")
    run = _validate_model(RunOptions, doc.get("run") or {}, "run", errors) or RunOptions()
    raw = doc.get("datasets")
    datasets = []
    if not isinstance(raw, list) or not raw:
        errors.append("datasets: required, a non-empty list of datasets")
    else:
        for i, d in enumerate(raw):
            ds = _validate_model(DatasetSpec, d, f"datasets[{i}]", errors)
            if ds is not None:
                datasets.append(ds)
    lists = {}
    for section in ("format", "encode", "write"):
        v = doc.get(section) or []
        if not isinstance(v, list) or not all(isinstance(x, (dict, str)) for x in v):
            errors.append(f"{section}: must be a list of components (mappings with 'type', or type names)")
            v = []
        lists[section] = v
    if not lists["write"]:
        errors.append("write: required, at least one writer")
    media = doc.get("media")
    if media is not None and not isinstance(media, dict):
        errors.append("media: must be a mapping of media options")
        media = None
    return PipelineDoc.model_construct(version=1, datasets=datasets, media=media, run=run, **lists)


def _component(
    reg: Registry, kind: str, spec: dict[str, Any] | str, path: str, ctx: Context, errors: list[str]
) -> tuple[Component | None, dict[str, Any]]:
    if isinstance(spec, str):
        spec = {"type": spec}
    spec = dict(spec)
    name = spec.pop("type", None)
    if name is None:
        errors.append(f"{path}.type: missing (which {kind} to use)")
        return None, {}
    try:
        cls = reg.get(kind, name)
    except KeyError as e:
        errors.append(f"{path}.type: {e.args[0]}")
        return None, {}
    try:
        opts = cls.Options.model_validate(spec)
    except ValidationError as e:
        errors.extend(f"{path}.{m}".replace(".<root>", "") for m in _pydantic_errors(e))
        return None, {}
    try:
        comp = cls(opts, ctx)
    except (ValueError, ConfigError) as e:
        msgs = e.errors if isinstance(e, ConfigError) else [str(e)]
        errors.extend(f"{path}: {m}" for m in msgs)
        return None, {}
    return comp, {"type": name, **opts.model_dump(mode="json")}


def _pydantic_errors(e: ValidationError) -> list[str]:
    out = []
    for err in e.errors():
        loc = ""
        for part in err["loc"]:
            if isinstance(part, int):
                loc += f"[{part}]"
            else:
                # skip pydantic's union-branch tags ('dict[str,any]', 'str', 'function-after[...]')
                if "[" in str(part) or part in ("str", "int", "float", "bool"):
                    continue
                loc += f".{part}" if loc else str(part)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown option"
        elif err["type"] == "missing":
            msg = "required option missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        out.append(f"{loc or '<root>'}: {msg}")
    # de-duplicate (unions report the same location several times)
    return list(dict.fromkeys(out))
