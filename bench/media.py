"""Media stage benchmark: mmprep vs img2dataset vs a bare Pillow loop, per core.

Same set of generated photo-like JPEGs of mixed sizes (640×480 … 4000×3000), 512 px output
(shorter side, never upscaled), JPEG q95, written as tar shards.

  (a) mmprep: ``MediaStage.process`` on a frame of file paths + tar write of its output, with
      the default backend (``resize_backend: auto`` = OpenCV resize when cv2 imports) and
      with ``resize_backend: pillow`` (and, for reference, a whole ``mmprep run`` with the
      built-in parquet writer, 1 worker)
  (b) img2dataset (own venv, ``--venv``): file:// URLs, resize_mode keep_ratio,
      resize_only_if_bigger, webdataset output, 1 process
  (c) bare loop: Pillow open + draft + convert + BICUBIC resize + encode + tarfile write

Run it pinned to one core for per-core numbers::

    taskset -c 1 .venv/bin/python bench/media.py --count 1000

A large set can be measured in several shorter invocations (each under the shared benchmark
lock), every one running all the compared variants on its own slice of the images, then merged
into one table::

    flock /tmp/mmprep-bench.lock taskset -c 1 .venv/bin/python bench/media.py --count 2000 --chunk 0/2 --json a.json
    flock /tmp/mmprep-bench.lock taskset -c 1 .venv/bin/python bench/media.py --count 2000 --chunk 1/2 --json b.json
    .venv/bin/python bench/media.py --merge a.json b.json

Images are generated once into bench/data/media/ (gitignored) and reused.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent
SIZES = [(640, 480), (800, 600), (1024, 768), (1280, 960), (1600, 1200), (2048, 1536), (3000, 2000), (4000, 3000)]


def generate(data: Path, count: int) -> list[Path]:
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    noise_tile = rng.normal(0, 5, (1024, 1024, 1)).astype(np.float32)
    files = []
    for i in range(count):
        p = data / f"{i:06d}.jpg"
        files.append(p)
        if p.exists():
            continue
        w, h = SIZES[i % len(SIZES)]
        if i % 3 == 1:
            w, h = h, w  # some portrait images
        r = np.random.default_rng(i)
        small = r.integers(0, 256, (h // 64 + 2, w // 64 + 2, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
        mid = r.integers(0, 256, (h // 6 + 1, w // 6 + 1, 3), dtype=np.uint8)
        mid = np.asarray(Image.fromarray(mid).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
        reps = (h // 1024 + 1, w // 1024 + 1, 1)
        noise = np.roll(np.tile(noise_tile, reps), (i * 37, i * 91), axis=(0, 1))[:h, :w]
        a = np.clip(base * 0.7 + mid * 0.3 + noise, 0, 255).astype(np.uint8)
        Image.fromarray(a).save(p, "JPEG", quality=90)
    return files


def bare_loop(files: list[Path], out: Path, size: int) -> int:
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    with tarfile.open(out / "bare-000000.tar", "w") as tar:
        for i, f in enumerate(files):
            im = Image.open(f)
            w, h = im.size
            s = size / min(w, h)
            if s < 1:
                tw, th = round(w * s), round(h * s)
                im.draft("RGB", (tw, th))
                im = im.convert("RGB").resize((tw, th), Image.Resampling.BICUBIC)
            else:
                im = im.convert("RGB")
            b = io.BytesIO()
            im.save(b, "JPEG", quality=95)
            _add(tar, f"{i:06d}.jpg", b.getvalue())
            n += 1
    return n


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tar.addfile(ti, io.BytesIO(data))


def mmprep_stage(files: list[Path], out: Path, size: int, opts: dict) -> int:
    import polars as pl

    from mmprep import Context
    from mmprep.media import MediaStage

    out.mkdir(parents=True, exist_ok=True)
    stage = MediaStage.from_config({"size": size, "quality": 95, **opts}, Context())
    df = pl.DataFrame({"key": [f"{i:06d}" for i in range(len(files))], "image_path": [str(f) for f in files]})
    n = 0
    unit = 500
    for u in range(0, df.height, unit):
        res = stage.process(df.slice(u, unit))
        ok = res.filter(pl.col("_reject_reason").is_null())
        with tarfile.open(out / f"mmprep-{u // unit:06d}.tar", "w") as tar:
            for key, data in ok.select("key", "image_bytes").iter_rows():
                _add(tar, f"{key}.jpg", data)
        n += ok.height
    return n


def mmprep_run(files: list[Path], out: Path, size: int) -> int:
    import polars as pl

    work = out / "run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pl.DataFrame({"image_path": [str(f) for f in files]}).write_parquet(work / "table.parquet")
    doc = {
        "datasets": [{"name": "bench", "source": {"type": "parquet", "path": str(work / "table.parquet")}}],
        "media": {"size": size, "quality": 95},
        "write": [{"type": "parquet", "path": "pq", "exclude": []}],
        "run": {"workers": 1, "samples_per_unit": 500},
    }
    from mmprep import Pipeline

    res = Pipeline.from_dict(doc, base_dir=work).run(out=str(work / "out"), quiet=True)
    return res.manifest["totals"]["written"]


def img2dataset(files: list[Path], out: Path, size: int, venv: Path) -> int:
    """Run img2dataset in its own venv; returns the number of images it wrote."""
    work = out / "i2d"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "urls.txt").write_text("".join(f"file://{f}\n" for f in files))
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled")
    cmd = [
        str(venv / "bin" / "img2dataset"), "--url_list", str(work / "urls.txt"), "--input_format", "txt",
        "--output_folder", str(work / "out"), "--output_format", "webdataset", "--image_size", str(size),
        "--resize_mode", "keep_ratio", "--resize_only_if_bigger", "True", "--encode_quality", "95",
        "--processes_count", "1", "--thread_count", "4", "--number_sample_per_shard", "1000",
        "--enable_wandb", "False", "--distributor", "multiprocessing",
    ]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ok = 0
    for s in (work / "out").glob("*_stats.json"):
        ok += json.loads(s.read_text())["successes"]
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=2000, help="number of images (generated once)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--data", default=str(ROOT / "data" / "media"))
    ap.add_argument("--out", default=str(ROOT / "out" / "media"))
    ap.add_argument("--venv", default=str(ROOT.parent / ".venv-img2dataset"), help="venv with img2dataset installed")
    ap.add_argument("--skip", default="", help="comma list of runs to skip: bare,mmprep,mmprep-pillow,mmprep-draft,mmprep-bilinear,run,img2dataset")
    ap.add_argument("--chunk", default="0/1", help="I/K: measure only the I-th of K equal slices of the --count images")
    ap.add_argument("--json", default=None, help="also write the rows (and the data summary) to this JSON file")
    ap.add_argument("--merge", nargs="+", default=None, help="print one table summed over these --json files (no measuring)")
    a = ap.parse_args(argv)
    if a.merge:
        return merge(a.merge)
    skip = set(filter(None, a.skip.split(",")))
    ci, ck = (int(v) for v in a.chunk.split("/"))
    cores = len(os.sched_getaffinity(0))
    t = time.perf_counter()
    files = generate(Path(a.data), a.count)
    files = files[ci * len(files) // ck : (ci + 1) * len(files) // ck]
    print(f"{len(files)} images (slice {ci}/{ck} of {a.count}) ready in {time.perf_counter() - t:.1f}s; {cores} core(s) available", file=sys.stderr)
    mp = sum(Image.open(f).size[0] * Image.open(f).size[1] for f in files) / len(files) / 1e6
    mb = sum(f.stat().st_size for f in files) / 1e6
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    # warm the page cache
    for f in files:
        f.read_bytes()
    rows = []
    import polars  # noqa: F401  (imports outside the timed regions)

    import mmprep.media  # noqa: F401

    def cpu() -> float:
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def timed(name, fn):
        t0, c0 = time.perf_counter(), cpu()
        n = fn()
        dt, dc = time.perf_counter() - t0, cpu() - c0
        rows.append({"run": name, "images": n, "seconds": round(dt, 2), "cpu_seconds": round(dc, 2),
                     "img_per_s_per_core": round(n / dt / cores, 1), "img_per_cpu_s": round(n / dc, 1)})
        print(json.dumps(rows[-1]), file=sys.stderr)

    if "bare" not in skip:
        timed("bare loop (Pillow draft+BICUBIC+encode+tar)", lambda: bare_loop(files, out / "bare", a.size))
    from mmprep.media import MediaOptions
    from mmprep.media.decode import backend

    default = backend(MediaOptions())
    if default == "opencv":
        import cv2

        default = f"OpenCV {cv2.__version__} box-filter resize, simplejpeg scaled decode + encode"
    else:
        default = "Pillow BICUBIC, simplejpeg scaled decode (cv2 not installed)"
    if "mmprep" not in skip:
        timed(f"mmprep media stage (default, resize_backend auto: {default}) + tar", lambda: mmprep_stage(files, out / "mmprep", a.size, {}))
    if "mmprep-pillow" not in skip:
        timed("mmprep media stage, resize_backend: pillow (simplejpeg scaled decode + Pillow BICUBIC + Pillow encode) + tar",
              lambda: mmprep_stage(files, out / "mmprep-pillow", a.size, {"resize_backend": "pillow"}))
    if "mmprep-draft" not in skip:
        timed("mmprep media stage, fast_jpeg: false (Pillow draft decode, default resize backend, Pillow encode) + tar",
              lambda: mmprep_stage(files, out / "mmprep-draft", a.size, {"fast_jpeg": False}))
    if "mmprep-bilinear" not in skip:
        timed("mmprep media stage, resize_backend: pillow, resample: bilinear + tar",
              lambda: mmprep_stage(files, out / "mmprep-bil", a.size, {"resize_backend": "pillow", "resample": "bilinear"}))
    if "run" not in skip:
        timed("mmprep run (engine, parquet writer, 1 worker)", lambda: mmprep_run(files, out, a.size))
    if "img2dataset" not in skip:
        venv = Path(a.venv)
        if (venv / "bin" / "img2dataset").exists():
            timed("img2dataset start-up only (1 image)", lambda: img2dataset(files[:1], out, a.size, venv))
            startup = rows.pop()
            timed("img2dataset (1 process, 4 threads, incl. start-up)", lambda: img2dataset(files, out, a.size, venv))
            r = dict(rows[-1])
            r["run"] = f"img2dataset, start-up ({startup['cpu_seconds']} CPU s, {startup['seconds']} s) subtracted"
            r["seconds"] = round(r["seconds"] - startup["seconds"], 2)
            r["cpu_seconds"] = round(r["cpu_seconds"] - startup["cpu_seconds"], 2)
            r["images"] -= startup["images"]
            r["img_per_s_per_core"] = round(r["images"] / r["seconds"] / cores, 1)
            r["img_per_cpu_s"] = round(r["images"] / r["cpu_seconds"], 1)
            rows.append(r)
        else:
            print(f"img2dataset not found in {venv}: skipped", file=sys.stderr)
    summary = {"images": len(files), "mean_mp": mp, "mb": mb, "cores": cores, "size": a.size, "chunk": a.chunk, "count": a.count}
    if a.json:
        Path(a.json).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    table(rows, summary)
    return 0


def merge(paths: list[str]) -> int:
    """One table from several --json files: images, seconds and CPU seconds summed per run."""
    docs = [json.loads(Path(p).read_text()) for p in paths]
    rows: dict[str, dict] = {}
    for d in docs:
        for r in d["rows"]:
            name = r["run"]
            if name.startswith("img2dataset, start-up ("):  # its start-up is measured per invocation
                name = "img2dataset, start-up (measured in each invocation) subtracted"
            m = rows.setdefault(name, {"run": name, "images": 0, "seconds": 0.0, "cpu_seconds": 0.0})
            m["images"] += r["images"]
            m["seconds"] += r["seconds"]
            m["cpu_seconds"] += r["cpu_seconds"]
    cores = docs[0]["summary"]["cores"]
    for m in rows.values():
        m["seconds"] = round(m["seconds"], 2)
        m["cpu_seconds"] = round(m["cpu_seconds"], 2)
        m["img_per_s_per_core"] = round(m["images"] / m["seconds"] / cores, 1)
        m["img_per_cpu_s"] = round(m["images"] / m["cpu_seconds"], 1)
    n = sum(d["summary"]["images"] for d in docs)
    summary = {
        "images": n,
        "mean_mp": sum(d["summary"]["mean_mp"] * d["summary"]["images"] for d in docs) / n,
        "mb": sum(d["summary"]["mb"] for d in docs),
        "cores": cores,
        "size": docs[0]["summary"]["size"],
    }
    print(f"merged {len(docs)} invocations: " + ", ".join(f"slice {d['summary']['chunk']}" for d in docs))
    table(list(rows.values()), summary)
    return 0


def table(rows: list[dict], s: dict) -> None:
    base = next((r for r in rows if r["run"].startswith("bare")), None)
    i2d = next((r for r in rows if r["run"].startswith("img2dataset, start-up")), None)
    print(f"\n{s['images']} JPEGs, mean {s['mean_mp']:.2f} MP, {s['mb']:.0f} MB; {s['cores']} core(s); output shorter side {s['size']}, q95\n")
    print("| run | images | wall s | CPU s | img/s per core (wall) | img per CPU-second | vs bare loop (CPU) | vs img2dataset (CPU) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        vb = f"{r['img_per_cpu_s'] / base['img_per_cpu_s']:.2f}×" if base else "–"
        vi = f"{r['img_per_cpu_s'] / i2d['img_per_cpu_s']:.2f}×" if i2d else "–"
        print(f"| {r['run']} | {r['images']} | {r['seconds']} | {r['cpu_seconds']} | {r['img_per_s_per_core']} | {r['img_per_cpu_s']} | {vb} | {vi} |")


if __name__ == "__main__":
    sys.exit(main())
