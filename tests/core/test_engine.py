import json
import os
import signal
import subprocess
import sys
import time

import polars as pl
import pytest
import yaml

from mmprep import Pipeline, ResumeError
from mmprep.engine import finalize, verify

from ..conftest import check_accounting
from .conftest import base_doc, make_table


def read_all(out, sub="pq"):
    return pl.read_parquet(sorted((out / sub).glob("*.parquet")))


def test_units_deterministic_across_workers(run_pipeline, table, tmp_path):
    _, path = table
    doc = base_doc(path, format=["caption-clean"])
    doc["datasets"][0]["filters"] = [{"type": "aesthetic", "cutoff": 4}]
    r1 = run_pipeline(doc, out=tmp_path / "a", workers=1)
    doc["run"]["processes"] = "always"  # the worker-process pool, not the in-driver path
    r2 = run_pipeline(doc, out=tmp_path / "b", workers=2)
    a, b = read_all(tmp_path / "a"), read_all(tmp_path / "b")
    assert a.equals(b)
    assert [u["id"] for u in r1.manifest["units"]] == [u["id"] for u in r2.manifest["units"]]
    assert sorted(p.name for p in (tmp_path / "a" / "pq").iterdir()) == sorted(p.name for p in (tmp_path / "b" / "pq").iterdir())
    assert a["key"].n_unique() == a.height
    assert a["key"].str.contains(r"^[A-Za-z0-9_-]+$").all()
    assert r1.manifest["config_hash"] == r2.manifest["config_hash"]


def test_resume_skips_completed_and_refuses_changed_config(run_pipeline, table, tmp_path):
    _, path = table
    doc = base_doc(path)
    out = tmp_path / "o"
    r1 = run_pipeline(doc, out=out)
    assert r1.units_done == 10
    r2 = run_pipeline(doc, out=out, workers=2)  # workers are runtime-only: same hash
    assert r2.units_done == 0 and r2.units_skipped == 10
    doc2 = base_doc(path)
    doc2["datasets"][0]["sampling"] = "first:10"
    with pytest.raises(ResumeError, match=r"datasets\[0\]\.sampling: \"all\" -> \"first:10\""):
        Pipeline.from_dict(doc2, base_dir=tmp_path).run(out=str(out), quiet=True)
    r3 = run_pipeline(doc2, out=out, overwrite=True)
    assert r3.manifest["totals"]["written"] == 10
    assert len(list((out / "pq").glob("*.parquet"))) == 1


def test_refuses_non_mmprep_nonempty_dir(table, tmp_path):
    _, path = table
    out = tmp_path / "o"
    out.mkdir()
    (out / "precious.txt").write_text("x")
    with pytest.raises(ResumeError, match="not empty"):
        Pipeline.from_dict(base_doc(path), base_dir=tmp_path).run(out=str(out), quiet=True, overwrite=True)
    assert (out / "precious.txt").exists()


def test_partial_unit_redone_and_intent_recovered(run_pipeline, table, tmp_path):
    _, path = table
    doc = base_doc(path)
    out = tmp_path / "o"
    run_pipeline(doc, out=out)
    baseline = read_all(out)
    # simulate a crash in the middle of unit 3's commit: record gone, intent present, a stray file
    units = out / "_mmprep" / "units"
    (units / "laion-00003.json").unlink()
    (units / "laion-00003.intent.json").write_text(json.dumps({"entries": ["pq/part-laion-00003.parquet"]}))
    (out / "pq" / "part-laion-00003.parquet").write_bytes(b"truncated")
    (out / "_mmprep" / "manifest.json").unlink()
    r = run_pipeline(doc, out=out)
    assert r.units_done == 1
    assert read_all(out).equals(baseline)
    assert not list(units.glob("*.intent.json"))


def test_unit_failure_is_recorded_and_rerun(run_pipeline, tmp_path):
    df = pl.DataFrame({"caption": [f"c{i}" for i in range(30)], "n": list(range(30))})
    df.write_parquet(tmp_path / "d.parquet")
    doc = {
        "datasets": [{"name": "d", "source": {"type": "parquet", "path": str(tmp_path / "d.parquet")}}],
        "format": [{"type": "rename", "columns": {"n": "m"}}],
        "write": [{"type": "parquet", "columns": ["key", "m"]}],
        "run": {"samples_per_unit": 10},
    }
    out = tmp_path / "o"
    p = Pipeline.from_dict(doc, base_dir=tmp_path)
    p.writers[0].options.columns = ["key", "missing"]  # make every unit fail in the writer
    res = p.run(out=str(out), quiet=True)
    assert set(res.failed) == {"d-00000", "d-00001", "d-00002"} and res.manifest is None
    assert (out / "_mmprep" / "units" / "d-00000.failed.json").exists()
    assert not list(out.glob("*.parquet"))  # nothing half-written is visible
    res2 = run_pipeline(doc, out=out)
    assert res2.units_done == 3 and not list((out / "_mmprep" / "units").glob("*.failed.json"))


