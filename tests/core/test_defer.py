"""run.defer_binary: binary columns of parquet inputs stay out of plan.parquet and every unit reads
them back from the input; the outputs equal a run that copies everything."""

from __future__ import annotations

import os

import numpy as np
import polars as pl
import pytest

from mmprep import Pipeline


def _inputs(tmp_path):
    """Two parquet files with binary columns of every shape (plain, struct as HF datasets store
    images, list of binaries) plus a jsonl dataset without any."""
    rng = np.random.default_rng(3)
    files = []
    for f, n in (("a.parquet", 70), ("b.parquet", 55)):
        base = len(files) * 1000
        blobs = [rng.bytes(int(rng.integers(10, 300))) for _ in range(n)]
        pl.DataFrame({
            "id": [f"r{base + i}" for i in range(n)],
            "jpg": blobs,
            "image": [{"bytes": b[:5], "path": f"p{i}.jpg"} for i, b in enumerate(blobs)],
            "refs": [[b[:3], b[-3:]] if i % 3 else [] for i, b in enumerate(blobs)],
            "caption": [f"caption {base + i}" for i in range(n)],
            "aesthetic": rng.uniform(3, 7, n),
        }).write_parquet(tmp_path / f, row_group_size=16)
        files.append(f)
    pl.DataFrame({"caption": [f"text {i}" for i in range(9)]}).write_ndjson(tmp_path / "t.jsonl")
    return files


def _doc(defer: bool, sampling: str = "all") -> dict:
    return {
        "datasets": [
            {"name": "imgs", "source": {"type": "parquet", "path": "*.parquet", "rename": {"jpg": "image_bytes"}},
             "key": {"column": "id"}, "filters": [{"type": "aesthetic", "cutoff": 4}], "sampling": sampling},
            {"name": "derived-keys", "source": {"type": "parquet", "path": "b.parquet", "columns": ["jpg", "caption"]}},
            {"name": "text", "source": {"type": "jsonl", "path": "t.jsonl"}},
        ],
        "write": [{"type": "parquet", "path": "pq"}],
        "run": {"samples_per_unit": 12, "defer_binary": defer, "seed": 5},
    }


def _read(out) -> pl.DataFrame:
    return pl.read_parquet(sorted((out / "pq").glob("*.parquet"))).sort("key")


@pytest.mark.parametrize("sampling", ["all", "random:40", "dup:2"])
def test_deferred_binary_columns_equal_a_full_copy(tmp_path, run_pipeline, sampling):
    _inputs(tmp_path)
    full = run_pipeline(_doc(False, sampling), out=tmp_path / "full", workers=1)
    lazy = run_pipeline(_doc(True, sampling), out=tmp_path / "lazy", workers=2)
    a, b = _read(tmp_path / "full"), _read(tmp_path / "lazy")
    assert a.columns == b.columns and a.schema == b.schema
    assert a.equals(b)
    per = a.group_by("dataset").agg(pl.col("image_bytes").null_count().alias("ib"), pl.col("jpg").null_count().alias("j"), pl.len())
    nulls = {d: (ib, j, n) for d, ib, j, n in per.iter_rows()}
    assert nulls["imgs"][0] == 0 and nulls["derived-keys"][1] == 0  # every binary value is back
    assert full.manifest["datasets"] == lazy.manifest["datasets"]
    # the plan holds the row positions, not the bytes
    plan = pl.read_parquet(tmp_path / "lazy" / "_mmprep" / "plan.parquet")
    assert plan["image_bytes"].null_count() == plan.height and plan["image"].null_count() == plan.height
    assert plan.filter(pl.col("dataset") != "text")["__row"].null_count() == 0
    assert "__row" not in pl.read_parquet(tmp_path / "full" / "_mmprep" / "plan.parquet").columns


def test_deferred_rows_from_an_object_store(tmp_path, run_pipeline):
    import fsspec

    files = _inputs(tmp_path)
    mem = fsspec.filesystem("memory")
    for f in files:
        mem.pipe(f"/defer-test/{f}", (tmp_path / f).read_bytes())
    doc = _doc(True)
    doc["datasets"] = [{"name": "imgs", "source": {"type": "parquet", "path": "memory://defer-test/*.parquet"}, "key": {"column": "id"}}]
    run_pipeline(doc, out=tmp_path / "o")
    got = _read(tmp_path / "o")
    want = pl.concat([pl.read_parquet(tmp_path / f) for f in files]).sort("id")
    assert got["jpg"].to_list() == want["jpg"].to_list()
    assert got["refs"].to_list() == want["refs"].to_list()


def test_an_input_changed_after_planning_fails_its_units_clearly(tmp_path, run_pipeline):
    _inputs(tmp_path)
    doc = _doc(True)
    doc["datasets"] = doc["datasets"][:1]
    out = tmp_path / "o"
    first = Pipeline.from_dict(doc, base_dir=tmp_path).run(out=str(out), quiet=True, shard=(0, 2))
    assert first.ok
    st = os.stat(tmp_path / "a.parquet")
    os.utime(tmp_path / "a.parquet", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same size: the fingerprint cannot tell
    rest = Pipeline.from_dict(doc, base_dir=tmp_path).run(out=str(out), quiet=True, shard=(1, 2))
    assert not rest.ok and rest.failed
    import json

    for uid in rest.failed:
        err = json.loads((out / "_mmprep" / "units" / f"{uid}.failed.json").read_text())["error"]
        assert "a.parquet changed since the plan was made (mtime_ns " in err and "--overwrite" in err
    # the units of the unchanged file were written; nothing of a failed unit is visible
    done = {p.name[:-5] for p in (out / "_mmprep" / "units").glob("*.json") if not p.name.endswith(".failed.json")}
    units = json.loads((out / "_mmprep" / "run.json").read_text())["units"]
    assert len(done) + len(rest.failed) == len(units) and len(rest.failed) < len(units) // 2
