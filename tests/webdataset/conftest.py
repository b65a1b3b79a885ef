"""Fixtures of the webdataset plugin tests: tiny real JPEGs, img2dataset-style tars, runs."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def jpeg(i: int, size: int = 16) -> bytes:
    from PIL import Image

    b = io.BytesIO()
    Image.new("RGB", (size, size), (i * 7 % 256, i * 13 % 256, (i * 29) % 256)).save(b, "JPEG", quality=90)
    return b.getvalue()


def png(i: int) -> bytes:
    from PIL import Image

    b = io.BytesIO()
    Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(b, "PNG")
    return b.getvalue()


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    """A tar as img2dataset / webdataset.TarWriter leave them (<key>.<ext> members, in order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for key, members in samples:
            for ext, data in members.items():
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size = len(data)
                ti.mtime = 1700000000
                tf.addfile(ti, io.BytesIO(data))
    return path


def img2dataset_tars(folder: Path, counts: list[int], missing_every: int = 0) -> dict[str, dict]:
    """Uneven shards NNNNN.tar with <key>.jpg/.txt/.json; every k-th sample lacks its txt."""
    truth: dict[str, dict] = {}
    g = 0
    for s, n in enumerate(counts):
        samples = []
        for j in range(n):
            key = f"{s:05d}{j:04d}"
            m = {"jpg": jpeg(g), "txt": f"caption {g}".encode(), "json": json.dumps({"key": key, "caption": f"caption {g}", "short": f"short {g}", "long": f"a longer caption number {g}"}).encode()}
            if missing_every and g % missing_every == missing_every - 1:
                del m["txt"]
            samples.append((key, m))
            truth[key] = m
            g += 1
        write_tar(folder / f"{s:05d}.tar", samples)
    return truth


def read_wds(urls: list[str]) -> list[dict]:
    """Every sample of ``urls`` through webdataset.WebDataset (no shuffling), raw bytes."""
    import webdataset as wds

    ds = wds.WebDataset([str(u) for u in urls], shardshuffle=False, empty_check=False)
    out = [dict(s) for s in ds]
    return out


def check_accounting(manifest: dict) -> None:
    for name, d in manifest["datasets"].items():
        assert d["planned"] == d["written"] + sum(d["rejected"].values()), (name, d)


def run(doc: dict, base: Path, out: Path):
    from mmprep import Pipeline

    res = Pipeline.from_dict(doc, base_dir=base).run(out=str(out), quiet=True)
    check_accounting(res.manifest)
    return res


def tar_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.tar") if not p.name.startswith("."))


@pytest.fixture
def parquet_with_images(tmp_path):
    """60 rows: key, caption (every 6th empty), image_bytes (JPEG or PNG), width, score."""
    import polars as pl

    n = 60
    df = pl.DataFrame(
        {
            "id": [f"img.{i:03d}" for i in range(n)],
            "caption": [("" if i % 6 == 5 else f"a photo number {i}") for i in range(n)],
            "image_bytes": [png(i) if i % 10 == 3 else jpeg(i) for i in range(n)],
            "width": list(range(100, 100 + n)),
            "score": [float(i % 7) for i in range(n)],
        }
    )
    p = tmp_path / "in.parquet"
    df.write_parquet(p)
    return p, df