def test_array_mode_shards_then_finalize(table, tmp_path, monkeypatch):
    _, path = table
    doc = base_doc(path)
    out = tmp_path / "o"
    p = Pipeline.from_dict(doc, base_dir=tmp_path)
    r0 = p.run(out=str(out), shard=(0, 3), quiet=True)
    assert r0.manifest is None and r0.units_done == 4  # units 0, 3, 6, 9
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    r1 = Pipeline.from_dict(doc, base_dir=tmp_path).run(out=str(out), quiet=True)
    assert r1.units_done == 3 and r1.manifest is None
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    monkeypatch.delenv("SLURM_ARRAY_TASK_COUNT")
    r2 = Pipeline.from_dict(doc, base_dir=tmp_path).run(out=str(out), shard=(2, 3), quiet=True)
    assert r2.units_done == 3 and r2.manifest is not None  # the last share finalizes
    check_accounting(r2.manifest)
    assert read_all(out).height == 1000
    m = finalize(out)  # idempotent
    assert m["totals"] == r2.manifest["totals"]


def test_manifest_contents_and_verify(run_pipeline, table, tmp_path):
    _, path = table
    doc = base_doc(path, format=[{"type": "caption-clean", "drop_empty": True}])
    doc["write"].append({"type": "jsonl", "path": "js"})
    res = run_pipeline(doc)
    m = json.loads((tmp_path / "out" / "_mmprep" / "manifest.json").read_text())
    assert m == res.manifest
    assert m["datasets"]["laion"]["rejected"] == {"empty_caption": 59}
    assert m["rejection_examples"]["empty_caption"][0]["key"] == "laion-000000000"
    assert m["plugins"]["mmprep"] == "0.1.0"
    assert {w["type"] for w in m["writers"]} == {"parquet", "jsonl"}
    assert m["timings"]["stages"]["format:caption-clean"] >= 0
    assert verify(tmp_path / "out") == []
    # corrupt one output file and remove another: verify names them
    victims = sorted((tmp_path / "out" / "js").glob("*.jsonl"))
    victims[0].write_text('{"broken": ')
    sorted((tmp_path / "out" / "pq").glob("*.parquet"))[1].unlink()
    problems = verify(tmp_path / "out")
    assert any(victims[0].name in p for p in problems)
    assert any("part-laion-00001.parquet: missing" in p for p in problems)


def test_multiple_datasets_concat_and_type_conflict(run_pipeline, tmp_path):
    pl.DataFrame({"caption": ["a", "b"], "score": [1.0, 2.0]}).write_parquet(tmp_path / "a.parquet")
    pl.DataFrame({"caption": ["c"], "extra": [5]}).write_csv(tmp_path / "b.csv")
    pl.DataFrame({"caption": ["d"], "score": ["high"]}).write_ndjson(tmp_path / "c.jsonl")
    doc = {
        "datasets": [
            {"name": "a", "source": {"type": "parquet", "path": str(tmp_path / "a.parquet")}},
            {"name": "b", "source": {"type": "csv", "path": str(tmp_path / "b.csv")}},
        ],
        "write": [{"type": "parquet"}],
    }
    res = run_pipeline(doc)
    got = pl.read_parquet(tmp_path / "out" / "*.parquet")
    assert got.sort("key")["dataset"].to_list() == ["a", "a", "b"]
    assert got.filter(pl.col("dataset") == "b")["score"].to_list() == [None]
    assert set(res.manifest["datasets"]) == {"a", "b"}
    doc["datasets"].append({"name": "c", "source": {"type": "jsonl", "path": str(tmp_path / "c.jsonl")}})
    from mmprep import ConfigError

    with pytest.raises(ConfigError, match=r"datasets\[2\]: column 'score' is String but Float64 in dataset 'a'"):
        Pipeline.from_dict(doc, base_dir=tmp_path).run(out=str(tmp_path / "o2"), quiet=True)


