"""End to end through the engine: parquet/MDS sources -> (media) -> mds writer, verify, kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from ..conftest import check_accounting
from .mds_testlib import jpeg_bytes, read_all

pytest.importorskip("mmprep.engine")


def table(path: Path, n: int, img: int = 16) -> pl.DataFrame:
    df = pl.DataFrame({
        "image_bytes": [jpeg_bytes(img + i % 3, img, i) for i in range(n)],
        "caption": [f"a photo number {i}" for i in range(n)],
        "width": [300 + i for i in range(n)],
        "height": [280 + i for i in range(n)],
    })
    df.write_parquet(path)
    return df


def doc(path, write, **run):
    return {"datasets": [{"name": "toy", "source": {"type": "parquet", "path": str(path)}}],
            "write": write, "run": {"samples_per_unit": 7, "workers": 2, **run}}


def test_parquet_to_mds_several_units_and_workers(run_pipeline, tmp_path):
    from mmprep.engine import verify

    src = table(tmp_path / "t.parquet", 40)
    out = tmp_path / "out"
    res = run_pipeline(doc(tmp_path / "t.parquet", [{"type": "mds", "path": "mds", "hashes": ["xxh64"], "size_limit": 3000}]), out=out)
    m = res.manifest
    assert len(m["units"]) == 6 and m["totals"]["written"] == 40
    info = m["writers"][0]["info"]
    assert info["samples"] == 40 and info["columns"]["image_bytes"] == "jpeg" and info["columns"]["width"] == "int32"
    rows = read_all(out / "mds")
    assert len(rows) == 40
    assert [r["caption"] for r in rows] == src["caption"].to_list()
    assert [r["image_bytes"].fp.getvalue() for r in rows] == src["image_bytes"].to_list()
    assert len({r["key"] for r in rows}) == 40
    assert {p.name for p in (out / "mds").iterdir()} == {"index.json"} | {u["id"] for u in m["units"]}
    assert verify(out) == []
    # damage one shard: `mmprep verify` names it and exits non-zero
    shard = next((out / "mds").glob("*/shard.00001.mds"))
    shard.write_bytes(shard.read_bytes()[:-10])
    problems = verify(out)
    assert len(problems) == 1 and str(shard) in problems[0]
    cli = subprocess.run([sys.executable, "-m", "mmprep.cli", "verify", str(out)], capture_output=True, text=True)
    assert cli.returncode != 0 and shard.name in cli.stdout + cli.stderr


def test_media_stage_then_raw_preset_stores_the_media_bytes(run_pipeline, tmp_path):
    """micro_diffusion rule: drop min side < 256, downscale shorter side > 512 to 512; bytes verbatim."""
    from mmprep.media import MediaStage

    sizes = [(300, 260), (200, 400), (900, 700), (256, 256), (255, 600), (640, 520)]
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i, (w, h) in enumerate(sizes):
        (imgs / f"{i}.jpg").write_bytes(jpeg_bytes(w, h, i))
    pl.DataFrame({"image_path": [f"imgs/{i}.jpg" for i in range(len(sizes))],
                  "caption": [f"c{i}" for i in range(len(sizes))]}).write_parquet(tmp_path / "t.parquet")
    media = {"min_size": 256, "resize": "downscale-shorter", "size": 512, "root": str(tmp_path)}
    d = doc(tmp_path / "t.parquet", [{"type": "mds", "preset": "raw"}], samples_per_unit=4, workers=1)
    d["media"] = media
    res = run_pipeline(d, out=tmp_path / "out")
    ds = res.manifest["datasets"]["toy"]
    assert ds["written"] == 4 and ds["rejected"] == {"too_small": 2}
    rows = read_all(tmp_path / "out")
    assert [r["caption"] for r in rows] == ["c0", "c2", "c3", "c5"]
    assert [(int(r["width"]), int(r["height"])) for r in rows] == [sizes[i] for i in (0, 2, 3, 5)]  # original size
    assert [r["jpg"].size for r in rows] == [(300, 260), (658, 512), (256, 256), (630, 512)]
    # the stored bytes are exactly the media stage's output (no second lossy encode)
    frame = pl.DataFrame({"key": [f"k{i}" for i in (0, 2, 3, 5)], "image_path": [f"imgs/{i}.jpg" for i in (0, 2, 3, 5)]})
    produced = MediaStage.from_config(media).process(frame)["image_bytes"].to_list()
    assert [r["jpg"].fp.getvalue() for r in rows] == produced


def test_mds_source_to_mds_writer(run_pipeline, tmp_path):
    src = table(tmp_path / "t.parquet", 20)
    run_pipeline(doc(tmp_path / "t.parquet", [{"type": "mds", "preset": "raw", "size_limit": 2500}]), out=tmp_path / "raw")
    d = {"datasets": [{"name": "raw", "source": {"type": "mds", "path": str(tmp_path / "raw")}}],
         "write": [{"type": "mds", "path": "copy"}], "run": {"workers": 1}}
    res = run_pipeline(d, out=tmp_path / "second")
    assert res.manifest["totals"]["written"] == 20 and len(res.manifest["units"]) > 2
    rows = read_all(tmp_path / "second" / "copy")
    assert [r["image_bytes"].fp.getvalue() for r in rows] == src["image_bytes"].to_list()
    assert [r["caption"] for r in rows] == src["caption"].to_list()
    assert rows[0]["key"] == "raw-toy-00000_shard_00000-000000"  # <dataset>-<shard of the raw MDS>-<index>
    assert len({r["key"] for r in rows}) == 20


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_kill9_mid_run_then_rerun_equals_uninterrupted(tmp_path, mmprep_env, run_pipeline):
    """SIGKILL a real `mmprep run` mid-way: no index for unfinished units; the rerun equals a clean run."""
    from mmprep import Pipeline
    from mmprep.engine import verify

    table(tmp_path / "t.parquet", 3000, img=24)
    d = doc(tmp_path / "t.parquet", [{"type": "mds", "path": "mds", "size_limit": 20000, "hashes": ["xxh64"]}],
            samples_per_unit=20, workers=1)
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump(d))
    clean, out = tmp_path / "clean", tmp_path / "killed"
    run_pipeline(str(cfg), out=clean)
    units = out / "_mmprep" / "units"
    proc = subprocess.Popen([sys.executable, "-m", "mmprep.cli", "run", str(cfg), "-q", "--out", str(out)],
                            env=mmprep_env, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if units.exists() and len(list(units.glob("*[0-9].json"))) >= 5:
            break
        time.sleep(0.002)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # every unit directory visible under OUT/mds belongs to a completed unit and has its index;
    # an unfinished unit left nothing outside the private staging area
    done = {p.name[:-5] for p in units.glob("*.json") if not p.name.endswith((".intent.json", ".failed.json"))}
    visible = {p.name for p in (out / "mds").iterdir()} if (out / "mds").exists() else set()
    assert 5 <= len(done) < 150 and visible <= done, (len(done), visible - done)
    for u in visible:
        assert (out / "mds" / u / "index.json").exists()
    assert not (out / "mds" / "index.json").exists()  # never finalized
    res = Pipeline.from_yaml(cfg).run(out=str(out), quiet=True)
    assert res.ok and res.units_skipped == len(done)
    assert _tree(out / "mds") == _tree(clean / "mds")
    assert [r["key"] for r in read_all(out / "mds")] == [r["key"] for r in read_all(clean / "mds")]
    check_accounting(res.manifest)
    assert verify(out) == []
