"""Charts of the preview report, drawn with matplotlib (Agg backend) and returned as inline SVG."""

from __future__ import annotations

import io
import re
from typing import Any

SERIES_COLORS = {"source": "#9aa5b1", "after filters + sampling": "#4c78a8", "written": "#f58518", "samples": "#f58518"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "figure.constrained_layout.use": True, "font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def to_svg(fig) -> str:
    plt = _plt()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")  # layout is constrained: no second (bbox_inches="tight") draw
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    # unique ids per chart so several inline SVGs never clash (clip paths, glyphs)
    tag = f"c{id(fig) & 0xFFFFFF:x}"
    svg = re.sub(r'id="([^"]+)"', lambda m: f'id="{tag}-{m.group(1)}"', svg)
    svg = re.sub(r'url\(#([^)]+)\)', lambda m: f"url(#{tag}-{m.group(1)})", svg)
    svg = re.sub(r'xlink:href="#([^"]+)"', lambda m: f'xlink:href="#{tag}-{m.group(1)}"', svg)
    return svg


def histogram(title: str, xlabel: str, series: dict[str, Any], bins: int = 40, log: bool = False) -> str | None:
    """Overlaid step histograms of the non-null values of each series (numpy arrays)."""
    import numpy as np

    plt = _plt()
    data = {k: np.asarray(v, dtype=float) for k, v in series.items()}
    data = {k: v[np.isfinite(v)] for k, v in data.items()}
    data = {k: v for k, v in data.items() if v.size}
    if not data:
        return None
    allv = np.concatenate(list(data.values()))
    lo, hi = float(allv.min()), float(allv.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    fig, ax = plt.subplots(figsize=(4.6, 2.8))
    for name, v in data.items():
        ax.hist(v, bins=edges, histtype="stepfilled" if name == "source" else "step", alpha=0.45 if name == "source" else 1.0,
                linewidth=1.6, color=SERIES_COLORS.get(name), label=f"{name} (n={v.size:,})")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=7, frameon=False)
    return to_svg(fig)


def hbar(title: str, labels: list[str], values: list[float], xlabel: str, colors: list[str] | None = None,
         annotate: bool = True, fmt: str = "{:,.0f}") -> str | None:
    if not labels:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.2, 0.5 + 0.32 * len(labels)))
    y = list(range(len(labels)))[::-1]
    ax.barh(y, values, color=colors or "#4c78a8")
    ax.set_yticks(y, labels)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    if annotate:
        top = max(values) if values else 0
        for yi, v in zip(y, values):
            ax.text(v + top * 0.01, yi, fmt.format(v), va="center", fontsize=7)
        ax.set_xlim(0, top * 1.15 if top else 1)
    return to_svg(fig)


def throughput(units: list[dict]) -> str | None:
    """Cumulative samples over wall time and per-unit rates, from the unit records."""
    units = [u for u in units if u.get("started_at") and u.get("finished_at")]
    if not units:
        return None
    plt = _plt()
    t0 = min(u["started_at"] for u in units)
    done = sorted(units, key=lambda u: u["finished_at"])
    xs, ys, total = [0.0], [0], 0
    for u in done:
        total += u["rows_in"]
        xs.append(u["finished_at"] - t0)
        ys.append(total)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.0, 2.8))
    a1.step(xs, ys, where="post", color="#4c78a8")
    a1.set_xlabel("seconds since the first unit started")
    a1.set_ylabel("samples processed")
    a1.set_title("throughput (cumulative)")
    for u in units:
        dur = max(u["finished_at"] - u["started_at"], 1e-6)
        a2.barh(u.get("index", 0), dur, left=u["started_at"] - t0, color="#f58518", height=0.8)
    a2.set_xlabel("seconds")
    a2.set_ylabel("unit index")
    span = max(u["finished_at"] for u in units) - t0
    rate = total / span if span > 0 else float("nan")
    a2.set_title(f"units over time ({rate:,.1f} samples/s overall)")
    return to_svg(fig)
