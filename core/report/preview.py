"""``mmprep preview``: one self-contained HTML report of a dataset (mmprep output or not).

Sections: manifest summary (mmprep outputs), contact sheet of a seeded random sample,
histograms (original width / height / aspect ratio, caption length, numeric columns; for
mmprep outputs overlaid for the source, the rows kept after filters + sampling, and the
written rows), a per-dataset funnel, rejections by reason with examples, throughput over
time and per-stage timings. Images are embedded as JPEG thumbnails (data URIs) and charts
as inline SVG, so the file opens anywhere with no network.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import re
import time
from pathlib import Path
from typing import Any

import polars as pl

from .readers import Sample, View, detect, open_view, parse_turns, stats_from_lazy

#: Preference when an mmprep output has several writers: the first with images wins.
WRITER_PREFERENCE = ["parquet", "webdataset", "mds", "llava-jsonl", "llava-json", "jsonl"]
THUMB = 256


# -- finding the samples of an mmprep output ------------------------------------------------------
def writer_view(out: Path, w: dict, roots: list[Path]) -> View:
    """A reader for one writer entry of manifest["writers"] (type, path, info)."""
    root = out / (w.get("path") or "")
    t = w["type"]
    if t in ("parquet",):
        return open_view("parquet", str(root), roots)
    if t == "jsonl":
        return open_view("jsonl", str(root), roots)
    if t == "webdataset":
        return open_view("webdataset", str(root), roots)
    if t == "mds":
        return open_view("mds", str(root), roots)
    if t in ("llava-jsonl", "llava-json"):
        ext = ".jsonl" if t == "llava-jsonl" else ".json"
        merged = [p for p in root.rglob(f"*{ext}") if "_parts" not in p.parts and not p.name.startswith("part-")]
        if merged:  # merged files hold the same payloads as the parts: read only those
            v = open_view("jsonl", str(root), roots)
            v.files = sorted(str(p) for p in merged)
            v.roots = [*v.roots, root]
            return v
        v = open_view("jsonl", str(root / "_parts") if (root / "_parts").is_dir() else str(root), [*roots, root])
        return v
    raise ValueError(f"no reader for writer type {t!r}")


def choose_writer(manifest: dict, index: int | None) -> list[int]:
    writers = manifest.get("writers", [])
    if index is not None:
        if not 0 <= index < len(writers):
            raise ValueError(f"--writer {index}: this output has {len(writers)} writers (0..{len(writers) - 1})")
        return [index]
    order = sorted(range(len(writers)), key=lambda i: WRITER_PREFERENCE.index(writers[i]["type"]) if writers[i]["type"] in WRITER_PREFERENCE else 99)
    return order


def _llava_turns(out: Path, manifest: dict, keys: set[str]) -> dict[str, list]:
    """Conversations of the given keys from the output's LLaVA writer, if it has one."""
    found: dict[str, list] = {}
    for w in manifest.get("writers", []):
        if w["type"] not in ("llava-jsonl", "llava-json"):
            continue
        try:
            v = writer_view(out, w, [])
            for row in v.rows():
                if str(row.get("id")) in keys and str(row.get("id")) not in found:
                    t = parse_turns(row.get("conversations"))
                    if t:
                        found[str(row["id"])] = t
        except (OSError, ValueError):
            continue
    return found


def _source_stats(manifest: dict, run_json: dict, numeric: list[str], cap: int) -> tuple[pl.DataFrame | None, list[str], list[str]]:
    """Stats of every table dataset's source (before filters), and the filters' numeric columns."""
    from ..config import build_pipeline

    notes: list[str] = []
    cols: list[str] = []
    try:
        p = build_pipeline(manifest["config"], base_dir=Path(run_json.get("base_dir", ".")), source=run_json.get("source"), interpolate_env=False)
    except Exception as e:  # plugins missing, config from another version...
        return None, [], [f"source histograms skipped: cannot rebuild the pipeline ({type(e).__name__}: {e})"]
    for ds in p.datasets:
        for f in ds.filters:
            c = getattr(f.options, "column", None)
            if isinstance(c, str) and c not in cols:
                cols.append(c)
    frames = []
    for ds in p.datasets:
        try:
            lf = ds.source.scan()
        except Exception as e:
            notes.append(f"dataset {ds.name!r}: source not readable now ({type(e).__name__}: {e})")
            continue
        if lf is None:
            continue
        try:
            frames.append(stats_from_lazy(lf, list(dict.fromkeys([*numeric, *cols])), cap).with_columns(pl.lit(ds.name).alias("dataset")))
        except Exception as e:
            notes.append(f"dataset {ds.name!r}: source stats failed ({type(e).__name__}: {e})")
    return (pl.concat(frames, how="diagonal_relaxed") if frames else None), cols, notes