def test_key_column_sanitised_and_duplicates_rejected(run_pipeline, tmp_path):
    pl.DataFrame({"id": ["a.b/c", "../x", "ok-1"], "caption": ["1", "2", "3"]}).write_parquet(tmp_path / "k.parquet")
    doc = {"datasets": [{"name": "k", "source": {"type": "parquet", "path": str(tmp_path / "k.parquet")}, "key": {"column": "id"}}], "write": ["parquet"]}
    run_pipeline(doc)
    assert pl.read_parquet(tmp_path / "out" / "*.parquet")["key"].to_list() == ["a_b_c", "___x", "ok-1"]
    pl.DataFrame({"id": ["a.b", "a/b"], "caption": ["1", "2"]}).write_parquet(tmp_path / "k.parquet")
    from mmprep import ConfigError

    with pytest.raises(ConfigError, match="not unique after sanitising"):
        Pipeline.from_dict(doc, base_dir=tmp_path).run(out=str(tmp_path / "o2"), quiet=True)


def test_changed_input_refused_on_resume(run_pipeline, table, tmp_path):
    _, path = table
    doc = base_doc(path)
    out = tmp_path / "o"
    run_pipeline(doc, out=out)
    (out / "_mmprep" / "units" / "laion-00000.json").unlink()
    make_table(1200).write_parquet(path)
    with pytest.raises(ResumeError, match="input of dataset 'laion' changed"):
        Pipeline.from_dict(doc, base_dir=tmp_path).run(out=str(out), quiet=True)


def test_kill9_then_rerun_equals_uninterrupted(table, tmp_path, mmprep_env, run_pipeline):
    """SIGKILL a real `mmprep run` mid-way; the rerun completes; outputs equal a clean run."""
    _, path = table
    big = make_table(20000)
    big.write_parquet(path)
    doc = base_doc(path, format=["caption-clean"])
    doc["run"] = {"samples_per_unit": 500, "workers": 2}
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    clean = tmp_path / "clean"
    run_pipeline(str(cfg), out=clean)
    out = tmp_path / "killed"
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-m", "mmprep.cli", "run", str(cfg), "--out", str(out), "-q"], env=mmprep_env, start_new_session=True)
        deadline = time.time() + 60
        units = out / "_mmprep" / "units"
        while time.time() < deadline and proc.poll() is None:
            if units.exists() and len(list(units.glob("*.json"))) >= 3 + attempt * 3:
                break
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # no temp or truncated file is visible among outputs
    assert all(p.name.startswith("part-") and p.suffix == ".parquet" for p in (out / "pq").iterdir())
    for p in (out / "pq").iterdir():
        pl.read_parquet(p)
    res = subprocess.run([sys.executable, "-m", "mmprep.cli", "run", str(cfg), "--out", str(out), "-q"], env=mmprep_env)
    assert res.returncode == 0
    assert read_all(out).equals(read_all(clean))
    check_accounting(json.loads((out / "_mmprep" / "manifest.json").read_text()))


def test_dry_run_writes_nothing(table, tmp_path):
    _, path = table
    doc = base_doc(path)
    doc["datasets"][0]["filters"] = [{"type": "aesthetic", "cutoff": 5}]
    doc["datasets"][0]["sampling"] = "first:100"
    res = Pipeline.from_dict(doc, base_dir=tmp_path).run(out=str(tmp_path / "o"), dry_run_only=True)
    assert not (tmp_path / "o").exists()
    ds = res.dry_run["datasets"][0]
    assert ds["planned"] == 100 and res.dry_run["units"] == 1 and ds["source_rows"] == 1000


def test_status_output(run_pipeline, table, tmp_path):
    _, path = table
    doc = base_doc(path, format=[{"type": "caption-clean", "drop_empty": True}])
    doc["run"]["status"] = True
    run_pipeline(doc)
    st = pl.read_parquet(tmp_path / "out" / "_mmprep" / "status" / "*.parquet")
    assert st.height == 1000
    assert st.group_by("status").len().sort("status").rows() == [("rejected", 59), ("written", 941)]


def test_concurrent_commits_into_a_shared_directory(tmp_path):
    """Two units committing files into the same new sub-directory never delete each other's."""
    import threading

    from mmprep.engine import _merge_move

    dst = tmp_path / "out" / "_parts"
    srcs = []
    for u in range(8):
        s = tmp_path / f"stage{u}" / "w0"
        (s / "_parts").mkdir(parents=True)
        (s / "_parts" / f"part-{u}.tar").write_bytes(b"x" * 10)
        srcs.append(s)
    threads = [threading.Thread(target=_merge_move, args=(s, tmp_path / "out")) for s in srcs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in dst.iterdir()) == [f"part-{u}.tar" for u in range(8)]


