"""Benchmark: the mmprep `mds` writer vs a direct MDSWriter loop over the same in-memory rows.

Rows: ~50 KB real JPEG bytes + caption + 32 KB latent bytes (float16 4x64x64) + key.
Compared side by side in one process, best of --repeat runs each, page cache, no fsync:

* direct:      `MDSWriter(columns={key: str, caption: str, jpg: jpeg-bytes*, latents_512: bytes})`,
               `writer.write(dict)` for every prebuilt row dict, `finish()`;
               (*the direct loop stores jpg as `bytes`: MDS's `jpeg` encoding would decode and
               re-encode each image, which is what the mmprep writer avoids)
* write_unit:  `MdsWriter.write_unit(frame, unit, staging)` on the same rows as a polars frame
               (one unit; includes inferring encodings and encoding columns);
* pipeline:    a full `mmprep` run: parquet source -> mds writer, units of --unit rows,
               --workers processes (planning, reading parquet, commit, finalize).

Usage: python bench/writers_mds.py --count 5000 [--unit 1000] [--workers 1] [--repeat 2] [--tmp DIR]
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image


def jpeg_about(kb: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    side = 256
    while True:
        yy, xx = np.mgrid[0:side, 0:side]
        img = np.stack([np.sin(xx / 17 + seed) * 100 + 128, np.cos(yy / 23) * 100 + 128, (xx ^ yy) % 256], -1)
        img = img + rng.normal(0, 18, img.shape)
        buf = io.BytesIO()
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
        if buf.tell() >= kb * 1024 or side > 2048:
            return buf.getvalue()
        side = int(side * 1.25)


def make_rows(n: int) -> pl.DataFrame:
    pool = [jpeg_about(50, s) for s in range(16)]
    rng = np.random.default_rng(0)
    lat = [rng.standard_normal((4, 64, 64)).astype(np.float16).tobytes() for _ in range(16)]
    return pl.DataFrame({
        "key": [f"bench-{i:07d}" for i in range(n)],
        "caption": [f"a synthetic caption for sample {i} with a few more words" for i in range(n)],
        "jpg": [pool[i % 16] for i in range(n)],
        "latents_512": [lat[(i * 7) % 16] for i in range(n)],
    }, schema={"key": pl.String, "caption": pl.String, "jpg": pl.Binary, "latents_512": pl.Binary})


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_direct(rows: list[dict], out: Path) -> float:
    from streaming.base import MDSWriter

    t = time.perf_counter()
    w = MDSWriter(out=str(out), columns={"key": "str", "caption": "str", "jpg": "bytes", "latents_512": "bytes"},
                  compression=None, size_limit=256 * (1 << 20))
    for r in rows:
        w.write(r)
    w.finish()
    return time.perf_counter() - t


def bench_write_unit(df: pl.DataFrame, staging: Path) -> float:
    from mmprep import UnitInfo
    from mmprep_mds import MdsWriter

    w = MdsWriter(MdsWriter.Options())
    t = time.perf_counter()
    stats = w.write_unit(df, UnitInfo("u00000", 0, df.height), staging)
    dt = time.perf_counter() - t
    assert stats["samples"] == df.height and stats["columns"]["jpg"] == "jpeg"
    return dt


def bench_pipeline(parquet: Path, out: Path, unit: int, workers: int) -> tuple[float, int]:
    from mmprep import Pipeline

    doc = {"datasets": [{"name": "bench", "source": {"type": "parquet", "path": str(parquet)}}],
           "write": [{"type": "mds"}], "run": {"samples_per_unit": unit, "workers": workers}}
    t = time.perf_counter()
    res = Pipeline.from_dict(doc, base_dir=parquet.parent).run(out=str(out), quiet=True)
    dt = time.perf_counter() - t
    assert res.ok and res.manifest["totals"]["written"] == pl.scan_parquet(parquet).select(pl.len()).collect().item()
    return dt, du(out) - du(out / "_mmprep")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--unit", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--tmp", default=None)
    a = ap.parse_args()
    import streaming.base  # noqa: F401  (import cost outside the timings)

    tmp = Path(tempfile.mkdtemp(prefix="bench-mds-", dir=a.tmp))
    try:
        df = make_rows(a.count)
        rows = df.to_dicts()
        payload = df["jpg"].bin.size().sum() + df["latents_512"].bin.size().sum() + df["caption"].str.len_bytes().sum() + df["key"].str.len_bytes().sum()
        res: dict[str, list[float]] = {"direct": [], "write_unit": []}
        size = {}
        for r in range(a.repeat):
            for name in ("direct", "write_unit"):  # alternate to share cache/thermal effects
                out = tmp / f"{name}-{r}"
                dt = bench_direct(rows, out) if name == "direct" else bench_write_unit(df, out)
                res[name].append(dt)
                size[name] = du(out)
                shutil.rmtree(out)
        parquet = tmp / "rows.parquet"
        df.write_parquet(parquet, compression="uncompressed")
        pipe_dt, pipe_bytes = bench_pipeline(parquet, tmp / "pipe", a.unit, a.workers)
        size["pipeline"] = pipe_bytes
        base = min(res["direct"])
        print(f"count={a.count} payload={payload / 1e6:.1f} MB repeat={a.repeat} unit={a.unit} workers={a.workers}")
        print("| path | seconds | samples/s | MB/s (output) | ratio vs direct |")
        print("|---|---|---|---|---|")
        for name, dt in (("direct MDSWriter loop", base), ("mds write_unit", min(res["write_unit"])),
                         (f"mmprep run (parquet -> mds, {a.workers} worker(s))", pipe_dt)):
            key = {"direct MDSWriter loop": "direct", "mds write_unit": "write_unit"}.get(name, "pipeline")
            print(f"| {name} | {dt:.2f} | {a.count / dt:,.0f} | {size[key] / dt / 1e6:,.0f} | {base / dt:.2f} |")
        print(f"all runs (s): direct={[round(x, 2) for x in res['direct']]} write_unit={[round(x, 2) for x in res['write_unit']]}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