# -- rendering helpers -------------------------------------------------------------------------------
def thumbnail(b: bytes | None) -> tuple[str | None, str | None]:
    """(data URI of a JPEG thumbnail, error)"""
    if not b:
        return None, None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(b)) as im:
            im.draft("RGB", (THUMB, THUMB))
            im = im.convert("RGB")
            im.thumbnail((THUMB, THUMB))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=82)
    except Exception as e:
        return None, f"image not decodable: {type(e).__name__}: {e}"
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode(), None


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _size(s: tuple[int, int] | None) -> str:
    return f"{s[0]}×{s[1]}" if s else "?"


def _card(s: Sample) -> str:
    uri, err = thumbnail(s.image)
    if uri:
        img = f'<img class="thumb" src="{uri}" alt="{_e(s.key)}" data-key="{_e(s.key)}">'
    else:
        img = f'<div class="noimg">{_e(err or s.image_note or "no image")}</div>'
    if s.turns:
        text = "".join(f'<div class="turn {_e(r)}"><b>{_e(r)}</b> {_e(t[:600])}</div>' for r, t in s.turns[:6])
    elif s.caption is not None:
        text = f'<div class="caption">{_e(s.caption[:600])}</div>'
    else:
        text = '<div class="caption muted">(no caption)</div>'
    extra = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in list(s.extra.items())[:8])
    sizes = f"original {_size(s.orig_size)} → stored {_size(s.stored_size)}"
    return (
        f'<div class="card"><div class="imgbox">{img}</div><div class="meta"><code>{_e(s.key)}</code>'
        f'<span class="ds">{_e(s.dataset or "")}</span><div class="sizes">{sizes}</div></div>{text}'
        f'<table class="extra">{extra}</table></div>'
    )


def _table(rows: list[tuple], head: tuple | None = None) -> str:
    h = "<tr>" + "".join(f"<th>{_e(c)}</th>" for c in head) + "</tr>" if head else ""
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else _e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{h}{body}</table>"


class _Raw(str):
    """Already-escaped HTML for a table cell."""


def _chart(name: str, svg: str | None) -> str:
    return f'<figure class="chart" data-chart="{_e(name)}">{svg}</figure>' if svg else ""


def _ts(t: float | None) -> str:
    return _dt.datetime.fromtimestamp(t).isoformat(timespec="seconds") if t else "?"


# -- sections ----------------------------------------------------------------------------------------
def histograms(series: dict[str, pl.DataFrame | None], numeric: list[str]) -> list[str]:
    from . import charts

    out = []
    named = {k: v for k, v in series.items() if v is not None and v.height}

    def col(df: pl.DataFrame, expr: pl.Expr):
        return df.select(expr).to_series().drop_nulls().to_numpy()

    specs = [
        ("width", "original width", "pixels", pl.col("width")),
        ("height", "original height", "pixels", pl.col("height")),
        ("aspect", "aspect ratio (width / height)", "ratio", (pl.col("width") / pl.col("height")).cast(pl.Float64)),
        ("caption_len", "caption length", "characters", pl.col("caption_len")),
    ]
    specs += [(c, c, c, pl.col(c)) for c in numeric]
    for name, title, xlabel, expr in specs:
        data = {}
        for label, df in named.items():
            try:
                v = col(df, expr)
            except pl.exceptions.PolarsError:
                continue
            if v.size:
                data[label] = v
        svg = charts.histogram(title, xlabel, data)
        out.append(_chart(f"hist-{name}", svg))
    return [c for c in out if c]


