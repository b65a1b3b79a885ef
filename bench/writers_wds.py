"""Webdataset writer vs a direct webdataset.TarWriter loop on the same samples.

Samples: ~50 KB JPEG-like bytes + caption + 32 KB latent bytes (float16 4x64x64), built once
in memory and shared by every variant.
mmprep: write_unit per unit of --unit samples into a part tar, then finalize repacks the
parts into exact --per-shard shards (both steps timed: the whole write path a run gets).
Baseline: webdataset.ShardWriter (a TarWriter per shard) with maxcount=--per-shard.
Variants run interleaved (A,B,B,A,A,B...), each after an os.sync() (untimed) so none pays for
another's write-back; the table gives medians over --reps.

    .venv/bin/python bench/writers_wds.py --count 20000
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl


def make(count: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, 50_000 + 4096, dtype=np.uint8).tobytes()
    lat = rng.integers(0, 256, 32_768, dtype=np.uint8).tobytes()
    imgs = [b"\xff\xd8\xff\xe0" + base[i % 4096: i % 4096 + 50_000] for i in range(count)]
    return pl.DataFrame(
        {
            "key": [f"{i:09d}" for i in range(count)],
            "image_bytes": imgs,
            "caption": [f"a caption for sample number {i}, with some words" for i in range(count)],
            "latents": [lat] * count,
        }
    )


def run_mmprep(df: pl.DataFrame, out: Path, unit: int, per_shard: int, fsync: bool = True) -> tuple[float, float, float]:
    from mmprep import Context, UnitInfo
    from mmprep_webdataset import WebDatasetWriter

    opts = WebDatasetWriter.Options(samples_per_shard=per_shard, extensions={"latents": "latents"}, fsync=fsync)
    w = WebDatasetWriter(opts, Context())
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    records = []
    for i, start in enumerate(range(0, df.height, unit)):
        part = df.slice(start, unit)
        uid = f"u-{i:05d}"
        st = w.write_unit(part, UnitInfo(uid, i, part.height), out)  # staging == root: no move cost
        records.append({"unit": uid, "index": i, "rows": part.height, "stats": st})
    t1 = time.perf_counter()
    w.finalize(out, records, {})
    t2 = time.perf_counter()
    return t2 - t0, t1 - t0, t2 - t1


def run_wds(df: pl.DataFrame, out: Path, per_shard: int) -> float:
    import webdataset as wds

    out.mkdir(parents=True)
    t0 = time.perf_counter()
    with wds.ShardWriter(str(out / "%05d.tar"), maxcount=per_shard, verbose=0) as sink:
        for k, img, cap, lat in zip(df["key"], df["image_bytes"], df["caption"], df["latents"]):
            sink.write({"__key__": k, "jpg": img, "txt": cap, "latents": lat})
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--unit", type=int, default=2500)
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-fsync-variant", action="store_true", help="also time mmprep with fsync: false")
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    import webdataset  # noqa: F401  (import cost outside the timings)

    df = make(a.count)
    mb = sum(len(x) for x in df["image_bytes"]) / 1e6 + a.count * (32_768 / 1e6)
    base = Path(a.dir or tempfile.mkdtemp(prefix="wdsbench-"))
    names = ["webdataset.ShardWriter", "mmprep webdataset"] + (["mmprep webdataset, fsync: false"] if a.no_fsync_variant else [])
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    notes: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for rep in range(a.reps):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            d = base / f"v{names.index(name)}-{rep}"
            shutil.rmtree(d, ignore_errors=True)
            os.sync()
            c0 = time.process_time()  # CPU seconds of all threads of this process
            if name.startswith("mmprep"):
                total, wr, fin = run_mmprep(df, d, a.unit, a.per_shard, fsync="fsync: false" not in name)
                notes[name].append((wr, fin))
            else:
                total = run_wds(df, d, a.per_shard)
            cpu[name].append(time.process_time() - c0)
            times[name].append(total)
            print(f"rep {rep} {name}: {total:.2f} s, {cpu[name][-1]:.2f} CPU s", flush=True)
            shutil.rmtree(d, ignore_errors=True)
    ref = statistics.median(times[names[0]])
    print(f"\n{a.count} samples, {mb:.0f} MB payload, units of {a.unit}, shards of {a.per_shard}; "
          f"median of {a.reps} interleaved runs; ShardWriter never fsyncs, mmprep fsyncs each shard unless noted")
    print("| writer | seconds (median) | runs | CPU s (median) | samples/s | MB/s | speed vs ShardWriter | note |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        t = statistics.median(times[name])
        runs = " / ".join(f"{x:.2f}" for x in times[name])
        note = ""
        if notes[name]:
            wr = statistics.median(x[0] for x in notes[name])
            fin = statistics.median(x[1] for x in notes[name])
            note = f"write_unit {wr:.2f} s + finalize {fin:.2f} s"
        c = statistics.median(cpu[name])
        print(f"| {name} | {t:.2f} | {runs} | {c:.2f} | {a.count / t:,.0f} | {mb / t:,.0f} | {ref / t:.2f}x | {note} |")


if __name__ == "__main__":
    main()
