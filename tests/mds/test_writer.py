"""The mds writer: round trips through the real StreamingDataset, presets, crash safety, verify."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from .mds_testlib import commit, jpeg_bytes, make_frame, read_all
from mmprep import UnitInfo
from mmprep_mds import MdsWriter
from mmprep_mds import encoding as E


def W(**kw):
    return MdsWriter(MdsWriter.Options(**kw))


def stored_bytes(img) -> bytes:
    """The exact bytes streaming handed to PIL (Image.open(BytesIO(data)) keeps the buffer)."""
    return img.fp.getvalue()


def test_roundtrip_inferred_columns(write_units):
    n = 23
    df = make_frame(n).with_columns(
        pl.Series("score", np.linspace(0, 1, n), pl.Float64),
        pl.Series("score32", np.linspace(0, 1, n).astype(np.float32)),
        pl.Series("flag", [i % 2 == 0 for i in range(n)]),
        pl.Series("big", [2**40 + i for i in range(n)], pl.Int64),
        pl.Series("small", list(range(n)), pl.Int16),
        pl.Series("tags", [[f"t{i}", "x"] for i in range(n)]),
        pl.Series("meta", [{"a": i, "b": f"s{i}"} for i in range(n)]),
        pl.Series("emb", np.arange(n * 6, dtype=np.float32).reshape(n, 2, 3)),
        pl.Series("blob", [bytes([i]) * (i + 1) for i in range(n)], pl.Binary),
        pl.Series("_reject_reason", [None] * n, pl.String),
    )
    frames = [df.slice(0, 10), df.slice(10, 13)]
    root, records, info = write_units(W(size_limit=4096), frames)
    assert info["samples"] == n and info["shards"] > 2  # small size_limit: several shards per unit
    index = json.loads((root / "index.json").read_text())
    assert all(s["raw_data"]["basename"].startswith(("u00000/", "u00001/")) for s in index["shards"])
    enc = info["columns"]
    assert enc["caption"] == "str" and enc["image_bytes"] == "jpeg" and enc["width"] == "int32"
    assert enc["big"] == "int64" and enc["small"] == "int32" and enc["score32"] == "float32"
    assert enc["tags"] == "json" and enc["meta"] == "json" and enc["emb"] == "bytes" and enc["blob"] == "bytes"
    assert "_reject_reason" not in enc
    assert info["encoder_columns"]["emb"] == {"dtype": "float32", "shape": [2, 3], "encoding": "bytes"}

    rows = read_all(root)
    assert len(rows) == n
    src = df.to_dicts()
    for got, want in zip(rows, src):
        assert got["key"] == want["key"] and got["caption"] == want["caption"] and got["dataset"] == "ds"
        assert int(got["width"]) == want["width"] and int(got["height"]) == want["height"]
        assert got["score"] == want["score"] and np.float32(got["score32"]) == np.float32(want["score32"])
        assert bool(got["flag"]) == want["flag"] and int(got["big"]) == want["big"] and int(got["small"]) == want["small"]
        assert got["tags"] == want["tags"] and got["meta"] == want["meta"]
        assert got["blob"] == want["blob"]
        np.testing.assert_array_equal(np.frombuffer(got["emb"], np.float32).reshape(2, 3), np.asarray(want["emb"]))
        assert stored_bytes(got["image_bytes"]) == want["image_bytes"]  # verbatim, no q75 re-encode


def test_fast_encoders_match_streaming_mds_encode():
    from streaming.base.format.mds.encodings import mds_encode

    n = 7
    df = pl.DataFrame(
        {
            "s": [f"x{i}\u00e9" for i in range(n)],
            "i8": pl.Series(list(range(-3, 4)), dtype=pl.Int8),
            "i64": pl.Series([2**40 * i for i in range(n)], dtype=pl.Int64),
            "u16": pl.Series(list(range(n)), dtype=pl.UInt16),
            "f16": pl.Series(np.linspace(-1, 1, n).astype(np.float16)),
            "f64": np.linspace(-1, 1, n),
            "b": [b"ab" * i for i in range(n)],
            "arr": np.arange(n * 4, dtype=np.float32).reshape(n, 2, 2),
            "j": [{"k": [i, None]} for i in range(n)],
        }
    )
    cases = {
        "s": "str", "i8": "int8", "i64": "int64", "u16": "uint16", "f16": "float16", "f64": "float64",
        "b": "bytes", "j": "json", "arr": "ndarray:float32:2,2",
    }  # fmt: skip
    for col, enc in cases.items():
        plan = E.ColumnPlan(col, col, enc)
        values = df.get_column(col).to_list()
        if col == "arr":
            values = list(df.get_column(col).to_numpy())
        assert E.encode_column(plan, df.get_column(col)) == [mds_encode(enc, v) for v in values], col
    # int64 values cast to int32 when declared and in range; out of range is an error, not a wrap-around
    ok = E.encode_column(E.ColumnPlan("u16", "u16", "int32"), df.get_column("u16"))
    assert ok == [mds_encode("int32", v) for v in range(n)]
    with pytest.raises(ValueError, match="do not fit"):
        E.encode_column(E.ColumnPlan("i64", "i64", "int32"), df.get_column("i64"))
    with pytest.raises(ValueError, match="null"):
        E.encode_column(E.ColumnPlan("s", "s", "str"), pl.Series("s", ["a", None]))


def test_raw_preset_matches_micro_diffusion(write_units):
    df = make_frame(12)
    root, _, info = write_units(W(preset="raw"), [df.slice(0, 5), df.slice(5, 7)])
    index = json.loads((root / "index.json").read_text())
    for sh in index["shards"]:
        assert dict(zip(sh["column_names"], sh["column_encodings"])) == {
            "width": "int32", "height": "int32", "jpg": "jpeg", "caption": "str"
        }
        assert sh["size_limit"] == 256 * (2**20) and sh["compression"] is None
    rows = read_all(root)
    assert [r["caption"] for r in rows] == df["caption"].to_list()
    assert [int(r["width"]) for r in rows] == df["width"].to_list()  # original size, as given
    assert all(isinstance(r["width"], np.int32) for r in rows)
    assert [stored_bytes(r["jpg"]) for r in rows] == df["image_bytes"].to_list()
    assert rows[0]["jpg"].size == (24, 24)


@pytest.mark.parametrize("save_images", [False, True])
def test_latents_preset_byte_contract(write_units, save_images):
    df = make_frame(6, latents=True)
    root, _, info = write_units(W(preset="latents", save_images=save_images), [df.slice(0, 4), df.slice(4, 2)])
    want = {"caption": "str", "caption_latents": "bytes", "latents_256": "bytes", "latents_512": "bytes"}
    if save_images:
        want["jpg"] = "jpeg"
    assert info["columns"] == want
    assert info["encoder_columns"]["latents_512"] == {"dtype": "float16", "shape": [4, 64, 64], "encoding": "bytes"}
    assert info["encoder_columns"]["caption_latents"]["shape"] == [77, 1024]
    rows = read_all(root)
    assert len(rows) == 6
    for r, (cl, l256, l512, img) in zip(rows, df.select("caption_latents", "latents_256", "latents_512", "image_bytes").iter_rows()):
        # exactly what micro_diffusion's latents_loader does
        np.testing.assert_array_equal(
            np.frombuffer(r["caption_latents"], dtype=np.float16).reshape(1, 77, 1024)[0], np.asarray(cl, np.float16))
        np.testing.assert_array_equal(
            np.frombuffer(r["latents_256"], dtype=np.float16).reshape(-1, 32, 32), np.asarray(l256, np.float16))
        np.testing.assert_array_equal(
            np.frombuffer(r["latents_512"], dtype=np.float16).reshape(-1, 64, 64), np.asarray(l512, np.float16))
        assert ("jpg" in r) == save_images
        if save_images:
            assert stored_bytes(r["jpg"]) == img


def test_latents_preset_binary_encoder_outputs_and_rename(write_units):
    rng = np.random.default_rng(1)
    n = 3
    cl = rng.standard_normal((n, 77, 1024)).astype(np.float16)
    l256 = rng.standard_normal((n, 4, 32, 32)).astype(np.float16)
    l512 = rng.standard_normal((n, 4, 64, 64)).astype(np.float16)
    df = pl.DataFrame({
        "key": ["a", "b", "c"], "caption": ["x", "y", "z"],
        "text_emb": [c.tobytes() for c in cl], "vae_256": [x.tobytes() for x in l256], "vae_512": [x.tobytes() for x in l512],
    })
    w = W(preset="latents", rename={"text_emb": "caption_latents", "vae_256": "latents_256", "vae_512": "latents_512"})
    root, _, info = write_units(w, [df])
    rows = read_all(root)
    for i, r in enumerate(rows):
        assert r["caption_latents"] == cl[i].tobytes() and r["latents_256"] == l256[i].tobytes()
        np.testing.assert_array_equal(np.frombuffer(r["latents_512"], np.float16).reshape(-1, 64, 64), l512[i])
    with pytest.raises(KeyError, match="rename"):
        W(preset="latents").write_unit(df, UnitInfo("u", 0, 3), root.parent / "x")


def test_ndarray_encoding_option(write_units):
    df = make_frame(4, latents=True).select("key", "latents_256")
    root, _, info = write_units(W(arrays="ndarray", array_dtype="float16"), [df])
    assert info["columns"]["latents_256"] == "ndarray:float16:4,32,32"
    rows = read_all(root)
    for r, want in zip(rows, df["latents_256"].to_numpy()):
        assert r["latents_256"].dtype == np.float16 and r["latents_256"].shape == (4, 32, 32)
        np.testing.assert_array_equal(r["latents_256"], want.astype(np.float16))


def test_exception_inside_a_unit_never_leaves_an_index(tmp_path, monkeypatch):
    """MDSWriter.__exit__ would finish() and write an index; ours removes the partial unit."""
    import mmprep_mds.shards as ms

    df = make_frame(40)
    calls = {"n": 0}
    real_write = ms.write_buffers

    def failing_write(fd, bufs, hashers):
        calls["n"] += 1
        if calls["n"] == 3:  # after two complete shards
            os.write(fd, b"half a shard")
            raise RuntimeError("disk on fire")
        return real_write(fd, bufs, hashers)

    monkeypatch.setattr(ms, "write_buffers", failing_write)
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(RuntimeError, match="disk on fire"):
        W(size_limit=2000).write_unit(df, UnitInfo("u00007", 7, 40), staging)
    assert calls["n"] == 3
    assert list(staging.iterdir()) == []  # no partial shards, no index.json
    assert not list(tmp_path.rglob("index.json"))


@pytest.mark.parametrize("opts", [
    {"size_limit": 8000, "hashes": ["sha1", "xxh64"]},
    {"size_limit": 900, "hashes": ["xxh3_64"]},  # first sample > limit: MDSWriter's empty shard 0
    {"size_limit": None},
    {"size_limit": 7000, "compression": "zstd", "hashes": ["md5"]},
])
def test_shards_and_index_are_byte_identical_to_mdswriter(tmp_path, opts):
    """The column-wise writev path writes exactly what a plain MDSWriter loop writes."""
    from streaming.base import MDSWriter

    df = make_frame(37, img=32).with_columns(pl.Series("score", np.linspace(0, 1, 37), pl.Float32))
    w = W(**opts)
    layout = w.layout(df)
    staging = tmp_path / "staging"
    staging.mkdir()
    w.write_unit(df, UnitInfo("u00000", 0, df.height), staging)
    ref = tmp_path / "ref"
    plain = MDSWriter(out=str(ref), columns=layout.mds_columns, compression=opts.get("compression"),
                      hashes=opts.get("hashes", []), size_limit=opts["size_limit"])
    for row in df.to_dicts():  # mds_encode stores bytes values (the images) verbatim
        plain.write({c.name: np.float32(row[c.source]) if c.name == "score" else row[c.source] for c in layout.columns})
    plain.finish()
    got = {p.name: p.read_bytes() for p in (staging / "u00000").iterdir()}
    want = {p.name: p.read_bytes() for p in ref.iterdir()}
    assert sorted(got) == sorted(want) and len(want) >= 2
    assert got == want
    if opts["size_limit"] == 900:
        assert json.loads(want["index.json"])["shards"][0]["samples"] == 0


def test_encoded_sizes_match_streaming():
    from streaming.base.format.mds.encodings import get_mds_encoded_size

    encs = sorted(E._BASE_ENCODINGS) + ["ndarray:float16", "ndarray:float16:4,32,32", "ndarray:uint8:3",
                                        "ndarray:int64:2,3,4", "ndarray:float32:77,1024"]
    for enc in encs:
        assert E.encoded_size(enc) == get_mds_encoded_size(enc), enc


def test_writing_a_unit_does_not_import_streaming(tmp_path):
    """`import streaming` loads torch (seconds per fresh worker process): the write path avoids it."""
    code = (
        "import sys, polars as pl\n"
        "from pathlib import Path\n"
        "from mmprep import UnitInfo\n"
        "from mmprep_mds import MdsWriter\n"
        "df = pl.DataFrame({'key': ['a', 'b'], 'blob': [b'x' * 30, b'yz' * 40], 'w': [1, 2]})\n"
        "w = MdsWriter(MdsWriter.Options(hashes=['sha1', 'xxh64'], size_limit=100))\n"
        f"st = w.write_unit(df, UnitInfo('u0', 0, 2), Path({str(tmp_path)!r}))\n"
        "assert st['samples'] == 2, st\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('streaming', 'torch'))\n"
        "assert not bad, bad[:5]\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_all(tmp_path / "u0")
    assert [(r["key"], r["blob"], int(r["w"])) for r in rows] == [("a", b"x" * 30, 1), ("b", b"yz" * 40, 2)]


def test_the_mdswriter_trap_is_real(tmp_path):
    """Documents why the writer never uses MDSWriter as a context manager."""
    from streaming.base import MDSWriter

    out = tmp_path / "trap"
    with pytest.raises(RuntimeError):
        with MDSWriter(out=str(out), columns={"x": "int32"}) as w:
            w.write({"x": 1})
            raise RuntimeError("crash in the middle")
    assert (out / "index.json").exists()  # a valid-looking index over partial data


def test_bad_value_fails_before_any_file(tmp_path):
    df = make_frame(3).with_columns(pl.Series("caption", ["a", None, "c"]))
    with pytest.raises(ValueError, match="caption"):
        W().write_unit(df, UnitInfo("u0", 0, 3), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_finalize_is_idempotent_and_rerun_replaces(write_units, tmp_path):
    w = W(size_limit=3000)
    frames = [make_frame(8, 0), make_frame(8, 8), make_frame(0, 16)]
    root, records, info = write_units(w, frames)
    first = (root / "index.json").read_bytes()
    assert info["samples"] == 16
    assert w.finalize(root, records, {}) == info
    assert (root / "index.json").read_bytes() == first
    # rerunning a unit (same id) replaces its directory; the dataset is unchanged
    staging = tmp_path / "again"
    staging.mkdir()
    w.write_unit(frames[1], UnitInfo("u00001", 1, 8), staging)
    commit(staging, root)
    w.finalize(root, records, {})
    assert (root / "index.json").read_bytes() == first
    assert [r["key"] for r in read_all(root)] == [f"ds-{i:06d}" for i in range(16)]


def _shards(root):
    return [root / s["raw_data"]["basename"] for s in json.loads((root / "index.json").read_text())["shards"]]


def test_verify_ok_and_count_mismatch(write_units):
    w = W(hashes=["xxh64", "sha1"], size_limit=3000)
    root, _, info = write_units(w, [make_frame(9), make_frame(7, 9)])
    assert w.verify(root, {"totals": {"written": 16}}) == []
    assert w.verify(root, {"units": [{"id": "u00000", "rows_written": 9}, {"id": "u00001", "rows_written": 7}]}) == []
    problems = w.verify(root, {"totals": {"written": 17}})
    assert len(problems) == 1 and "16 samples" in problems[0] and "17" in problems[0]


def test_verify_releases_streamings_shared_memory(write_units):
    # StreamingDataset registers each shared-memory block's cleanup with atexit, which keeps the
    # blocks (one descriptor each) alive: verify must give them back
    import os

    w = W(size_limit=3000)
    root, _, _ = write_units(w, [make_frame(9), make_frame(7, 9)])
    w.verify(root, {"totals": {"written": 16}})
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        assert w.verify(root, {"totals": {"written": 16}}) == []
    assert len(os.listdir("/proc/self/fd")) - before <= 2


def test_verify_catches_truncated_flipped_and_missing_shards(write_units, tmp_path):
    w = W(hashes=["xxh64"], size_limit=3000)
    root, _, _ = write_units(w, [make_frame(9), make_frame(7, 9)])
    shards = _shards(root)
    assert len(shards) >= 3
    manifest = {"totals": {"written": 16}}

    data = shards[0].read_bytes()
    shards[0].write_bytes(data[:-100])
    problems = w.verify(root, manifest)
    assert len(problems) == 1 and shards[0].name in problems[0] and "truncated" in problems[0]
    shards[0].write_bytes(data)

    data = shards[1].read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    shards[1].write_bytes(bytes(flipped))
    problems = w.verify(root, manifest)
    assert len(problems) == 1 and str(shards[1]) in problems[0] and "xxh64 hash mismatch" in problems[0]
    shards[1].write_bytes(data)

    shards[-1].unlink()
    problems = w.verify(root, manifest)
    assert len(problems) == 1 and str(shards[-1]) in problems[0] and "missing" in problems[0]

    (root / "index.json").unlink()
    assert "missing" in w.verify(root, manifest)[0]


def test_compression_roundtrip_and_verify(write_units):
    w = W(compression="zstd", hashes=["sha1"], size_limit=4000)
    df = make_frame(10)
    root, _, info = write_units(w, [df])
    assert all(p.name.endswith(".mds.zstd") for p in root.rglob("shard.*"))
    assert w.verify(root, {"totals": {"written": 10}}) == []
    rows = read_all(root)
    assert [stored_bytes(r["image_bytes"]) for r in rows] == df["image_bytes"].to_list()


def test_options_are_validated_at_config_time(tmp_path):
    from mmprep import ConfigError, Pipeline

    (tmp_path / "a.jsonl").write_text('{"caption": "x"}\n')

    def build(write):
        return Pipeline.from_dict({"datasets": [{"name": "a", "source": {"type": "jsonl", "path": "a.jsonl"}}],
                                   "write": [write]}, base_dir=tmp_path)

    assert build({"type": "mds", "compression": "zstd:7", "hashes": ["xxh64", "sha1"], "size_limit": "64mb"})
    w = build({"type": "mds", "size_limit": "64mb", "hashes": ["xxh64", "sha1"]}).writers[0]
    assert w.options.size_limit == 64 << 20 and w.options.hashes == ["sha1", "xxh64"]
    for bad in ({"compression": "lz77"}, {"hashes": ["crc"]}, {"columns": {"x": "jpg2000"}},
                {"preset": "latent"}, {"size_limit": 2**33}, {"colums": {}}):
        with pytest.raises(ConfigError):
            build({"type": "mds", **bad})