def funnel(datasets: dict[str, dict]) -> list[str]:
    from . import charts

    out = []
    for name, d in datasets.items():
        labels, values, colors = [], [], []
        if d.get("source_rows") is not None:
            n = d["source_rows"]
            labels.append("source rows")
            values.append(n)
            colors.append("#9aa5b1")
            for reason, k in d.get("filtered", {}).items():
                n -= k
                labels.append(f"after filter {reason} (-{k:,})")
                values.append(n)
                colors.append("#4c78a8")
            if d.get("sampled_out") or d.get("dup_added"):
                n = n - d.get("sampled_out", 0) + d.get("dup_added", 0)
                labels.append("after sampling")
                values.append(n)
                colors.append("#72b7b2")
        labels.append("planned")
        values.append(d["planned"])
        colors.append("#54a24b")
        n = d["planned"]
        for reason, k in d.get("rejected", {}).items():
            n -= k
            labels.append(f"after rejecting {reason} (-{k:,})")
            values.append(n)
            colors.append("#e45756")
        labels.append("written")
        values.append(d["written"])
        colors.append("#f58518")
        out.append(_chart(f"funnel-{name}", charts.hbar(f"dataset {name}: rows through the pipeline", labels, values, "rows", colors)))
    return out


def rejections(manifest: dict) -> tuple[str, str]:
    from . import charts

    labels, values, colors = [], [], []
    filt: dict[str, int] = {}
    for d in manifest.get("datasets", {}).values():
        for r, k in d.get("filtered", {}).items():
            filt[r] = filt.get(r, 0) + k
    for r, k in sorted(filt.items(), key=lambda x: -x[1]):
        labels.append(f"filter: {r}")
        values.append(k)
        colors.append("#4c78a8")
    for r, k in sorted(manifest.get("totals", {}).get("rejected_by_reason", {}).items(), key=lambda x: -x[1]):
        labels.append(r)
        values.append(k)
        colors.append("#e45756")
    chart = _chart("rejections", charts.hbar("rejections by reason (plan filters in blue, stage rejections in red)", labels, values, "rows", colors))
    rows = []
    for reason, ex in sorted(manifest.get("rejection_examples", {}).items()):
        items = "".join(f"<li><code>{_e(x.get('key'))}</code> {_e(x.get('message') or '')}</li>" for x in ex[:5])
        rows.append((reason, manifest.get("totals", {}).get("rejected_by_reason", {}).get(reason, ""), _Raw(f"<ul>{items}</ul>")))
    table = _table(rows, ("reason", "rows", "examples (key, message)")) if rows else "<p class='muted'>no rejected samples</p>"
    return chart, table


def summary(manifest: dict, out: Path) -> str:
    t = manifest.get("totals", {})
    tm = manifest.get("timings", {})
    wall = (tm.get("last_unit_finished") or 0) - (tm.get("first_unit_started") or 0)
    rows = [
        ("output", str(out)),
        ("pipeline file", manifest.get("source") or "?"),
        ("config hash", manifest.get("config_hash")),
        ("mmprep version", manifest.get("mmprep_version")),
        ("finalized at", _ts(manifest.get("finalized_at"))),
        ("source rows", f"{t.get('source_rows', 0):,}"),
        ("filtered out", f"{t.get('filtered', 0):,}"),
        ("not sampled", f"{t.get('sampled_out', 0):,}"),
        ("planned", f"{t.get('planned', 0):,}"),
        ("written", f"{t.get('written', 0):,}"),
        ("rejected", f"{t.get('rejected', 0):,}"),
        ("units", f"{len(manifest.get('units', []))}"),
        ("plan seconds", tm.get("plan_seconds")),
        ("unit seconds (sum)", tm.get("unit_seconds")),
        ("wall seconds (first unit start → last unit end)", f"{wall:.3f}" if wall else "?"),
    ]
    parts = ["<h3>run</h3>", _table(rows)]
    parts.append("<h3>datasets</h3>")
    drows = []
    for name, d in manifest.get("datasets", {}).items():
        drows.append((name, d.get("source_rows"), json.dumps(d.get("filtered", {})), d.get("sampled_out"), d.get("planned"), d.get("written"), json.dumps(d.get("rejected", {})), d.get("units")))
    parts.append(_table(drows, ("dataset", "source rows", "filtered", "not sampled", "planned", "written", "rejected", "units")))
    parts.append("<h3>plugins</h3>")
    parts.append(_table(sorted(manifest.get("plugins", {}).items()), ("distribution", "version")))
    encs = manifest.get("encoders", [])
    parts.append("<h3>encoders</h3>")
    parts.append(_table([(e["type"], _Raw(f"<pre>{_e(json.dumps(e.get('identity'), indent=1, default=str))}</pre>"),
                          _Raw(f"<pre>{_e(json.dumps(e.get('outputs'), indent=1, default=str))}</pre>")) for e in encs],
                        ("type", "identity", "outputs")) if encs else "<p class='muted'>no encoders</p>")
    parts.append("<h3>writers</h3>")
    parts.append(_table([(w["type"], w.get("path"), _Raw(f"<pre>{_e(json.dumps(w.get('info'), default=str)[:1500])}</pre>")) for w in manifest.get("writers", [])],
                        ("type", "path", "finalize info")))
    parts.append("<details><summary>pipeline config (as stored)</summary><pre>" + _e(json.dumps(manifest.get("config"), indent=1, default=str)) + "</pre></details>")
    return "\n".join(parts)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#1f2933;background:#fafbfc}
