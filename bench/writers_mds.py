"""Benchmark: the mmprep `mds` writer vs a direct MDSWriter loop over the same in-memory rows.

Rows: ~50 KB real JPEG bytes + caption + 32 KB latent bytes (float16 4x64x64) + key, every
row its own copy of the bytes (no shared objects, no cache-resident reuse).

Modes (each variant after an untimed ``os.sync()`` so none pays for another's write-back;
variants interleaved A,B,A,B; the tables give medians and the best run):

* ratio (default): one process, one unit of all --count rows.
  - direct:      ``MDSWriter(columns={caption: str, jpg: jpeg, key: str, latents_512: bytes})``
                 ``.write(dict)`` for every prebuilt row dict (``mds_encode`` passes ``bytes``
                 through, so ``jpeg`` stores the bytes verbatim), ``finish()``;
  - write_unit:  ``MdsWriter.write_unit(frame, unit, staging)`` on the same rows as a polars
                 frame (infers encodings, encodes columns, writes shards + index).
  Both outputs are checked to be identical (same index.json: same shards, sizes, offsets).
* --scaling: the rows cut into units of --unit rows, written by a spawn ProcessPool of 1 and
  of 2 workers (data built in each worker before the clock starts), then merged:
  - direct:      micro_diffusion's recipe: one MDSWriter per unit into ``root/<unit>/``, then
                 ``streaming.base.util.merge_index(<unit index files>, root)``;
  - mmprep:      ``write_unit`` into a staging dir, ``os.replace`` into ``root/<unit>`` (the
                 engine's commit), then ``MdsWriter.finalize`` (merged index.json).
* --pipeline: one full ``mmprep run`` (parquet source -> mds, units of --unit rows, --workers)
  with the plan / unit time split from its manifest; every row's bytes distinct (else the
  plan's parquet copy dictionary-encodes the 16 distinct images down to a few MB).

Usage:
    python bench/writers_mds.py --count 20000 --repeat 3
    python bench/writers_mds.py --scaling --count 20000 --unit 2500 --repeat 2
    python bench/writers_mds.py --pipeline --count 20000 --unit 2500 --workers 2
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

DIRECT_COLUMNS = {"caption": "str", "jpg": "jpeg", "key": "str", "latents_512": "bytes"}
SIZE_LIMIT = 256 * (1 << 20)  # micro_diffusion's, the writer's default


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


def make_rows(n: int, unique: bool = False) -> pl.DataFrame:
    """16 distinct JPEGs / latents cycled; ``unique``: every value made distinct (8 bytes of
    the row number after the JPEG's end marker / in place of the latent's last 8 bytes), so a
    parquet copy of the rows cannot dictionary-encode them away."""
    pool = [jpeg_about(50, s) for s in range(16)]
    rng = np.random.default_rng(0)
    lat = [rng.standard_normal((4, 64, 64)).astype(np.float16).tobytes() for _ in range(16)]
    if unique:
        jpg = [pool[i % 16] + i.to_bytes(8, "little") for i in range(n)]
        lats = [lat[(i * 7) % 16][:-8] + i.to_bytes(8, "little") for i in range(n)]
    else:
        jpg = [pool[i % 16] for i in range(n)]
        lats = [lat[(i * 7) % 16] for i in range(n)]
    return pl.DataFrame({
        "key": [f"bench-{i:07d}" for i in range(n)],
        "caption": [f"a synthetic caption for sample {i} with a few more words" for i in range(n)],
        "jpg": jpg,
        "latents_512": lats,
    }, schema={"key": pl.String, "caption": pl.String, "jpg": pl.Binary, "latents_512": pl.Binary})


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def payload_bytes(df: pl.DataFrame) -> int:
    return int(df["jpg"].bin.size().sum() + df["latents_512"].bin.size().sum()
               + df["caption"].str.len_bytes().sum() + df["key"].str.len_bytes().sum())


def clean(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    os.sync()


# -- ratio mode ----------------------------------------------------------------------------
def bench_direct(rows: list[dict], out: Path) -> float:
    from streaming.base import MDSWriter

    t = time.perf_counter()
    w = MDSWriter(out=str(out), columns=DIRECT_COLUMNS, compression=None, size_limit=SIZE_LIMIT)
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


def ratio_mode(a, tmp: Path) -> None:
    df = make_rows(a.count)
    rows = df.to_dicts()  # one bytes object per value, like a decoded source would give
    payload = payload_bytes(df)
    res: dict[str, list[float]] = {"direct": [], "write_unit": []}
    size: dict[str, int] = {}
    for r in range(a.repeat):
        for name in (("direct", "write_unit") if r % 2 == 0 else ("write_unit", "direct")):
            out = tmp / f"{name}-{r}"
            os.sync()
            dt = bench_direct(rows, out) if name == "direct" else bench_write_unit(df, out)
            res[name].append(dt)
            size[name] = du(out)
            idx = out / "index.json" if name == "direct" else out / "u00000" / "index.json"
            if r == 0:
                size[name + "_index"] = idx.read_text()
            clean(out)
    assert size["direct_index"] == size["write_unit_index"], "outputs differ"
    print(f"count={a.count} payload={payload / 1e6:.1f} MB repeat={a.repeat} (outputs identical: same index.json)")
    print("| path | median s | best s | samples/s (median) | MB/s (median, output) | ratio vs direct (median) | ratio (best) |")
    print("|---|---|---|---|---|---|---|")
    dmed, dbest = statistics.median(res["direct"]), min(res["direct"])
    for name, label in (("direct", "direct MDSWriter loop"), ("write_unit", "mds write_unit")):
        med, best = statistics.median(res[name]), min(res[name])
        print(f"| {label} | {med:.2f} | {best:.2f} | {a.count / med:,.0f} | {size[name] / med / 1e6:,.0f} "
              f"| {dmed / med:.2f} | {dbest / best:.2f} |")
    print(f"all runs (s): direct={[round(x, 2) for x in res['direct']]} write_unit={[round(x, 2) for x in res['write_unit']]}")


# -- scaling mode --------------------------------------------------------------------------
_DATA: dict = {}


def _worker_init(count: int, mode: str, barrier) -> None:
    import pyarrow  # noqa: F401  (per-process import costs stay outside the clock, for both paths)
    import streaming.base  # noqa: F401
    import mmprep_mds  # noqa: F401

    df = make_rows(count)
    _DATA["rows"] = df.to_dicts() if mode == "direct" else None
    _DATA["df"] = None if mode == "direct" else df
    _DATA["barrier"] = barrier


def _ready() -> int:
    _DATA["barrier"].wait()  # returns once every worker has built its data
    return os.getpid()


def _unit_task(mode: str, uid: str, index: int, start: int, rows: int, root: str) -> dict:
    root_p = Path(root)
    if mode == "direct":
        from streaming.base import MDSWriter

        w = MDSWriter(out=str(root_p / uid), columns=DIRECT_COLUMNS, compression=None, size_limit=SIZE_LIMIT)
        for r in _DATA["rows"][start:start + rows]:
            w.write(r)
        w.finish()
        return {"unit": uid, "index": index, "rows": rows}
    from mmprep import UnitInfo
    from mmprep_mds import MdsWriter

    staging = root_p / "_staging" / uid
    staging.mkdir(parents=True)
    stats = MdsWriter(MdsWriter.Options()).write_unit(_DATA["df"].slice(start, rows), UnitInfo(uid, index, rows), staging)
    os.replace(staging / uid, root_p / uid)  # the engine's commit of the staged unit
    staging.rmdir()
    return {"unit": uid, "index": index, "rows": rows, "stats": stats}


def run_pool(mode: str, workers: int, count: int, unit: int, root: Path) -> float:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    root.mkdir(parents=True)
    units = [(f"u{i:05d}", i, s, min(unit, count - s)) for i, s in enumerate(range(0, count, unit))]
    ctx = mp.get_context("spawn")  # as the engine
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init, initargs=(count, mode, ctx.Barrier(workers))) as pool:
        pids = {f.result() for f in [pool.submit(_ready) for _ in range(workers)]}
        assert len(pids) == workers, pids
        os.sync()
        t = time.perf_counter()
        records = list(pool.map(_unit_task, *zip(*[(mode, *u, str(root)) for u in units])))
        if mode == "direct":
            from streaming.base.util import merge_index

            merge_index([str(root / u[0] / "index.json") for u in units], str(root))
        else:
            from mmprep_mds import MdsWriter

            (root / "_staging").rmdir()
            MdsWriter(MdsWriter.Options()).finalize(root, records, {"encoders": []})
        dt = time.perf_counter() - t
    index = json.loads((root / "index.json").read_text())
    assert sum(s["samples"] for s in index["shards"]) == count
    return dt


def scaling_mode(a, tmp: Path) -> None:
    payload = payload_bytes(make_rows(min(a.count, 64))) * a.count / min(a.count, 64)
    pools = [int(x) for x in a.pool.split(",")]
    res: dict[tuple[str, int], list[float]] = {}
    for r in range(a.repeat):
        for w in pools:
            for mode in (("direct", "mmprep") if r % 2 == 0 else ("mmprep", "direct")):
                out = tmp / f"{mode}-{w}-{r}"
                res.setdefault((mode, w), []).append(run_pool(mode, w, a.count, a.unit, out))
                clean(out)
    nunits = -(-a.count // a.unit)
    print(f"count={a.count} units={nunits} x {a.unit} rows payload~{payload / 1e6:.0f} MB repeat={a.repeat} cpus={os.cpu_count()}")
    print("| path | workers | median s | samples/s | MB/s (payload) | speed-up vs 1 worker | ratio vs direct (same workers) |")
    print("|---|---|---|---|---|---|---|")
    for mode, label in (("direct", "direct MDSWriter per unit + merge_index"), ("mmprep", "mds write_unit + commit + finalize")):
        for w in pools:
            med = statistics.median(res[(mode, w)])
            one = statistics.median(res[(mode, pools[0])])
            dmed = statistics.median(res[("direct", w)])
            print(f"| {label} | {w} | {med:.2f} | {a.count / med:,.0f} | {payload / med / 1e6:,.0f} | {one / med:.2f} | {dmed / med:.2f} |")
    print("all runs (s): " + " ".join(f"{m}/{w}={[round(x, 2) for x in v]}" for (m, w), v in res.items()))


# -- pipeline mode -------------------------------------------------------------------------
def pipeline_mode(a, tmp: Path) -> None:
    from mmprep import Pipeline

    df = make_rows(a.count, unique=True)
    parquet = tmp / "rows.parquet"
    df.write_parquet(parquet, compression="uncompressed")
    payload = payload_bytes(df)
    del df
    print(f"count={a.count} payload={payload / 1e6:.1f} MB unit={a.unit} workers={a.workers}")
    print("| mmprep run (parquet -> mds) | wall s | samples/s | MB/s (payload) | plan s | _mmprep MB | unit seconds summed (all workers) |")
    print("|---|---|---|---|---|---|---|")
    walls = {}
    for defer in (False, True):  # run.defer_binary: copy the bytes into plan.parquet, or read them back from the input
        out = tmp / f"pipe-{int(defer)}"
        doc = {"datasets": [{"name": "bench", "source": {"type": "parquet", "path": str(parquet)}}],
               "write": [{"type": "mds"}], "run": {"samples_per_unit": a.unit, "workers": a.workers, "defer_binary": defer}}
        os.sync()
        t = time.perf_counter()
        res = Pipeline.from_dict(doc, base_dir=tmp).run(out=str(out), quiet=True)
        dt = walls[defer] = time.perf_counter() - t
        assert res.ok and res.manifest["totals"]["written"] == a.count
        run_json = json.loads((out / "_mmprep" / "run.json").read_text())
        units = [json.loads(p.read_text()) for p in (out / "_mmprep" / "units").glob("*.json")
                 if not p.name.endswith((".intent.json", ".failed.json"))]
        stages: dict[str, float] = {}
        for u in units:
            for k, v in (u.get("timings") or {}).items():
                stages[k] = stages.get(k, 0.0) + v
        name = "defer_binary: true (bytes read back from the input)" if defer else "defer_binary: false (bytes copied into the plan)"
        print(f"| {name} | {dt:.2f} | {a.count / dt:,.0f} | {payload / dt / 1e6:,.0f} | {run_json.get('plan_seconds')} | "
              f"{du(out / '_mmprep') / 1e6:.0f} | " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(stages.items())) + " |", flush=True)
        shutil.rmtree(out)
    print(f"\ndefer_binary true runs {walls[False] / walls[True]:.2f}x the speed of a full plan copy")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scaling", action="store_true", help="units through a ProcessPool of --pool workers")
    ap.add_argument("--pool", default="1,2", help="worker counts for --scaling")
    ap.add_argument("--pipeline", action="store_true", help="one full mmprep run instead")
    ap.add_argument("--unit", type=int, default=2500)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--tmp", default=None)
    a = ap.parse_args()
    import pyarrow  # noqa: F401  (import costs outside the timings)
    import streaming.base  # noqa: F401

    tmp = Path(tempfile.mkdtemp(prefix="bench-mds-", dir=a.tmp))
    try:
        if a.scaling:
            scaling_mode(a, tmp)
        elif a.pipeline:
            pipeline_mode(a, tmp)
        else:
            ratio_mode(a, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
