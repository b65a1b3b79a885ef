"""Writer ``webdataset`` through the engine and directly: layout, determinism, wdinfo, NeMo, verify."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mmprep import Context, UnitInfo
from mmprep_webdataset import WebDatasetWriter
from mmprep_webdataset.writer import read_wdinfo

from .conftest import check_accounting, jpeg, read_wds, run, tar_files


def _doc(src: Path, **writer) -> dict:
    return {
        "datasets": [{"name": "d", "source": {"type": "parquet", "path": str(src)}, "key": {"column": "id"}}],
        "format": [{"type": "caption-clean", "drop_empty": True}],
        "write": [{"type": "webdataset", "path": "wds", **writer}],
        "run": {"workers": 1, "samples_per_unit": 9},
    }


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_round_trip_exact_shards_wdinfo(tmp_path, parquet_with_images):
    src, df = parquet_with_images
    res = run(_doc(src, samples_per_shard=7, wdinfo=True), tmp_path, tmp_path / "out")
    m = res.manifest
    kept = df.filter(pl.col("caption") != "")
    assert m["datasets"]["d"]["rejected"] == {"empty_caption": 60 - kept.height}
    root = tmp_path / "out" / "wds"
    shards = tar_files(root)
    assert [p.name for p in shards] == [f"{i:05d}.tar" for i in range(len(shards))]
    samples = read_wds(shards)
    assert len(samples) == kept.height == m["writers"][0]["info"]["samples"]
    # key order = plan order; values byte-exact
    assert [s["__key__"] for s in samples] == [k.replace(".", "_") for k in kept["id"]]
    for s, row in zip(samples, kept.iter_rows(named=True)):
        ext = "png" if row["image_bytes"][:4] == b"\x89PNG" else "jpg"
        assert s[ext] == row["image_bytes"]
        assert s["txt"].decode() == row["caption"]
        assert s["width.cls"] == str(row["width"]).encode()
        assert s["id.txt"].decode() == row["id"]
    counts = [sum(1 for n in tarfile.open(p).getnames() if n.endswith(".txt") and n.count(".") == 1) for p in shards]
    assert all(c == 7 for c in counts[:-1]) and 1 <= counts[-1] <= 7
    info = read_wdinfo(root / "wdinfo.pkl")
    with open(root / "wdinfo.pkl", "rb") as f:
        assert pickle.load(f) == info
    full = [p.name for p, c in zip(shards, counts) if c == 7]
    assert info == {"tar_files": sorted(full), "chunk_size": 7, "total_key_count": 7 * len(full)}
    assert not list(root.glob(".part-*"))
    idx = json.loads((root / "shards.json").read_text())
    assert [s["samples"] for s in idx["shards"]] == counts
    assert sum(len(s["keys"]) for s in idx["shards"]) == kept.height
    # deterministic headers
    for ti in tarfile.open(shards[0]).getmembers():
        assert (ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname, ti.mode) == (0, 0, 0, "", "", 0o644)
    from mmprep.engine import verify

    assert verify(tmp_path / "out") == []


def test_byte_identical_rerun_and_idempotent_finalize(tmp_path, parquet_with_images):
    src, _ = parquet_with_images
    doc = _doc(src, samples_per_shard=5, wdinfo=True, wdinfo_include_partial=True)
    run(doc, tmp_path, tmp_path / "a")
    doc2 = json.loads(json.dumps(doc))
    doc2["run"]["workers"] = 2
    run(doc2, tmp_path, tmp_path / "b")
    da, db = _digest(tmp_path / "a" / "wds"), _digest(tmp_path / "b" / "wds")
    assert da == db and len(da) > 3
    info = read_wdinfo(tmp_path / "a" / "wds" / "wdinfo.pkl")
    assert len(info["tar_files"]) == len(tar_files(tmp_path / "a" / "wds"))  # partial listed
    # finalize again (parts already removed): same files
    from mmprep.engine import finalize

    finalize(tmp_path / "a")
    assert _digest(tmp_path / "a" / "wds") == da


def test_keep_parts_refinalize_same_bytes(tmp_path, parquet_with_images):
    src, _ = parquet_with_images
    run(_doc(src, samples_per_shard=4, keep_parts=True), tmp_path, tmp_path / "o")
    root = tmp_path / "o" / "wds"
    before = _digest(root)
    assert len(list(root.glob(".part-*.tar"))) == 7
    for p in tar_files(root):
        p.unlink()
    from mmprep.engine import finalize

    finalize(tmp_path / "o")
    assert _digest(root) == before


def test_max_shard_bytes_and_pattern(tmp_path, parquet_with_images):
    src, _ = parquet_with_images
    res = run(
        _doc(src, max_shard_bytes=8192, shard_pattern="t{task}_r{rank}_{n}.tar", pattern_vars={"task": 3, "rank": 1}),
        tmp_path,
        tmp_path / "o",
    )
    root = tmp_path / "o" / "wds"
    shards = tar_files(root)
    assert shards and all(p.name.startswith("t3_r1_") for p in shards)
    assert all(p.stat().st_size <= 8192 + 10240 for p in shards)
    assert len(read_wds(shards)) == res.manifest["totals"]["written"]


def test_one_shard_per_unit_by_default(tmp_path, parquet_with_images):
    src, _ = parquet_with_images
    res = run(_doc(src), tmp_path, tmp_path / "o")
    assert len(tar_files(tmp_path / "o" / "wds")) == res.units_total


def _direct(tmp_path, df, **opts):
    w = WebDatasetWriter(WebDatasetWriter.Options(path="w", **opts), Context(base_dir=tmp_path))
    staging = tmp_path / "staging"
    stats = w.write_unit(df, UnitInfo("u-00000", 0, df.height), staging)
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    import shutil

    for e in staging.iterdir():
        shutil.move(str(e), root / e.name)
    info = w.finalize(root, [{"unit": "u-00000", "index": 0, "rows": df.height, "stats": stats}], {})
    return w, root, info


def test_keys_with_dots_slashes_and_dotdot(tmp_path):
    keys = ["a.b.c", "../../etc/passwd", "x/y", "..", "ok-key_1"]
    df = pl.DataFrame({"key": keys, "caption": [f"c{i}" for i in range(5)], "image_bytes": [jpeg(i) for i in range(5)]})
    w, root, info = _direct(tmp_path, df)
    names = tarfile.open(tar_files(root)[0]).getnames()
    for n in names:
        assert "/" not in n and ".." not in n and n.count(".") == 1, n
    got = read_wds(tar_files(root))
    assert [s["__key__"] for s in got] == ["a_b_c", "______etc_passwd", "x_y", "__", "ok-key_1"]
    assert [s["txt"].decode() for s in got] == [f"c{i}" for i in range(5)]
    assert not (tmp_path / "etc").exists()
    assert w.verify(root, {"totals": {"written": 5}}) == []


def test_member_types_and_extension_mapping(tmp_path):
    from PIL import Image

    b = io.BytesIO()
    Image.new("RGB", (4, 4)).save(b, "WEBP")
    df = pl.DataFrame(
        {
            "key": ["k0", "k1"],
            "image_bytes": [b.getvalue(), jpeg(1)],
            "caption": ["hello", None],
            "meta": [{"w": 1, "s": "x"}, {"w": 2, "s": "y"}],
            "label": [3, 4],
            "emb": pl.Series([[0.5, 1.5], [2.5, 3.5]], dtype=pl.Array(pl.Float32, 2)),
            "note": ["n0", "n1"],
        }
    )
    w, root, _ = _direct(tmp_path, df, extensions={"note": "note.json"}, columns=["image_bytes", "caption", "meta", "label", "emb", "note"])
    got = read_wds(tar_files(root))
    assert set(got[0]) - {"__key__", "__url__", "__local_path__"} == {"webp", "txt", "meta.json", "label.cls", "emb.npy", "note.json"}
    assert "txt" not in got[1] and "jpg" in got[1]  # null caption: no member
    assert json.loads(got[1]["meta.json"]) == {"s": "y", "w": 2}
    assert np.load(io.BytesIO(got[0]["emb.npy"])).tolist() == [0.5, 1.5]
    assert np.load(io.BytesIO(got[0]["emb.npy"])).dtype == np.float32
    assert got[1]["label.cls"] == b"4"
    # members within a sample are sorted by name
    names = tarfile.open(tar_files(root)[0]).getnames()
    assert names[:6] == sorted(names[:6])


@pytest.mark.parametrize("precision,dtype", [(16, np.float16), (32, np.float32)])
def test_nemo_precache_pickle_layout(tmp_path, precision, dtype):
    rng = np.random.default_rng(0)
    lat = rng.standard_normal((3, 4, 8, 8)).astype(np.float32)
    txt = rng.standard_normal((3, 5, 16)).astype(np.float32)
    df = pl.DataFrame(
        {
            "key": ["000000", "000001", "000002"],
            "caption": ["a", "b", "c"],
            "image_bytes": [jpeg(i) for i in range(3)],
            "latents": pl.Series(lat.tolist(), dtype=pl.Array(pl.Float32, (4, 8, 8))),
            "t5": pl.Series([t.tobytes() for t in txt], dtype=pl.Binary),
        }
    )
    w, root, info = _direct(
        tmp_path,
        df,
        layout="nemo-precache",
        encodings=["latents", "t5"],
        encoding_names={"latents": "autoencoderkl_image", "t5": "t5xxl"},
        arrays={"t5": {"dtype": "float32", "shape": [5, 16]}},
        precision=precision,
        save_original_in_tar=True,
        samples_per_shard=2,
        wdinfo=True,
    )
    shards = tar_files(root)
    assert len(shards) == 2
    seen = 0
    for p in shards:
        with tarfile.open(p) as tf:
            names = tf.getnames()
            for n in names:
                if n.endswith(".pickle"):
                    i = int(n.split(".")[0])
                    d = pickle.loads(tf.extractfile(n).read())
                    assert set(d) == {"autoencoderkl_image", "t5xxl"}
                    assert d["autoencoderkl_image"].dtype == dtype and d["t5xxl"].dtype == dtype
                    np.testing.assert_array_equal(d["autoencoderkl_image"], lat[i].astype(dtype))
                    np.testing.assert_array_equal(d["t5xxl"], txt[i].astype(dtype))
                    assert tf.extractfile(f"{i:06d}.txt").read().decode() == "abc"[i]
                    assert tf.extractfile(f"{i:06d}.jpg").read() == jpeg(i)
                    seen += 1
    assert seen == 3
    assert read_wdinfo(root / "wdinfo.pkl") == {"tar_files": ["00000.tar"], "chunk_size": 2, "total_key_count": 2}
    assert w.verify(root, {"totals": {"written": 3}}) == []


def test_nemo_npy_members(tmp_path):
    arr = np.arange(12, dtype=np.float32).reshape(2, 6)
    df = pl.DataFrame({"key": ["a", "b"], "clip": pl.Series(arr.tolist(), dtype=pl.Array(pl.Float32, 6))})
    _, root, _ = _direct(tmp_path, df, layout="nemo-precache", pickle_encodings=False, precision=16)
    got = read_wds(tar_files(root))
    assert [s["__key__"] for s in got] == ["a", "b"]
    for s, row in zip(got, arr):
        a = np.load(io.BytesIO(s["clip.npy"]))
        assert a.dtype == np.float16
        np.testing.assert_array_equal(a, row.astype(np.float16))
    assert all("pickle" not in s for s in got)


def test_verify_reports_damage(tmp_path, parquet_with_images):
    src, _ = parquet_with_images
    run(_doc(src, samples_per_shard=7, wdinfo=True), tmp_path, tmp_path / "o")
    from mmprep.engine import verify

    root = tmp_path / "o" / "wds"
    shards = tar_files(root)
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2])
    shards[2].unlink()
    (root / "stray.tar").write_bytes(shards[0].read_bytes())
    problems = verify(tmp_path / "o")
    text = "\n".join(problems)
    assert "00001.tar" in text and "00002.tar: listed in shards.json but missing" in text
    assert "stray.tar" in text and "also in 00000.tar" in text
    assert "wdinfo" not in text or "00002" in text


def test_options_validation():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not both"):
        WebDatasetWriter.Options(samples_per_shard=3, max_shard_bytes=4096)
    with pytest.raises(ValidationError, match="columns"):
        WebDatasetWriter.Options(mode="sidecar")
    with pytest.raises(ValidationError, match="wdinfo needs samples_per_shard"):
        WebDatasetWriter.Options(wdinfo=True)
    with pytest.raises(ValidationError, match="shard_pattern"):
        WebDatasetWriter.Options(shard_pattern="{x}.tar")
    with pytest.raises(ValidationError, match="shard_pattern"):
        WebDatasetWriter.Options(shard_pattern="../{n}.tar")
