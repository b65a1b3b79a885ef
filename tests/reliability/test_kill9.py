"""kill -9 of `mmprep run` at seeded random moments: no visible damage, the rerun equals an
uninterrupted run (MDS + WebDataset, images fetched from files and resized)."""

from __future__ import annotations

import io
import json
import os
import shutil
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

from ..conftest import check_accounting
from .lib import done_units, intent_entries, jpeg, read_mds, read_wds, tree, visible

pytest.importorskip("streaming")
pytest.importorskip("webdataset")

N = 200
KILLS = 10
SEED = 20240611
RESULTS = Path(os.environ.get("MMPREP_RELIABILITY_RESULTS", "")) if os.environ.get("MMPREP_RELIABILITY_RESULTS") else None


def _make(tmp: Path) -> Path:
    imgs = tmp / "imgs"
    imgs.mkdir()
    paths = []
    for i in range(N):
        name = f"{i}.jpg"
        if i % 37 == 5:
            (imgs / name).write_bytes(jpeg(40, 36, i)[:200])  # truncated -> decode_error
        elif i % 53 != 11:  # missing -> not_found
            (imgs / name).write_bytes(jpeg(40 + i % 9, 36 + i % 5, i))
        paths.append(f"imgs/{name}")
    pl.DataFrame({"image_path": paths, "caption": [f"sample {i} caption" for i in range(N)]}).write_parquet(tmp / "t.parquet")
    doc = {
        "datasets": [{"name": "imgs", "source": {"type": "parquet", "path": "t.parquet"}}],
        "media": {"size": 24, "resize": "center-crop", "quality": 90, "threads": 2},
        "write": [
            {"type": "mds", "path": "mds", "columns": {"image_bytes": "bytes", "caption": "str", "width": "int32", "height": "int32"}, "hashes": ["xxh64"], "size_limit": 4000},
            {"type": "webdataset", "path": "wds", "samples_per_shard": 25, "columns": ["image_bytes", "caption"], "wdinfo": True},
        ],
        "run": {"samples_per_unit": 16, "workers": 2},
    }
    (tmp / "p.yaml").write_text(yaml.safe_dump(doc))
    return tmp / "p.yaml"