def test_recovery_deletes_only_listed_files(run_pipeline, table, tmp_path):
    _, path = table
    out = tmp_path / "o"
    run_pipeline(base_doc(path), out=out)
    units = out / "_mmprep" / "units"
    (units / "laion-00002.json").unlink()
    (units / "laion-00002.intent.json").write_text(json.dumps({"entries": ["pq/part-laion-00002.parquet"]}))
    from mmprep.engine import recover

    recover(out)
    assert not (out / "pq" / "part-laion-00002.parquet").exists()
    assert len(list((out / "pq").glob("*.parquet"))) == 9


def test_recovery_removes_directories_a_half_commit_left_empty(run_pipeline, table, tmp_path):
    """A unit directory (as MDS writes one per unit) whose files recovery deletes disappears
    with them; a directory that still holds other units' files stays."""
    _, path = table
    out = tmp_path / "o"
    run_pipeline(base_doc(path), out=out)
    units = out / "_mmprep" / "units"
    (units / "laion-00003.json").unlink()
    unit_dir = out / "pq" / "laion-00003"
    unit_dir.mkdir()
    (unit_dir / "index.json").write_text("{}")
    (unit_dir / "shard.00000.mds").write_bytes(b"x")
    entries = ["pq/laion-00003/index.json", "pq/laion-00003/shard.00000.mds", "pq/part-laion-00003.parquet"]
    (units / "laion-00003.intent.json").write_text(json.dumps({"entries": entries}))
    from mmprep.engine import recover

    recover(out)
    assert not unit_dir.exists()
    assert (out / "pq").is_dir() and len(list((out / "pq").glob("*.parquet"))) == 9


def test_partitioned_source_filters_hash_and_dup_in_units(tmp_path):
    """A partitioned source (one unit per partition): filters, hash: and dup: run in the unit."""
    import pluggy

    import mmprep
    from mmprep import hookspecs
    from mmprep.config import build_pipeline
    from mmprep.registry import PluginInfo, Registry, load

    class Parts(mmprep.Source):
        """Three partitions of ten rows, for the test."""

        name = "test-parts"

        def partitions(self):
            return [mmprep.Partition(id=f"p{i}", info={"i": i}, rows=10) for i in range(3)]

        def read_partition(self, p):
            i = p.info["i"]
            df = pl.DataFrame({"key": [f"k{i}.{j}" for j in range(10)], "score": [float(j) for j in range(10)]})
            return mmprep.PartitionData(df, rejected={"truncated_shard": 1} if i == 2 else {})

    class Plug:
        @mmprep.hookimpl
        def register_sources(self, register):
            register(Parts)

    base = load()
    pm = pluggy.PluginManager("mmprep")
    pm.add_hookspecs(hookspecs)
    reg = Registry(pm)
    for name, plugin in base.pm.list_name_plugin():
        pm.register(plugin, name=name)
        reg.plugins[name] = base.plugins[name]
    pm.register(Plug(), name="test")
    reg.plugins["test"] = PluginInfo(name="test", distribution="tests")
    reg._collect()
    doc = {
        "datasets": [{"name": "d", "source": "test-parts", "filters": [{"type": "range", "column": "score", "min": 2}], "sampling": "hash:0.5,dup:2"}],
        "write": [{"type": "parquet"}],
    }
    p = build_pipeline(doc, base_dir=tmp_path, registry=reg)
    res = p.run(out=str(tmp_path / "o"), quiet=True)
    assert res.ok
    check_accounting(res.manifest)
    d = res.manifest["datasets"]["d"]
    assert d["units"] == 3 and d["rejected"]["filter:range"] == 6 and d["rejected"]["truncated_shard"] == 1
    got = pl.read_parquet(tmp_path / "o" / "*.parquet")
    assert got.height == 2 * (24 - d["rejected"]["sampled_out"])
    assert got["key"].n_unique() == got.height and got["key"].str.contains(r"^[A-Za-z0-9_-]+$").all()
    assert got.filter(pl.col("key").str.ends_with("_dup1")).height == got.height // 2
    base_keys = got.filter(~pl.col("key").str.contains("_dup"))["key"].to_list()
    assert all(k.startswith("k") and "_" in k for k in base_keys)  # k0.5 -> k0_5 (sanitised)


def test_stale_finalize_lock_of_a_dead_process_is_taken_over(run_pipeline, table, tmp_path):
    """A finalizer killed mid-way leaves its lock; the next run must still finalize."""
    import socket

    _, path = table
    out = tmp_path / "o"
    run_pipeline(base_doc(path), out=out)
    (out / "_mmprep" / "manifest.json").unlink()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / "_mmprep" / "finalize.lock").write_text(f"{socket.gethostname()} {dead.pid}")
    res = run_pipeline(base_doc(path), out=out)
    assert res.manifest is not None and (out / "_mmprep" / "manifest.json").exists()
    assert not (out / "_mmprep" / "finalize.lock").exists()
