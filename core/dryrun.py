"""``mmprep run --dry-run``: validate + plan without writing anything under OUT.

``--dry-run`` (``plan``) reports per dataset the rows in, the rows left after each filter and
after sampling, the units, and an estimate of the bytes each writer will produce, computed
from a few planned rows (their non-media columns), the media stage's configured size and
format, and the encoders' declared output shapes.

``--dry-run=measure`` also runs the first unit's first rows (``MEASURE_ROWS``) through the
media, format and encode stages in this process and through every writer into a temporary
directory outside OUT, then extrapolates the time (per-row stage cost × planned rows /
workers, plus the encoders' one-off model set-up per worker) and the output bytes (measured
bytes per written sample × planned rows × the sample's survival rate).
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl

from .component import REJECT_MESSAGE, REJECT_REASON, Partition, UnitInfo
from .config import Pipeline
from .plan import DatasetPlan, analyse, build_units, sanitize_key_expr

MEASURE_ROWS = 50
SAMPLE_ROWS = 200
RESERVED = (REJECT_REASON, REJECT_MESSAGE)

#: Bytes per stored pixel of a typical photo, by output format (JPEG by quality).
def _bytes_per_pixel(fmt: str, quality: int) -> float:
    if fmt == "png":
        return 1.6
    jpeg = 0.08 + 0.0045 * max(quality - 50, 0) if quality < 95 else 0.45 + 0.05 * (quality - 95)
    return jpeg * (0.7 if fmt == "webp" else 1.0)


def _stored_pixels(media: Any) -> float | None:
    """Pixels of one stored image under the media options (a 4:3 source larger than the target)."""
    o = getattr(media, "options", None)
    if o is None:
        return None
    size = getattr(o, "size", 512)
    mode = getattr(o, "resize", "downscale-shorter")
    if mode in ("center-crop", "pad"):
        return float(size * size)
    if mode == "none":
        return 1024 * 768.0
    if mode == "keep-ratio-largest":
        return size * size * 3 / 4
    return size * size * 4 / 3  # downscale-shorter / bucket: shorter side = size


def _dtype_bytes(dtype: str) -> int:
    import numpy as np

    try:
        return np.dtype(str(dtype)).itemsize
    except TypeError:
        return 4


def _encoder_bytes(pipeline: Pipeline) -> float:
    total = 0.0
    for e in pipeline.encoders:
        try:
            cols = e.output_columns()
        except Exception:
            continue
        for spec in cols.values():
            shape = spec.get("shape") or []
            if all(isinstance(s, int) and s > 0 for s in shape):
                total += math.prod(shape) * _dtype_bytes(spec.get("dtype", "float32"))
    return total


def _first_rows(pipeline: Pipeline, plans: list[DatasetPlan], units: list[dict], n: int) -> pl.DataFrame | None:
    """The first unit's first ``n`` rows, as the engine would read them (keys, dataset, filters)."""
    if not units:
        return None
    u = units[0]
    dp = next(p for p in plans if p.ds.name == u["dataset"])
    if dp.frame is not None:
        return dp.frame.head(n).collect()
    ds = dp.ds
    pinfo = u["partition"]
    data = ds.source.read_partition(Partition(id=pinfo["id"], info=pinfo["info"], rows=pinfo["rows"]))
    df = data.frame.head(n * 4)
    if "key" not in df.columns:
        base = f"{ds.slug}-{pinfo['id']}"
        df = df.with_columns(pl.format("{}-{}", pl.lit(base), pl.int_range(pl.len()).cast(pl.String).str.zfill(6)).alias("key"))
    df = df.with_columns(sanitize_key_expr(pl.col("key")).alias("key"), pl.lit(ds.name).alias("dataset"))
    for f in ds.filters:
        df = df.filter(df.select(f.expression(df.schema).fill_null(False)).to_series())
    return df.head(n)


