"""Fixtures of the report tests: a headless Chromium, small datasets in every supported format."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "report"


def photo_bytes(w: int, h: int, seed: int, quality: int = 90) -> bytes:
    """A smooth random colour image (JPEG), different per seed."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, size=(6, 8, 3), dtype=np.uint8)
    im = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# -- the browser -------------------------------------------------------------------------------
def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a headless-capable Chromium; installed with apt-get (chromium, chromium-driver) if missing."""
    exe = _find_chromium()
    if exe is None and shutil.which("apt-get"):
        try:
            subprocess.run(["apt-get", "install", "-y", "chromium", "chromium-driver"], capture_output=True, timeout=900)
            if _find_chromium() is None:
                subprocess.run(["apt-get", "update"], capture_output=True, timeout=300)
                subprocess.run(["apt-get", "install", "-y", "chromium", "chromium-driver"], capture_output=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            pytest.skip(f"headless Chromium not available and apt-get install chromium chromium-driver failed: {e}")
        exe = _find_chromium()
    if exe is None:
        pytest.skip("headless Chromium not available: `apt-get install -y chromium chromium-driver` could not install it "
                    "(no apt-get, no root or no package mirror)")
    return exe


def _chrome(exe: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--disable-extensions", "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def render(chromium):
    """render(html_path, screenshot_name) -> the page's self-check: {images: [...], charts: [...]}.

    The report's own script writes every thumbnail's naturalWidth and every chart's rendered
    size into #mmprep-render-check on load; Chromium dumps the DOM after the page settled
    (--virtual-time-budget) and takes a full-page-sized screenshot into test-artifacts/.
    """

    def _render(html: Path, name: str, height: int = 3200) -> dict:
        url = Path(html).resolve().as_uri()
        r = _chrome(chromium, "--virtual-time-budget=10000", "--dump-dom", url)
        assert r.returncode == 0, r.stderr[-2000:]
        start = r.stdout.find('id="mmprep-render-check"')
        assert start >= 0, "the report's check element is missing from the rendered DOM"
        body = r.stdout[r.stdout.index(">", start) + 1 : r.stdout.index("</pre>", start)]
        assert body.strip(), "the report's load script did not run"
        import html as _html

        check = json.loads(_html.unescape(body))
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / f"{name}.png"
        r = _chrome(chromium, f"--window-size=1400,{height}", "--virtual-time-budget=10000", f"--screenshot={shot}", url)
        assert r.returncode == 0 and shot.exists() and shot.stat().st_size > 10_000, r.stderr[-2000:]
        check["screenshot"] = str(shot)
        return check

    return _render


# -- datasets ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> Path:
    """8 good JPEGs of various sizes, one too small, one corrupt, one missing (in the table only)."""
    d = tmp_path_factory.mktemp("images")
    sizes = [(640, 480), (480, 640), (800, 600), (512, 512), (700, 400), (600, 900), (1024, 576), (520, 520)]
    rows = []
    for i, (w, h) in enumerate(sizes):
        (d / f"img{i}.jpg").write_bytes(photo_bytes(w, h, i))
        rows.append({"file": f"img{i}.jpg", "text": f"generated photo number {i} " + "x" * i, "score": 4.0 + i * 0.5, "w": w, "h": h})
    (d / "small.jpg").write_bytes(photo_bytes(100, 80, 99))
    rows.append({"file": "small.jpg", "text": "too small", "score": 9.0, "w": 100, "h": 80})
    (d / "broken.jpg").write_bytes(photo_bytes(600, 600, 98)[:700])
    rows.append({"file": "broken.jpg", "text": "truncated", "score": 9.0, "w": 600, "h": 600})
    rows.append({"file": "missing.jpg", "text": "missing file", "score": 9.0, "w": 600, "h": 600})
    rows.append({"file": "img0.jpg", "text": "low score", "score": 1.0, "w": 640, "h": 480})
    pl.DataFrame(rows).write_parquet(d / "table.parquet")
    return d


@pytest.fixture(scope="session")
def mmprep_output(image_dir, tmp_path_factory) -> Path:
    """A real run: aesthetic filter, media stage with rejections, parquet + webdataset writers."""
    from mmprep import Pipeline

    out = tmp_path_factory.mktemp("run") / "out"
    doc = {
        "datasets": [{
            "name": "photos",
            "source": {"type": "parquet", "path": str(image_dir / "table.parquet"), "rename": {"file": "image_path", "text": "caption", "w": "width", "h": "height"}},
            "filters": [{"type": "aesthetic", "column": "score", "cutoff": 2.0}],
        }],
        "media": {"root": str(image_dir), "min_size": 256, "resize": "downscale-shorter", "size": 256, "format": "jpeg", "quality": 90},
        "write": [{"type": "parquet", "path": "pq"}, {"type": "webdataset", "path": "wds", "columns": ["image_bytes", "caption", "width", "height"]}],
        "run": {"workers": 1, "samples_per_unit": 4},
    }
    res = Pipeline.from_dict(doc, base_dir=image_dir).run(out=str(out), quiet=True)
    assert res.ok, res.failed
    for name, d in res.manifest["datasets"].items():
        assert d["planned"] == d["written"] + sum(d["rejected"].values()), (name, d)
    return out


@pytest.fixture(scope="session")
def foreign(image_dir, tmp_path_factory) -> dict[str, Path]:
    """The same 8 images as datasets mmprep did not write: tars, MDS, parquet, LLaVA JSONL."""
    d = tmp_path_factory.mktemp("foreign")
    items = [(f"sample{i:03d}", (image_dir / f"img{i}.jpg").read_bytes(), f"caption of sample {i}") for i in range(8)]
    # WebDataset: two shards written with tarfile (members <key>.jpg / .txt / .json)
    (d / "wds").mkdir()
    for s in range(2):
        with tarfile.open(d / "wds" / f"shard-{s:05d}.tar", "w") as tf:
            for key, img, cap in items[s * 4 : (s + 1) * 4]:
                w, h = Image.open(io.BytesIO(img)).size
                for ext, data in (("jpg", img), ("txt", cap.encode()), ("json", json.dumps({"width": w, "height": h, "aesthetic": 5.5}).encode())):
                    ti = tarfile.TarInfo(f"{key}.{ext}")
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))
    # MDS with the micro_diffusion raw layout, written by streaming's MDSWriter
    from streaming.base import MDSWriter

    with MDSWriter(out=str(d / "mds"), columns={"width": "int32", "height": "int32", "jpg": "jpeg", "caption": "str"}, compression=None) as w:
        for key, img, cap in items:
            im = Image.open(io.BytesIO(img))
            w.write({"width": im.size[0], "height": im.size[1], "jpg": im, "caption": cap})
    # parquet with image bytes
    pl.DataFrame({"key": [k for k, _, _ in items], "image_bytes": [b for _, b, _ in items], "caption": [c for _, _, c in items],
                  "aesthetic": [4.0 + i for i in range(8)]}).write_parquet(d / "table.parquet")
    # LLaVA JSONL with image paths relative to the file
    (d / "llava" / "images").mkdir(parents=True)
    with open(d / "llava" / "data.jsonl", "w") as fh:
        for key, img, cap in items:
            (d / "llava" / "images" / f"{key}.jpg").write_bytes(img)
            fh.write(json.dumps({"id": key, "image": f"images/{key}.jpg", "conversations": [
                {"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": cap}]}) + "\n")
    return {"webdataset": d / "wds", "mds": d / "mds", "parquet": d / "table.parquet", "llava": d / "llava" / "data.jsonl"}
