"""P1: plan + filter + random sample + template -> jsonl, mmprep vs pandas row loop vs bare polars.

Run: .venv/bin/python bench/p1.py --rows 10000000 [--sample 1000000] [--workers 2]
All three do the same work on the same synthetic parquet: keep aesthetic > 5.67 and
min(width, height) >= 512, draw N rows at random, build a text field from a template, and
write JSON lines. Reports seconds and ratios from this one run, plus the peak RSS of the
mmprep plan step at 1/10 of the rows and at all rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

HERE = Path(__file__).resolve().parent
WORDS = "a the cat dog red blue car house tree sky over under running sitting beautiful old new small large photo painting city night river mountain with and of".split()


def make_data(path: Path, rows: int) -> None:
    if path.exists() and pl.scan_parquet(path).select(pl.len()).collect().item() == rows:
        return
    rng = np.random.default_rng(0)
    chunk = 1_000_000
    tmp_parts = []
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        words = np.array(WORDS)[rng.integers(0, len(WORDS), (n, 12))]
        caps = pl.DataFrame(words).select(pl.concat_str(pl.all(), separator=" ").alias("caption"))["caption"]
        df = pl.DataFrame(
            {
                "caption": caps,
                "aesthetic": rng.uniform(3, 8, n).astype(np.float32),
                "width": rng.integers(200, 2500, n).astype(np.int32),
                "height": rng.integers(200, 2500, n).astype(np.int32),
            }
        ).select(pl.format("https://img.example.com/{}.jpg", pl.int_range(start, start + n)).alias("url"), pl.all())
        p = path.with_name(f"{path.stem}.{start}.parquet")
        df.write_parquet(p)
        tmp_parts.append(p)
    pl.scan_parquet(tmp_parts).sink_parquet(path)
    for p in tmp_parts:
        p.unlink()


TEMPLATE = "Generate an image with the caption: {caption}"


def run_pandas(data: Path, out: Path, n: int, seed: int) -> None:
    import pandas as pd

    df = pd.read_parquet(data)
    df = df[(df["aesthetic"] > 5.67) & (df[["width", "height"]].min(axis=1) >= 512)]
    df = df.sample(n=n, random_state=seed)

    def process(row):  # what LaViDa-O style preprocess functions do, row by row
        return {"id": str(row["url"]), "image": row["url"], "prompt": TEMPLATE.format(caption=row["caption"]), "width": int(row["width"]), "height": int(row["height"])}

    with open(out / "pandas.jsonl", "w") as fh:
        for _, row in df.iterrows():
            fh.write(json.dumps(process(row)) + "\n")


def run_polars(data: Path, out: Path, n: int, seed: int) -> None:
    lf = pl.scan_parquet(data).filter((pl.col("aesthetic") > 5.67) & (pl.min_horizontal("width", "height") >= 512))
    df = lf.collect().sample(n=n, seed=seed)
    df = df.select(
        pl.col("url").alias("id"), pl.col("url").alias("image"), pl.format(TEMPLATE.replace("{caption}", "{}"), "caption").alias("prompt"), "width", "height"
    )
    df.write_ndjson(out / "polars.jsonl")


def pipeline_doc(data: Path, n: int, workers: int) -> dict:
    return {
        "datasets": [
            {
                "name": "p1",
                "source": {"type": "parquet", "path": str(data), "rename": {"url": "image_path"}},
                "filters": [{"type": "aesthetic", "cutoff": 5.67}, {"type": "min-size", "min_size": 512}],
                "sampling": f"random:{n}",
            }
        ],
        "format": [{"type": "template", "column": "prompt", "template": TEMPLATE}],
        "write": [{"type": "jsonl", "columns": ["key", "image_path", "prompt", "width", "height"]}],
        "run": {"workers": workers, "samples_per_unit": max(1, n // (workers * 4))},
    }


def run_mmprep(data: Path, out: Path, n: int, workers: int) -> dict:
    from mmprep import Pipeline

    res = Pipeline.from_dict(pipeline_doc(data, n, workers), base_dir=out).run(out=str(out / "mmprep"), quiet=True, overwrite=True)
    assert res.ok
    return res.manifest


PLAN_RSS = """
import sys, json
from pathlib import Path
sys.path.insert(0, %r)
from p1 import pipeline_doc
from mmprep import Pipeline
from mmprep.engine import make_plan
p = Pipeline.from_dict(pipeline_doc(Path(%r), %d, 1), base_dir=Path(%r))
out = Path(%r); out.mkdir(parents=True, exist_ok=True)
make_plan(p, out, None)
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child of a big parent reports the parent's peak
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({"maxrss_mb": int(hwm) / 1024}))
"""


def plan_rss(data: Path, n: int, tmp: Path) -> float:
    code = PLAN_RSS % (str(HERE), str(data), n, str(tmp), str(tmp / f"plan-{data.stem}"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])["maxrss_mb"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--sample", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--data-dir", default=str(HERE / "data"))
    ap.add_argument("--skip-pandas", action="store_true")
    a = ap.parse_args()
    data_dir = Path(a.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    data = data_dir / f"p1-{a.rows}.parquet"
    small = data_dir / f"p1-{a.rows // 10}.parquet"
    t = time.perf_counter()
    make_data(data, a.rows)
    make_data(small, a.rows // 10)
    print(f"data ready in {time.perf_counter() - t:.1f}s")
    sample = min(a.sample, a.rows // 10)
    # imports and plugin discovery happen before timing, as polars' and pandas' imports do
    import pandas  # noqa: F401

    from mmprep.registry import load

    load()
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        times = {}
        t = time.perf_counter(); run_polars(data, tmp, sample, 0); times["bare polars"] = time.perf_counter() - t
        t = time.perf_counter(); m = run_mmprep(data, tmp, sample, a.workers); times["mmprep"] = time.perf_counter() - t
        if not a.skip_pandas:
            t = time.perf_counter(); run_pandas(data, tmp, sample, 0); times["pandas row loop"] = time.perf_counter() - t
        written = m["totals"]["written"]
        assert written == sample, (written, sample)
        lines = sum(1 for f in (tmp / "mmprep").glob("*.jsonl") for _ in open(f))
        assert lines == sample
        rss_small = plan_rss(small, sample // 10, tmp)
        rss_big = plan_rss(data, sample, tmp)
    print(f"\nP1: {a.rows:,} rows -> filter -> random:{sample:,} -> template -> jsonl  (workers={a.workers}, cpus={os.cpu_count()})")
    print("| implementation | seconds | mmprep speed-up |")
    print("|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {v:.2f} | {v / times['mmprep']:.2f}x |")
    print(f"\nplan peak RSS: {a.rows // 10:,} rows {rss_small:.0f} MB; {a.rows:,} rows {rss_big:.0f} MB")


if __name__ == "__main__":
    main()