h1{font-size:22px;margin-bottom:4px} h2{margin-top:32px;border-bottom:1px solid #d9e2ec;padding-bottom:4px}
h3{font-size:14px;margin:16px 0 6px} .muted{color:#7b8794}
table{border-collapse:collapse;font-size:12px;margin:4px 0} td,th{border:1px solid #e4e7eb;padding:3px 6px;text-align:left;vertical-align:top}
pre{margin:0;font-size:11px;white-space:pre-wrap;max-width:900px}
.sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:12px}
.card{background:#fff;border:1px solid #d9e2ec;border-radius:6px;padding:8px;font-size:12px;overflow:hidden}
.imgbox{height:200px;display:flex;align-items:center;justify-content:center;background:#f0f4f8;border-radius:4px}
.thumb{max-width:100%;max-height:200px} .noimg{color:#7b8794;font-size:11px;padding:8px;text-align:center;word-break:break-all}
.meta{margin:6px 0 4px} .meta code{font-size:11px;word-break:break-all} .ds{float:right;color:#486581;font-size:11px}
.sizes{color:#52606d;font-size:11px} .caption{margin:4px 0} .turn{margin:3px 0;padding:3px 5px;border-radius:4px;background:#f0f4f8}
.turn.gpt,.turn.assistant{background:#fff3e0} .extra td{font-size:10px;padding:1px 4px;border:none;color:#52606d}
.charts{display:flex;flex-wrap:wrap;gap:12px} figure.chart{margin:0;background:#fff;border:1px solid #e4e7eb;border-radius:6px;padding:6px}
figure.chart svg{max-width:100%;height:auto}
.notes li{color:#8d2b0b;font-size:12px}
"""

CHECK_JS = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.map.call(document.querySelectorAll('img.thumb'), function (i) {
    return {key: i.getAttribute('data-key'), naturalWidth: i.naturalWidth, complete: i.complete};
  });
  var charts = Array.prototype.map.call(document.querySelectorAll('figure.chart'), function (f) {
    var s = f.querySelector('svg'); var r = s ? s.getBoundingClientRect() : {width: 0, height: 0};
    return {name: f.getAttribute('data-chart'), width: Math.round(r.width), height: Math.round(r.height)};
  });
  var el = document.getElementById('mmprep-render-check');
  el.textContent = JSON.stringify({images: imgs, charts: charts});
  el.setAttribute('data-done', '1');
});
"""


def build_report(
    path: str | Path,
    html_path: str | Path | None = None,
    samples: int = 24,
    seed: int = 0,
    numeric: list[str] | None = None,
    writer: int | None = None,
    stats_cap: int = 200_000,
    image_root: str | None = None,
) -> Path:
    """Write the HTML report of the dataset at ``path``; return the HTML file's path."""
    t0 = time.perf_counter()
    path = Path(path)
    numeric = list(numeric or [])
    fmt = detect(str(path))
    roots = [Path(image_root)] if image_root else []
    notes: list[str] = []
    sections: list[str] = []
    manifest = None
    title = str(path)
    series: dict[str, pl.DataFrame | None] = {}
    if fmt == "mmprep":
        meta = path / "_mmprep"
        manifest = json.loads((meta / "manifest.json").read_text())
        run_json = json.loads((meta / "run.json").read_text()) if (meta / "run.json").exists() else {}
        roots = [*roots, Path(run_json.get("base_dir", "."))]
        view = None
        for i in choose_writer(manifest, writer):
            w = manifest["writers"][i]
            try:
                view = writer_view(path, w, roots)
                view.count()
            except (OSError, ValueError) as e:
                notes.append(f"writer {i} ({w['type']} at {w.get('path')}): not readable ({type(e).__name__}: {e})")
                view = None
                continue
            notes.append(f"samples read from writer {i}: {w['type']} at {path / (w.get('path') or '')}")
            break
        if view is None:
            raise FileNotFoundError(f"{path}: none of the writers' outputs could be read ({'; '.join(notes)})")
        src, filter_cols, n2 = _source_stats(manifest, run_json, numeric, stats_cap)
        notes += n2
        numeric = list(dict.fromkeys([*numeric, *filter_cols]))
        series["source"] = src
        plan = meta / "plan.parquet"
        if plan.exists():
            series["after filters + sampling"] = stats_from_lazy(pl.scan_parquet(plan), numeric, stats_cap)
    else:
        view = open_view(fmt, str(path), roots)
    cap = stats_cap if view.fmt in ("parquet", "jsonl", "llava") else min(stats_cap, 5000)
    series["written" if fmt == "mmprep" else "samples"] = view.stats(numeric, cap)
    total = view.count()
    if total > cap:
        notes.append(f"histograms of the written data use the first {cap:,} of {total:,} samples")
    picked = view.samples(samples, seed)
    if manifest is not None and not any(s.turns for s in picked):
        turns = _llava_turns(path, manifest, {s.key for s in picked})
        for s in picked:
            s.turns = turns.get(s.key, s.turns)
    notes += view.notes

    # -- assemble ---------------------------------------------------------------------------------
    head = f"<h1>mmprep preview: {_e(title)}</h1><p class='muted'>format: {_e(view.fmt if fmt != 'mmprep' else 'mmprep output (' + view.fmt + ')')}; {total:,} samples; generated {_ts(time.time())}</p>"
    if notes:
        head += "<ul class='notes'>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>"
    sections.append(head)
    if manifest is not None:
        sections.append("<h2>Summary</h2>" + summary(manifest, path))
    sections.append(f"<h2>Samples</h2><p class='muted'>{len(picked)} of {total:,} samples, seeded random draw (seed {seed})</p>")
    sections.append('<div class="sheet">' + "".join(_card(s) for s in picked) + "</div>")
    sections.append("<h2>Distributions</h2><div class='charts'>" + "".join(histograms(series, numeric)) + "</div>")
    if manifest is not None:
        from . import charts

        chart, table = rejections(manifest)
        sections.append("<h2>Filtering and rejections</h2><div class='charts'>" + "".join(funnel(manifest.get("datasets", {}))) + chart + "</div>")
        sections.append("<h3>examples per reason</h3>" + table)
        stages = manifest.get("timings", {}).get("stages", {})
        sections.append(
            "<h2>Throughput and timings</h2><div class='charts'>"
            + _chart("throughput", charts.throughput(manifest.get("units", [])))
            + _chart("stages", charts.hbar("time per stage (summed over units)", list(stages), list(stages.values()), "seconds", fmt="{:.3f}s"))
            + "</div>"
        )
    sections.append(f"<p class='muted'>report built in {time.perf_counter() - t0:.1f}s</p>")
    doc = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>mmprep preview: {_e(path.name)}</title>"
        f"<style>{CSS}</style></head><body>{''.join(sections)}"
        f"<pre id='mmprep-render-check' style='display:none'></pre><script>{CHECK_JS}</script></body></html>"
    )
    if html_path is None:
        html_path = (path / "_mmprep" / "preview.html") if fmt == "mmprep" else Path(re.sub(r"[^A-Za-z0-9_.-]", "_", path.name or "dataset") + ".preview.html")
    html_path = Path(html_path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = html_path.with_name(f".{html_path.name}.tmp")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(html_path)
    return html_path
