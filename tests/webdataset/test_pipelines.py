"""End-to-end: repack of uneven tars, sidecar/merge by key, kill -9 and resume."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from mmprep import Context, UnitInfo
from mmprep_webdataset import WebDatasetWriter
from mmprep_webdataset._tar import scan_samples

from .conftest import check_accounting, img2dataset_tars, read_wds, run, tar_files


def test_repack_uneven_tars_exact_shards(tmp_path):
    counts = [13, 4, 0, 21, 9, 17]
    truth = img2dataset_tars(tmp_path / "in", counts, missing_every=5)
    # one damaged input shard: its tail is lost and counted
    bad = tmp_path / "in" / "00004.tar"
    bad.write_bytes(bad.read_bytes()[:-10240 - 700])
    doc = {
        "datasets": [{"name": "laion", "source": {"type": "webdataset", "path": "in/{00000..00005}.tar", "require": ["jpg", "txt"], "json_mode": "raw"}}],
        "write": [{"type": "webdataset", "path": "wds", "samples_per_shard": 10, "wdinfo": True}],
        "run": {"workers": 2},
    }
    res = run(doc, tmp_path, tmp_path / "out")
    d = res.manifest["datasets"]["laion"]
    assert d["rejected"]["missing_member"] == sum(1 for m in truth.values() if "txt" not in m)
    assert d["rejected"]["truncated_shard"] == 1
    root = tmp_path / "out" / "wds"
    shards = tar_files(root)
    got = read_wds(shards)
    assert len(got) == d["written"]
    n = [len(scan_samples(open(p, "rb"))[0]) for p in shards]
    assert all(c == 10 for c in n[:-1]) and 0 < n[-1] <= 10
    keys = [s["__key__"] for s in got]
    assert keys == sorted(keys)  # input order kept (shard order, then member order)
    for s in got:  # member bytes copied verbatim, json included
        t = truth[s["__key__"]]
        assert s["jpg"] == t["jpg"] and s["txt"] == t["txt"] and s["json"] == t["json"]
    from mmprep.engine import verify

    assert verify(tmp_path / "out") == []


def _proclip_doc(mode: str, **extra) -> dict:
    return {
        "datasets": [{"name": "cc", "source": {"type": "webdataset", "path": "in/*.tar", "json_mode": "flatten"}}],
        "format": [
            {"type": "template", "column": "short_prompt", "template": "a photo: {short}"},
            {"type": "template", "column": "long_prompt", "template": "{long}"},
        ],
        "write": [{"type": "webdataset", "path": mode, "mode": mode, "columns": ["short_prompt", "long_prompt"], **extra}],
        "run": {"workers": 1},
    }


@pytest.mark.parametrize("mode", ["sidecar", "merge"])
def test_sidecar_and_merge_by_key(tmp_path, mode):
    truth = img2dataset_tars(tmp_path / "in", [5, 7])
    res = run(_proclip_doc(mode), tmp_path, tmp_path / "out")
    root = tmp_path / "out" / mode
    for s in ("00000", "00001"):
        inp = tmp_path / "in" / f"{s}.tar"
        out = root / (f"{s}_text_embeddings.tar" if mode == "sidecar" else f"{s}.tar")
        base = read_wds([inp])
        new = read_wds([out])
        assert [x["__key__"] for x in new] == [x["__key__"] for x in base]
        for b, n in zip(base, new):
            j = json.loads(truth[b["__key__"]]["json"])
            assert n["short_prompt"].decode() == f"a photo: {j['short']}"
            assert n["long_prompt"].decode() == j["long"]
            if mode == "sidecar":
                assert set(n) - {"__key__", "__url__", "__local_path__"} == {"short_prompt", "long_prompt"}
            else:
                assert n["jpg"] == b["jpg"] and n["json"] == b["json"] and n["txt"] == b["txt"]
        if mode == "merge":
            names = tarfile.open(out).getnames()
            by_key: dict = {}
            for nm in names:
                by_key.setdefault(nm.split(".")[0], []).append(nm)
            assert all(v == sorted(v) for v in by_key.values())
    assert res.manifest["writers"][0]["info"]["samples"] == 12
    from mmprep.engine import verify

    assert verify(tmp_path / "out") == []
    if mode == "sidecar":  # a sidecar that lost its alignment is reported with the key
        sc = root / "00001_text_embeddings.tar"
        names = tarfile.open(sc).getnames()
        with tarfile.open(sc, "w") as tf:
            for nm in reversed(names):
                ti = tarfile.TarInfo(nm)
                tf.addfile(ti)
        text = "\n".join(verify(tmp_path / "out"))
        assert "00001_text_embeddings.tar: not aligned" in text and "000010000" in text


def test_sidecar_raw_float32_like_llm2clip_and_key_mismatch(tmp_path):
    img2dataset_tars(tmp_path / "in", [3])
    url = str(tmp_path / "in" / "00000.tar")
    emb = np.arange(12, dtype=np.float32).reshape(3, 4)
    keys = ["000000000", "000000001", "000000002"]
    df = pl.DataFrame(
        {"key": keys, "__key__": keys, "__url__": [url] * 3, "shortSV_captions": pl.Series(emb.tolist(), dtype=pl.Array(pl.Float32, 4))}
    )
    w = WebDatasetWriter(WebDatasetWriter.Options(mode="sidecar", columns=["shortSV_captions"]), Context())
    st = w.write_unit(df, UnitInfo("u", 0, 3), tmp_path / "st")
    assert st["output"] == "00000_text_embeddings.tar"
    got = read_wds([tmp_path / "st" / "00000_text_embeddings.tar"])
    names = tarfile.open(tmp_path / "st" / "00000_text_embeddings.tar").getnames()
    assert names == [f"{k}.shortSV_captions" for k in keys]
    for i, s in enumerate(got):  # LLM2CLIP's reader: np.frombuffer(item["shortsv_captions"], dtype=np.float32)
        np.testing.assert_array_equal(np.frombuffer(s["shortsv_captions"], dtype=np.float32), emb[i])  # wds lower-cases
    with pytest.raises(ValueError, match="sample 0: the shard has '000000000', the rows have '000000002'"):
        w.write_unit(df.reverse(), UnitInfo("u", 0, 3), tmp_path / "st2")
    with pytest.raises(ValueError, match="'000000002'.*has no row"):
        w.write_unit(df.head(2), UnitInfo("u", 0, 2), tmp_path / "st3")


def test_sidecar_with_rejected_rows_fails_naming_the_key(tmp_path):
    img2dataset_tars(tmp_path / "in", [4])
    doc = _proclip_doc("sidecar")
    doc["datasets"][0]["filters"] = [{"type": "sql", "where": "key <> '000000002'"}]
    from mmprep import Pipeline

    res = Pipeline.from_dict(doc, base_dir=tmp_path).run(out=str(tmp_path / "out"), quiet=True)
    assert res.failed and "000000002" in " ".join(res.failed.values())
    assert not list((tmp_path / "out" / "sidecar").glob("*.tar")) if (tmp_path / "out" / "sidecar").exists() else True


# -- kill -9 ------------------------------------------------------------------------------------
def _mmprep() -> str:
    return str(Path(sys.executable).with_name("mmprep"))


def _kill_doc(tmp_path: Path) -> Path:
    import polars as pl

    from .conftest import jpeg

    n = 400
    pl.DataFrame(
        {"id": [f"k{i:05d}" for i in range(n)], "caption": [("" if i % 7 == 3 else f"cap {i}") for i in range(n)], "image_bytes": [jpeg(i % 50) for i in range(n)]}
    ).write_parquet(tmp_path / "in.parquet")
    doc = {
        "datasets": [{"name": "d", "source": {"type": "parquet", "path": "in.parquet"}, "key": {"column": "id"}}],
        "format": [{"type": "caption-clean", "drop_empty": True}],
        "write": [{"type": "webdataset", "path": "wds", "samples_per_shard": 16, "wdinfo": True}],
        "run": {"workers": 1, "samples_per_unit": 5},
    }
    p = tmp_path / "pipe.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def _digests(root: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.glob("*")) if p.is_file()}


def test_kill9_then_resume_equals_uninterrupted(tmp_path):
    pipe = _kill_doc(tmp_path)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    out = tmp_path / "killed"
    proc = subprocess.Popen([_mmprep(), "run", str(pipe), "--out", str(out), "-q"], env=env, start_new_session=True)
    units = out / "_mmprep" / "units"
    deadline = time.time() + 120
    while time.time() < deadline:
        done = len(list(units.glob("*[0-9].json"))) if units.exists() else 0
        if done >= 5:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed (make it longer)"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # no truncated visible tar: every *.tar under the output (parts included) is complete
    for p in out.rglob("*.tar"):
        with open(p, "rb") as f:
            samples, damage = scan_samples(f, str(p))
        assert damage is None, damage
    assert not list((out / "wds").glob("0*.tar"))  # not finalized yet: no shard visible
    r = subprocess.run([_mmprep(), "run", str(pipe), "--out", str(out), "-q"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ref = tmp_path / "ref"
    r2 = subprocess.run([_mmprep(), "run", str(pipe), "--out", str(ref), "-q"], env=env, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert _digests(out / "wds") == _digests(ref / "wds")
    assert len(tar_files(ref / "wds")) == 22  # 400 - 57 rejected = 343 = 21 * 16 + 7
    r3 = subprocess.run([_mmprep(), "verify", str(out)], capture_output=True, text=True, timeout=120)
    assert r3.returncode == 0, r3.stdout + r3.stderr
    check_accounting(json.loads((out / "_mmprep" / "manifest.json").read_text()))