def _dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def measure(pipeline: Pipeline, plans: list[DatasetPlan], units: list[dict], rows: int = MEASURE_ROWS) -> dict[str, Any]:
    """Run a short sample through the stages and writers (into a temp dir); time everything."""
    df = _first_rows(pipeline, plans, units, rows)
    if df is None or not df.height:
        return {"rows": 0, "note": "no planned rows to measure"}
    n_in = df.height
    timings: dict[str, float] = {}
    rejected: dict[str, int] = {}
    setup = 0.0
    stages: list[tuple[str, Any]] = []
    if pipeline.media is not None:
        stages.append(("media", pipeline.media.process))
    stages += [(f"format:{f.name}", f.format) for f in pipeline.formatters]
    if pipeline.encoders:
        t = time.perf_counter()
        for e in pipeline.encoders:
            e.setup(pipeline.run_options.device)
        setup = time.perf_counter() - t
        stages += [(f"encode:{e.name}", e.encode) for e in pipeline.encoders]
    rows_at: dict[str, int] = {}
    for name, fn in stages:
        if not df.height:
            break
        rows_at[name] = df.height
        t = time.perf_counter()
        df = fn(df)
        timings[name] = time.perf_counter() - t
        if REJECT_REASON in df.columns:
            bad = df.filter(pl.col(REJECT_REASON).is_not_null())
            for reason, k in bad.group_by(REJECT_REASON).len().iter_rows():
                rejected[reason] = rejected.get(reason, 0) + k
            df = df.filter(pl.col(REJECT_REASON).is_null())
        df = df.drop([c for c in RESERVED if c in df.columns])
    writers = []
    tmp = Path(tempfile.mkdtemp(prefix="mmprep-dryrun-"))
    try:
        info = UnitInfo(id=units[0]["id"], index=0, rows=df.height, datasets=[units[0]["dataset"]])
        for i, w in enumerate(pipeline.writers):
            d = tmp / f"w{i}"
            d.mkdir()
            t = time.perf_counter()
            try:
                w.write_unit(df, info, d)
                err = None
            except Exception as e:  # an estimate must not fail the dry run
                err = f"{type(e).__name__}: {e}"
            timings[f"write:{w.name}"] = time.perf_counter() - t
            rows_at[f"write:{w.name}"] = df.height
            writers.append({"bytes": _dir_bytes(d), "rows": df.height, "error": err})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    per_row = {k: v / max(rows_at.get(k, n_in), 1) for k, v in timings.items()}
    return {
        "rows": n_in,
        "written": df.height,
        "survival": df.height / n_in,
        "rejected": rejected,
        "stage_seconds": {k: round(v, 4) for k, v in timings.items()},
        "seconds_per_row": {k: round(v, 6) for k, v in per_row.items()},
        "encoder_setup_seconds": round(setup, 3),
        "writers": writers,
    }


