"""Repack uneven img2dataset-style tars into exact-size shards: mmprep vs webdataset.

Input: --tars uneven tars of about --per samples (jpg ~10 KB + txt + json, some samples lacking
txt). mmprep: webdataset source (require jpg+txt) -> webdataset writer (samples_per_shard),
a full `Pipeline.run` (plan, units, commit, finalize, manifest). Baseline: the loop a user
writes: webdataset.WebDataset over the tars -> skip incomplete samples -> ShardWriter(maxcount).

    .venv/bin/python bench/repack.py --tars 100 --per 1000      # the issue's size
    .venv/bin/python bench/repack.py --tars 100 --per 100       # modest
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np


def make(folder: Path, tars: int, per: int) -> int:
    rng = np.random.default_rng(0)
    blob = rng.integers(0, 256, 10_000 + 4096, dtype=np.uint8).tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for s in range(tars):
        n = int(per * rng.uniform(0.7, 1.0))
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tf:
            for j in range(n):
                key = f"{s:05d}{j:04d}"
                m = {"jpg": b"\xff\xd8\xff\xe0" + blob[j % 4096: j % 4096 + 10_000], "txt": f"caption {key}".encode(), "json": json.dumps({"key": key}).encode()}
                if j % 11 == 3:
                    del m["txt"]
                for ext, data in m.items():
                    ti = tarfile.TarInfo(f"{key}.{ext}")
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))
                total += 1
    return total


def run_mmprep(src: Path, out: Path, n: int, workers: int) -> tuple[float, int]:
    from mmprep import Pipeline

    doc = {
        "datasets": [{"name": "d", "source": {"type": "webdataset", "path": str(src / "*.tar"), "require": ["jpg", "txt"], "json_mode": "raw"}}],
        "write": [{"type": "webdataset", "path": "wds", "samples_per_shard": n, "list_keys": False}],
        "run": {"workers": workers},
    }
    t0 = time.perf_counter()
    res = Pipeline.from_dict(doc, base_dir=src).run(out=str(out), quiet=True)
    return time.perf_counter() - t0, res.manifest["totals"]["written"]


def run_wds(src: Path, out: Path, n: int) -> tuple[float, int]:
    import webdataset as wds

    out.mkdir(parents=True)
    t0 = time.perf_counter()
    urls = [str(p) for p in sorted(src.glob("*.tar"))]
    k = 0
    with wds.ShardWriter(str(out / "%05d.tar"), maxcount=n, verbose=0) as sink:
        for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
            if "jpg" not in s or "txt" not in s:
                continue
            sink.write({"__key__": s["__key__"], "jpg": s["jpg"], "txt": s["txt"], "json": s["json"]})
            k += 1
    return time.perf_counter() - t0, k


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tars", type=int, default=100)
    ap.add_argument("--per", type=int, default=1000)
    ap.add_argument("--shard", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    import webdataset  # noqa: F401

    base = Path(a.dir or tempfile.mkdtemp(prefix="repackbench-"))
    shutil.rmtree(base, ignore_errors=True)
    total = make(base / "in", a.tars, a.per)
    rows = {}
    for name, fn in (
        ("webdataset.WebDataset + ShardWriter", lambda o: run_wds(base / "in", o, a.shard)),
        (f"mmprep run (workers={a.workers})", lambda o: run_mmprep(base / "in", o, a.shard, a.workers)),
        ("mmprep run (workers=1)", lambda o: run_mmprep(base / "in", o, a.shard, 1)),
    ):
        o = base / "out"
        shutil.rmtree(o, ignore_errors=True)
        rows[name] = fn(o)
        shutil.rmtree(o, ignore_errors=True)
    ref = rows["webdataset.WebDataset + ShardWriter"][0]
    print(f"{a.tars} uneven tars, {total} input samples (~10 KB jpg + txt + json; 1 in 11 lacks txt), shards of {a.shard}")
    print("| tool | seconds | input samples/s | written | speed vs webdataset |")
    print("|---|---|---|---|---|")
    for name, (t, k) in rows.items():
        print(f"| {name} | {t:.2f} | {total / t:,.0f} | {k} | {ref / t:.2f}x |")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
