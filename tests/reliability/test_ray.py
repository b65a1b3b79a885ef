"""Executor `ray` on a local 2-CPU Ray: same bytes and counts as the local executor."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl
import pytest

from ..conftest import check_accounting
from .lib import tree

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray(fault_plugin):
    # started after the fault plugin is on PYTHONPATH: Ray workers inherit it
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _doc(src: Path, executor: str, **run) -> dict:
    return {
        "datasets": [{"name": "toy", "source": {"type": "parquet", "path": str(src)}, }],
        "format": [{"type": "caption-clean", "max_chars": 40}],
        "write": [{"type": "parquet", "path": "pq"}, {"type": "webdataset", "path": "wds", "samples_per_shard": 17, "columns": ["caption", "n"]}],
        "run": {"samples_per_unit": 23, "workers": 2, "executor": executor, "processes": "always", **run},
    }


def _table(path: Path, n: int) -> None:
    pl.DataFrame(
        {
            "caption": [f"  a  caption\u200b number {i} " + ("x" * (i % 50)) for i in range(n)],
            "n": list(range(n)),
        }
    ).write_parquet(path)


def test_ray_equals_local(local_ray, tmp_path):
    from mmprep import Pipeline
    from mmprep.engine import verify

    _table(tmp_path / "t.parquet", 200)
    outs = {}
    for ex in ("local", "ray"):
        res = Pipeline.from_dict(_doc(tmp_path / "t.parquet", ex), base_dir=tmp_path).run(out=str(tmp_path / ex), quiet=True)
        assert res.ok, res.failed
        check_accounting(res.manifest)
        assert verify(tmp_path / ex) == []
        outs[ex] = res
    a, b = outs["local"].manifest, outs["ray"].manifest
    assert a["datasets"] == b["datasets"] and a["totals"] == b["totals"]
    assert a["config_hash"] == b["config_hash"]  # the executor is runtime-only
    assert [w["info"] for w in a["writers"]] == [w["info"] for w in b["writers"]]
    for sub in ("pq", "wds"):
        ta, tb = tree(tmp_path / "local" / sub), tree(tmp_path / "ray" / sub)
        assert ta and ta == tb, sub
    # the units really ran in Ray worker processes (not the driver)
    recs = [json.loads(p.read_text()) for p in (tmp_path / "ray" / "_mmprep" / "units").glob("toy-*.json")]
    assert len(recs) == 9 and all(r["pid"] != __import__("os").getpid() for r in recs)


def test_ray_unit_failure_is_recorded_rerun_redoes_only_it(local_ray, tmp_path):
    """A unit raising inside a Ray worker: <unit>.failed.json with the remote traceback, other
    units commit, nothing of the failed unit is visible, no manifest; a rerun redoes only that unit."""
    from mmprep import Pipeline

    _table(tmp_path / "t.parquet", 100)
    d = _doc(tmp_path / "t.parquet", "ray")
    d["format"].append({"type": "fail-on-key", "keys": ["toy-000000050"]})  # unit toy-00002 (rows 46..68)
    out = tmp_path / "o"
    res = Pipeline.from_dict(d, base_dir=tmp_path).run(out=str(out), quiet=True)
    assert set(res.failed) == {"toy-00002"}
    info = json.loads((out / "_mmprep" / "units" / "toy-00002.failed.json").read_text())
    assert "injected failure for key toy-000000050" in info["error"] and "mmprep_faults.py" in info["traceback"]
    assert not (out / "_mmprep" / "units" / "toy-00002.json").exists()
    assert not (out / "_mmprep" / "manifest.json").exists()
    assert not (out / "pq" / "part-toy-00002.parquet").exists() and not list((out / "wds").glob("*toy-00002*"))
    assert len(list((out / "_mmprep" / "units").glob("toy-0000[0-9].json"))) == 4
    # a rerun of the same pipeline redoes only the failed unit (which fails the same way again)
    res2 = Pipeline.from_dict(d, base_dir=tmp_path).run(out=str(out), quiet=True)
    assert set(res2.failed) == {"toy-00002"} and res2.units_skipped == 4


def test_ray_lost_worker_is_retried_not_half_committed(local_ray, tmp_path):
    """The worker process dies (os._exit) mid-unit: Ray restarts the actor and reruns the unit;
    the output equals a local run's."""
    from mmprep import Pipeline

    _table(tmp_path / "t.parquet", 120)
    marker = tmp_path / "crashed"
    outs = {}
    for ex in ("local", "ray"):
        d = _doc(tmp_path / "t.parquet", ex)
        d["format"].append({"type": "crash-once", "key": "toy-000000070", "marker": str(marker)})
        if ex == "local":
            marker.write_text("skip")  # no crash in the reference run
        else:
            marker.unlink()
        res = Pipeline.from_dict(d, base_dir=tmp_path).run(out=str(tmp_path / ex), quiet=True)
        assert res.ok, res.failed
        check_accounting(res.manifest)
        outs[ex] = res.manifest
    assert marker.exists() and marker.read_text() != "skip"  # the crash did happen, in a Ray worker
    assert int(marker.read_text()) != __import__("os").getpid()
    assert outs["local"]["totals"] == outs["ray"]["totals"]
    for sub in ("pq", "wds"):
        assert tree(tmp_path / "local" / sub) == tree(tmp_path / "ray" / sub)
    assert not list((tmp_path / "ray" / "_mmprep" / "units").glob("*.intent.json"))