def dry_run(pipeline: Pipeline, measure: bool = False) -> dict:
    """Rows per dataset after each filter and sampling, units, estimated bytes (and time)."""
    t0 = time.perf_counter()
    plans = analyse(pipeline)
    units = build_units(plans, pipeline.run_options.samples_per_unit)
    plan_seconds = time.perf_counter() - t0
    datasets = []
    for dp in plans:
        d = dp.summary()
        steps = []
        n = dp.source_rows
        if n is not None and dp.frame is not None:
            for f in dp.ds.filters:
                # several filters may share a reason: the plan's count is per reason
                steps.append({"step": f"filter {f.name}", "reason": f.reason, "rows": None})
            for reason, k in dp.filtered.items():
                n -= k
                for s in steps:
                    if s["reason"] == reason:
                        s["rows"] = n
        d["steps"] = steps
        d["sampling"] = dp.ds.sampling.text
        d["units"] = sum(1 for u in units if u["dataset"] == dp.ds.name)
        if dp.frame is None and dp.ds.filters:
            d["note"] = "partitioned source: filters run inside the units, their counts are known only after the run"
        datasets.append(d)
    planned = sum(u["rows"] or 0 for u in units)
    unknown = any(u["rows"] is None for u in units)

    # -- bytes per sample from the configured sizes ----------------------------------------
    sample = None
    table = [dp for dp in plans if dp.frame is not None]
    if table:
        sample = pl.concat([dp.frame.head(SAMPLE_ROWS // len(table)).collect() for dp in table], how="diagonal_relaxed")
    base = 0.0
    if sample is not None and sample.height:
        cols = [c for c in sample.columns if c not in ("image_bytes",)]
        base = sample.select(cols).estimated_size() / sample.height
    img = 0.0
    if pipeline.media is not None:
        o = pipeline.media.options
        px = _stored_pixels(pipeline.media) or 0
        img = px * _bytes_per_pixel(getattr(o, "format", "jpeg"), getattr(o, "quality", 95))
    enc = _encoder_bytes(pipeline)
    per_sample = base + img + enc
    writers = []
    for w in pipeline.writers:
        writers.append({
            "type": w.name,
            "path": getattr(w.options, "path", ""),
            "bytes_per_sample": round(per_sample),
            "estimated_bytes": None if unknown else int(per_sample * planned),
            "basis": "configured sizes (columns of sampled rows + media size/format + encoder shapes)",
        })
    out: dict[str, Any] = {
        "config_hash": pipeline.config_hash,
        "datasets": datasets,
        "units": len(units),
        "planned": None if unknown else planned,
        "samples_per_unit": pipeline.run_options.samples_per_unit,
        "workers": pipeline.run_options.workers,
        "writers": writers,
        "encoders": [e.name for e in pipeline.encoders],
        "media": pipeline.media is not None,
        "plan_seconds": round(plan_seconds, 3),
    }
    if measure:
        m = measure_fn(pipeline, plans, units)
        out["measure"] = m
        if m.get("rows"):
            survive = m["survival"]
            for w, mw in zip(writers, m["writers"]):
                if mw["rows"]:
                    w["bytes_per_sample"] = round(mw["bytes"] / mw["rows"])
                    w["estimated_bytes"] = None if unknown else int(mw["bytes"] / mw["rows"] * planned * survive)
                    w["basis"] = f"measured on {m['rows']} rows ({mw['rows']} written)"
                if mw["error"]:
                    w["error"] = mw["error"]
            if not unknown:
                per_row = sum(m["seconds_per_row"].values())
                workers = max(1, pipeline.run_options.workers)
                par = workers if (pipeline.media is not None or pipeline.encoders or len(units) > 1) else 1
                par = min(par, max(len(units), 1))
                est = per_row * planned / par + m["encoder_setup_seconds"] + plan_seconds
                out["estimated_seconds"] = round(est, 3)
                out["estimate_note"] = (
                    f"{per_row * 1000:.2f} ms per row measured in one process x {planned:,} rows / {par} parallel workers"
                    f" + encoder set-up {m['encoder_setup_seconds']}s + plan {plan_seconds:.1f}s"
                )
    return out


measure_fn = measure


def _size(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def _secs(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def format_dry_run(d: dict) -> str:
    """The dry-run result as text for a terminal."""
    lines = [f"mmprep dry run (config {d['config_hash']}): nothing was written", ""]
    def row(label: str, value: Any) -> str:
        v = f"{value:,}" if isinstance(value, int) else str(value)
        return f"  {label:<32} {v:>14}"

    for ds in d["datasets"]:
        src = ds.get("source_rows")
        lines.append(f"dataset {ds['name']} ({ds['kind']})")
        lines.append(row("rows in", src if src is not None else "?"))
        for s in ds.get("steps", []):
            lines.append(row(f"after {s['step']}", s["rows"] if s["rows"] is not None else "?"))
        if ds.get("sampling") and ds["sampling"] != "all":
            lines.append(row(f"after sampling {ds['sampling']}", ds["planned"] if ds.get("planned") is not None else "?"))
        lines.append(row("planned", ds["planned"] if ds.get("planned") is not None else "? (partitioned)"))
        lines.append(row("units", ds["units"]))
        if ds.get("note"):
            lines.append(f"  note: {ds['note']}")
        lines.append("")
    total = d.get("planned")
    lines.append(f"total: {total:,} planned rows in {d['units']} units of up to {d['samples_per_unit']:,}" if total is not None
                 else f"total: {d['units']} units (row counts known only while running)")
    lines.append("")
    lines.append("estimated output per writer:")
    for w in d["writers"]:
        lines.append(f"  {w['type']:<14} {w['path'] or '.':<24} {_size(w['estimated_bytes']):>12}  ({_size(w['bytes_per_sample'])}/sample; {w['basis']})")
        if w.get("error"):
            lines.append(f"    writer failed on the sample: {w['error']}")
    m = d.get("measure")
    if m:
        lines.append("")
        if not m.get("rows"):
            lines.append(f"measure: {m.get('note', 'nothing measured')}")
        else:
            lines.append(f"measured in-process on the first {m['rows']} planned rows: {m['written']} would be written"
                         + (f", rejected {m['rejected']}" if m["rejected"] else ""))
            for k, v in m["stage_seconds"].items():
                lines.append(f"  {k:<22} {v:8.3f} s  ({m['seconds_per_row'][k] * 1000:.2f} ms/row)")
            if m["encoder_setup_seconds"]:
                lines.append(f"  encoder set-up         {m['encoder_setup_seconds']:8.3f} s  (once per worker)")
            if "estimated_seconds" in d:
                lines.append(f"estimated time: {_secs(d['estimated_seconds'])}  ({d['estimate_note']})")
    return "\n".join(lines)
