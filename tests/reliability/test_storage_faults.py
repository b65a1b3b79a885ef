"""A disk that fills up mid-write (ENOSPC after N bytes): clear error, nothing partial visible, resumable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from ..conftest import check_accounting
from .lib import done_units, tree, visible

pytest.importorskip("webdataset")


def _setup(tmp: Path) -> Path:
    n = 100
    pl.DataFrame({"caption": [f"caption number {i:04d} of the disk test" for i in range(n)]}).write_parquet(tmp / "t.parquet")
    doc = {
        "datasets": [{"name": "toy", "source": {"type": "parquet", "path": "t.parquet"}}],
        "write": [
            {"type": "webdataset", "path": "wds", "samples_per_shard": 15},
            {"type": "enospc", "path": "disk", "chunk": 64},
        ],
        "run": {"samples_per_unit": 10, "workers": 1},
    }
    (tmp / "p.yaml").write_text(yaml.safe_dump(doc))
    return tmp / "p.yaml"


def test_enospc_mid_write_then_resume(fault_plugin, tmp_path, mmprep_env):
    from mmprep import Pipeline
    from mmprep.engine import verify

    cfg = _setup(tmp_path)
    ref = tmp_path / "ref"
    res = Pipeline.from_yaml(cfg).run(out=str(ref), quiet=True)
    assert res.ok
    out = tmp_path / "out"
    # each unit writes ~380 bytes to the "disk": the budget runs out inside unit 3's write
    env = {**mmprep_env, "MMPREP_TEST_DISK_BUDGET": "1300"}
    p = subprocess.run([sys.executable, "-m", "mmprep.cli", "run", str(cfg), "--out", str(out)], env=env, capture_output=True, text=True)
    assert p.returncode == 1, p.stderr
    # a clear error per failed unit, naming the errno text and the file
    assert "No space left on device" in p.stderr and "part-toy-00003.bin" in p.stderr, p.stderr
    units = out / "_mmprep" / "units"
    assert done_units(out) == {"toy-00000", "toy-00001", "toy-00002"}
    failed = sorted(x.name for x in units.glob("*.failed.json"))
    assert failed == [f"toy-{i:05d}.failed.json" for i in range(3, 10)]
    err = json.loads((units / "toy-00003.failed.json").read_text())
    assert err["error"].startswith("OSError: [Errno 28] No space left on device") and "Traceback" in err["traceback"]
    # nothing partial visible: only the completed units' files, no shards, no manifest, no staging
    assert [x.name for x in visible(out / "disk")] == [f"part-toy-0000{i}.bin" for i in range(3)]
    assert visible(out / "wds") == []
    # the completed units' hidden part tars, each with its sample index
    assert sorted(x.name for x in (out / "wds").glob(".part-*")) == sorted(f".part-toy-0000{i}.{e}" for i in range(3) for e in ("json", "tar"))
    assert not (out / "_mmprep" / "manifest.json").exists()
    assert not list(units.glob("*.intent.json"))
    assert not (out / "_mmprep" / "staging").exists() or not any((out / "_mmprep" / "staging").iterdir())
    for i in range(3):  # completed units' files are whole
        assert (out / "disk" / f"part-toy-0000{i}.bin").read_bytes() == (ref / "disk" / f"part-toy-0000{i}.bin").read_bytes()
    # space freed: the rerun redoes only the failed units and equals the uninterrupted run
    p2 = subprocess.run([sys.executable, "-m", "mmprep.cli", "run", str(cfg), "--out", str(out)], env=mmprep_env, capture_output=True, text=True)
    assert p2.returncode == 0, p2.stderr
    assert "resuming, 3 of 10 units already complete" in p2.stderr
    manifest = json.loads((out / "_mmprep" / "manifest.json").read_text())
    check_accounting(manifest)
    assert manifest["totals"] == res.manifest["totals"]
    assert tree(out / "wds") == tree(ref / "wds") and tree(out / "disk") == tree(ref / "disk")
    assert not list(units.glob("*.failed.json"))
    assert verify(out) == []