def _cli(cfg: Path, out: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mmprep.cli", "run", str(cfg), "-q", "--out", str(out)],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _check_no_visible_damage(out: Path) -> None:
    """After a kill: every visible file is complete and belongs to a completed unit (or finalize)."""
    from mmprep_webdataset._tar import scan_samples

    done = done_units(out)
    # a kill between a unit's moves and its record leaves its (complete) files listed in its
    # intent: not referenced by any index, and deleted by the next run's recovery
    pending = intent_entries(out)
    for p in visible(out / "wds"):
        if p.suffix == ".tar":
            with open(p, "rb") as f:
                samples, damage = scan_samples(f, str(p))
            assert damage is None, damage
            assert samples
        elif p.name == "shards.json":
            json.loads(p.read_text())
        else:
            assert p.name == "wdinfo.pkl", p
    for p in (out / "wds").glob(".part-*.tar") if (out / "wds").exists() else []:
        rel = str(p.relative_to(out))
        assert p.name[len(".part-"):-4] in done or rel in pending, f"{p}: part of an incomplete unit is in the output"
        with open(p, "rb") as f:
            assert scan_samples(f, str(p))[1] is None, f"{p}: damaged part"
    for p in visible(out / "mds"):
        rel = p.relative_to(out / "mds")
        if len(rel.parts) == 1:
            assert rel.name == "index.json", p
            json.loads(p.read_text())
            continue
        unit = rel.parts[0]
        assert unit in done or str(p.relative_to(out)) in pending, f"{p}: a file of incomplete unit {unit} is visible"
    for d in (out / "mds").iterdir() if (out / "mds").exists() else []:
        if d.is_dir():
            idx = json.loads((d / "index.json").read_text())
            for s in idx["shards"]:
                f = d / s["raw_data"]["basename"]
                assert f.stat().st_size == s["raw_data"]["bytes"], f"{f}: truncated"


def _check_equal(out: Path, ref: Path, res_manifest: dict) -> None:
    from mmprep.engine import verify

    check_accounting(res_manifest)
    assert tree(out / "wds") == tree(ref / "wds")
    assert tree(out / "mds") == tree(ref / "mds")
    assert verify(out) == []


def _kill_round(cfg: Path, out: Path, env: dict, rng) -> tuple[bool, str]:
    """Start `mmprep run`, kill -9 its process group at a seeded random moment.

    Moments: 25 % during start-up/planning (a random delay), 15 % a random delay (0-0.3 s)
    after the last unit committed (inside finalize), else a random delay (0-0.3 s) after 1-3
    more units committed in this run (inside later units' media/write/commit).
    Returns (killed, where)."""
    x = rng.random()
    mode_startup = x < 0.25
    delay = float(rng.uniform(0.05, 2.0)) if mode_startup else float(rng.uniform(0.0, 0.3))
    more = 0 if mode_startup else (UNITS if x > 0.85 else int(rng.integers(1, 4)))  # > 0.85: in finalize
    before = len(done_units(out))
    p = _cli(cfg, out, env)
    deadline = time.time() + 240
    while p.poll() is None and time.time() < deadline and len(done_units(out)) < min(UNITS, before + more):
        time.sleep(0.005)
    try:
        p.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        n = len(done_units(out))
        where = "start-up" if mode_startup else ("finalize" if n == UNITS else f"after {n} units")
        return True, where
    assert p.returncode == 0, p.stderr.read().decode()
    return False, "completed"


UNITS = -(-N // 16)


def test_kill9_at_random_moments(tmp_path, mmprep_env):
    from mmprep import Pipeline

    cfg = _make(tmp_path)
    ref = tmp_path / "ref"
    # the uninterrupted reference runs in this process (streaming is imported once here anyway)
    res = Pipeline.from_yaml(cfg).run(out=str(ref), quiet=True, workers=1)
    assert res.ok
    ref_manifest = res.manifest
    check_accounting(ref_manifest)
    d = ref_manifest["datasets"]["imgs"]
    assert d["planned"] == N and d["units"] == UNITS and d["rejected"].get("decode_error") and d["rejected"].get("not_found")
    # the reference output read back with the real readers
    mds_rows, wds_rows = read_mds(ref / "mds"), read_wds(ref / "wds")
    assert len(mds_rows) == len(wds_rows) == d["written"]
    assert len({r["__key__"] for r in wds_rows}) == d["written"]
    assert [r["image_bytes"] for r in mds_rows] == [r["jpg"] for r in wds_rows]
    assert [r["caption"] for r in mds_rows] == [r["txt"].decode() for r in wds_rows]

    rng = np.random.default_rng(SEED)
    kills, completed, log = 0, 0, []
    out = tmp_path / "killed"
    t0 = time.perf_counter()
    while True:
        if kills < KILLS:
            killed, where = _kill_round(cfg, out, mmprep_env, rng)
        else:  # the final rerun, no kill
            p = _cli(cfg, out, mmprep_env)
            assert p.wait(timeout=240) == 0, p.stderr.read().decode()
            killed, where = False, "completed"
        if killed:
            kills += 1
            log.append(where)
            _check_no_visible_damage(out)
            continue
        # a run completed: its output must equal the uninterrupted one
        manifest = json.loads((out / "_mmprep" / "manifest.json").read_text())
        _check_equal(out, ref, manifest)
        assert manifest["datasets"] == ref_manifest["datasets"]
        assert [r["__key__"] for r in read_wds(out / "wds")] == [r["__key__"] for r in wds_rows]
        assert [(r["caption"], r["image_bytes"]) for r in read_mds(out / "mds")] == [(r["caption"], r["image_bytes"]) for r in mds_rows]
        completed += 1
        log.append("completed")
        if kills >= KILLS:
            break
        shutil.rmtree(out)  # a new chain of kills on a fresh output
    assert kills >= 10 and completed >= 1
    if RESULTS:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "kill9.json").write_text(json.dumps({
            "kills": kills, "completed_runs": completed, "samples": N, "units": UNITS, "written": d["written"],
            "rejected": d["rejected"], "rounds": log, "seconds": round(time.perf_counter() - t0, 1),
        }, indent=1))
