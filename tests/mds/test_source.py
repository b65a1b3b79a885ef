"""The mds source, reading datasets written by the real MDSWriter (micro_diffusion style)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from PIL import Image

from mmprep import Context
from mmprep_mds import MdsSource

from .mds_testlib import jpeg_bytes


def S(tmp_path, **kw):
    return MdsSource(MdsSource.Options(**kw), Context(base_dir=tmp_path, dataset="raw"))


@pytest.fixture
def micro_diffusion_raw(tmp_path):
    """Two 'processes' each with a plain MDSWriter into out/<i>/, then merge_index: convert.py's way.

    Images are file-backed PIL JPEGs, so MDS's jpeg encoding stores the file bytes.
    """
    from streaming.base import MDSWriter
    from streaming.base.util import merge_index

    out = tmp_path / "raw_mds"
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    expected = []
    columns = {"width": "int32", "height": "int32", "jpg": "jpeg", "caption": "str"}
    for proc in range(2):
        w = MDSWriter(out=str(out / str(proc)), columns=columns, compression=None, size_limit=3000)
        for j in range(7):
            i = proc * 7 + j
            p = imgs / f"{i}.jpg"
            p.write_bytes(jpeg_bytes(20 + j, 18, i))
            img = Image.open(p)
            w.write({"jpg": img, "caption": f"cap {i}", "width": 600 + i, "height": 500 + i})
            expected.append({"image_bytes": p.read_bytes(), "caption": f"cap {i}", "width": 600 + i, "height": 500 + i})
        w.finish()
    merge_index([str(out / str(p) / "index.json") for p in range(2)], out=str(out), keep_local=True)
    return out, expected


def read_source(src):
    parts = src.partitions()
    frames, rejected = [], {}
    for p in parts:
        data = src.read_partition(p)
        frames.append(data.frame)
        for k, v in data.rejected.items():
            rejected[k] = rejected.get(k, 0) + v
    return parts, pl.concat(frames, how="vertical_relaxed"), rejected


def test_reads_micro_diffusion_raw_mds(micro_diffusion_raw, tmp_path):
    root, expected = micro_diffusion_raw
    index = json.loads((root / "index.json").read_text())
    src = S(tmp_path, path=str(root.relative_to(tmp_path)))
    parts, df, rejected = read_source(src)
    assert len(parts) == len(index["shards"]) > 2 and rejected == {}
    assert sum(p.rows for p in parts) == 14 and len({p.id for p in parts}) == len(parts)
    assert df.columns == ["key", "caption", "height", "image_bytes", "width"]
    assert df.schema["width"] == pl.Int32 and df.schema["image_bytes"] == pl.Binary
    assert df.select("image_bytes", "caption", "width", "height").to_dicts() == expected
    assert df["key"].n_unique() == 14 and df["key"].str.contains(r"^[A-Za-z0-9_-]+$").all()
    assert df["key"][0] == "raw-0_shard_00000-000000"  # <dataset>-<shard>-<index>
    # stable: the same keys on a second read; grouping shards changes units, not keys
    _, again, _ = read_source(S(tmp_path, path=str(root), shards_per_partition=2))
    assert again["key"].to_list() == df["key"].to_list()


def test_key_column_compression_columns_and_rename(tmp_path):
    from streaming.base import MDSWriter

    out = tmp_path / "z"
    cols = {"key": "str", "image": "png", "text": "str", "emb": "ndarray:float32:2,3", "meta": "json", "n": "int64"}
    rows = []
    with_png = []
    for i in range(9):
        arr = np.full((4, 5, 3), i, np.uint8)
        img = Image.fromarray(arr)
        import io

        buf = io.BytesIO()
        img.save(buf, format="PNG")
        with_png.append(buf.getvalue())
        rows.append({"key": f"id.{i}", "image": img, "text": f"t{i}", "emb": np.arange(6, dtype=np.float32).reshape(2, 3) + i,
                     "meta": {"i": i}, "n": 2**40 + i})
    w = MDSWriter(out=str(out), columns=cols, compression="zstd:3", size_limit=400)
    for r in rows:
        w.write(r)
    w.finish()
    parts, df, rejected = read_source(S(tmp_path, path=str(out), rename={"text": "caption", "image": "image_bytes"}))
    assert len(parts) > 1 and rejected == {}
    assert df["key"].to_list() == [f"id_{i}" for i in range(9)]  # sanitised key column
    assert df["caption"].to_list() == [f"t{i}" for i in range(9)]
    assert df["image_bytes"].to_list() == with_png  # PNG encoding is lossless and deterministic
    assert df["n"].to_list() == [2**40 + i for i in range(9)]
    np.testing.assert_array_equal(df["emb"].to_numpy()[3], np.arange(6, dtype=np.float32).reshape(2, 3) + 3)
    assert df["meta"].to_list() == [{"i": i} for i in range(9)]
    # column selection
    _, df2, _ = read_source(S(tmp_path, path=str(out), columns=["text"]))
    assert df2.columns == ["key", "text"]


def test_remote_with_cache_dir(micro_diffusion_raw, tmp_path):
    import fsspec

    root, expected = micro_diffusion_raw
    fs = fsspec.filesystem("memory")
    for p in root.rglob("*"):
        if p.is_file():
            fs.pipe(f"/mdsremote/{p.relative_to(root)}", p.read_bytes())
    src = S(tmp_path, path="memory://mdsremote", cache_dir="cache")
    parts, df, rejected = read_source(src)
    assert df.select("image_bytes", "caption", "width", "height").to_dicts() == expected
    assert (tmp_path / "cache" / "index.json").exists() and (tmp_path / "cache" / "1" / "shard.00000.mds").exists()
    with pytest.raises(Exception, match="cache_dir"):
        read_source(S(tmp_path, path="memory://mdsremote"))


def test_damaged_shard_is_counted_not_raised(micro_diffusion_raw, tmp_path):
    root, _ = micro_diffusion_raw
    index = json.loads((root / "index.json").read_text())
    victim = root / index["shards"][1]["raw_data"]["basename"]
    victim.write_bytes(victim.read_bytes()[:-50])
    src = S(tmp_path, path=str(root))
    parts, df, rejected = read_source(src)
    assert rejected == {"mds:unreadable-shard": index["shards"][1]["samples"]}
    assert df.height == 14 - index["shards"][1]["samples"]


def test_missing_index_is_a_config_error(tmp_path):
    from mmprep import ConfigError

    with pytest.raises(ConfigError, match="index.json"):
        S(tmp_path, path=str(tmp_path)).partitions()
