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


def test_ray_encoder_actors(local_ray, tmp_path):
    """`run.ray_encoder_actors`: encoders run in their own actor (set up once, there), unit
    actors send frames to it; outputs and counts equal the local executor's."""
    from mmprep import Pipeline

    _table(tmp_path / "t.parquet", 90)
    outs = {}
    for ex in ("local", "ray"):
        d = _doc(tmp_path / "t.parquet", ex, workers=1, ray_encoder_actors=1)
        d["encode"] = [{"type": "pid-probe", "pid_column": "pid"}]
        d["write"] = [{"type": "parquet", "path": "pq"}]
        res = Pipeline.from_dict(d, base_dir=tmp_path).run(out=str(tmp_path / ex), quiet=True)
        assert res.ok, res.failed
        check_accounting(res.manifest)
        outs[ex] = res.manifest
        assert res.manifest["encoders"][0]["stats"] == {"encoded": 90}
    got = pl.read_parquet(tmp_path / "ray" / "pq" / "*.parquet")
    ref = pl.read_parquet(tmp_path / "local" / "pq" / "*.parquet")
    assert got.drop("pid", "setup_pid").equals(ref.drop("pid", "setup_pid"))
    recs = [json.loads(p.read_text()) for p in (tmp_path / "ray" / "_mmprep" / "units").glob("toy-*.json")]
    unit_pids = {r["pid"] for r in recs}
    enc_pids = set(got["pid"].to_list())
    # one encoder actor did all the encoding, with the model it set up once; not the unit actor
    assert len(enc_pids) == 1 and set(got["setup_pid"].to_list()) == enc_pids
    assert not enc_pids & unit_pids and __import__("os").getpid() not in enc_pids
    assert [r["encoder_stats"] for r in sorted(recs, key=lambda r: r["index"])] == [[{"encoded": 23}]] * 3 + [[{"encoded": 21}]]


def test_ray_driver_killed_then_rerun_equals_local(fault_plugin, tmp_path, mmprep_env):
    """kill -9 of a `mmprep run` driver using executor ray (its local Ray dies with it) after some
    units committed: nothing half-visible; a rerun (here on the local executor: the executor is
    runtime-only) completes and equals an uninterrupted run."""
    import os
    import signal
    import subprocess
    import time

    import yaml

    from mmprep import Pipeline

    from .lib import done_units

    _table(tmp_path / "t.parquet", 230)
    ref = Pipeline.from_dict(_doc(tmp_path / "t.parquet", "local"), base_dir=tmp_path).run(out=str(tmp_path / "ref"), quiet=True)
    assert ref.ok
    doc = _doc(tmp_path / "t.parquet", "ray", workers=1)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    out = tmp_path / "o"
    env = dict(mmprep_env, RAY_DISABLE_IMPORT_WARNING="1")
    p = subprocess.Popen([sys.executable, "-m", "mmprep.cli", "run", str(tmp_path / "p.yaml"), "-q", "--out", str(out)],
                         env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while p.poll() is None and time.time() < deadline and len(done_units(out)) < 3:
        time.sleep(0.01)
    assert p.poll() is None, p.stderr.read().decode()  # still running: the kill lands mid-run
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    done = done_units(out)
    assert 3 <= len(done) < 10 and not (out / "_mmprep" / "manifest.json").exists()
    visible = {q.name for q in (out / "pq").glob("*.parquet")} if (out / "pq").exists() else set()
    from .lib import intent_entries

    pending = {Path(e).name for e in intent_entries(out)}
    assert all(n[len("part-"):-len(".parquet")] in done or n in pending for n in visible), (visible, done)
    doc["run"]["executor"] = "local"
    res = Pipeline.from_dict(doc, base_dir=tmp_path).run(out=str(out), quiet=True)
    assert res.ok and res.units_skipped == len(done)
    check_accounting(res.manifest)
    assert res.manifest["datasets"] == ref.manifest["datasets"]
    for sub in ("pq", "wds"):
        assert tree(out / sub) == tree(tmp_path / "ref" / sub), sub
