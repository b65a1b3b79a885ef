"""Object-store outputs (`--out s3://…`) on a real S3-compatible server (moto) on loopback:
the remote equals a local run byte for byte, a run stopped between its local commit and the
upload resumes, shares on two "nodes" (separate work dirs) finish into one dataset, foreign
prefixes are refused, credentials never stored, `mmprep finalize`/`verify` take the URL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from mmprep import Pipeline
from mmprep.errors import MmprepError, ResumeError

from ..conftest import check_accounting, moto_s3
from .lib import read_mds, read_wds, tree

pytest.importorskip("s3fs")
pytest.importorskip("streaming")
pytest.importorskip("webdataset")

KEY_ID = "AKIAMMPREPOUTKEY0001"
SECRET = "mmprep-out-secret-value-9876543210"
BUCKET = "out-bucket"
N = 70


@pytest.fixture(scope="module")
def s3():
    with moto_s3(KEY_ID, SECRET) as (endpoint, client):
        client.create_bucket(Bucket=BUCKET)
        so = {"key": KEY_ID, "secret": SECRET, "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
        yield {"endpoint": endpoint, "client": client, "storage_options": so}


def _doc(tmp: Path, so: dict, **run) -> dict:
    src = tmp / "t.parquet"
    if not src.exists():
        pl.DataFrame({
            "caption": [f"caption number {i}" if i % 11 else "" for i in range(N)],
            "payload": [bytes([i % 256]) * (100 + i) for i in range(N)],
        }).write_parquet(src)
    return {
        "datasets": [{"name": "d", "source": {"type": "parquet", "path": str(src)}, "filters": [{"type": "not-null", "columns": ["caption"]}]}],
        "write": [
            {"type": "mds", "path": "mds", "columns": {"caption": "str", "payload": "bytes"}, "size_limit": 2000},
            {"type": "webdataset", "path": "wds", "samples_per_shard": 16, "columns": ["caption", "payload"]},
            {"type": "jsonl", "path": "jsonl", "columns": ["key", "caption"]},
        ],
        "run": {"samples_per_unit": 10, "storage_options": so, **run},
    }


def _remote_tree(client, prefix: str) -> dict[str, bytes]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        for o in page.get("Contents", []):
            out[o["Key"][len(prefix) + 1:]] = client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
    return out


def _outputs(t: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in t.items() if not k.startswith("_mmprep/")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    res = Pipeline.from_dict(_doc(tmp, {}), base_dir=tmp).run(out=str(tmp / "out"), quiet=True)
    assert res.ok
    return {"tree": tree(tmp / "out"), "manifest": res.manifest}


def _ref_outputs(reference) -> dict[str, bytes]:
    return {k: v for k, v in reference["tree"].items() if not k.startswith("_mmprep")}


def test_remote_output_equals_local_run(s3, tmp_path, reference):
    url = f"s3://{BUCKET}/run1"
    res = Pipeline.from_dict(_doc(tmp_path, s3["storage_options"], work_dir=str(tmp_path / "work"), processes="always"), base_dir=tmp_path).run(
        out=url, quiet=True, workers=2
    )
    assert res.ok and res.remote == url and res.out == tmp_path / "work"
    check_accounting(res.manifest)
    remote = _remote_tree(s3["client"], "run1")
    assert _outputs(remote) == _ref_outputs(reference)
    manifest = json.loads(remote["_mmprep/manifest.json"])
    assert manifest["datasets"] == reference["manifest"]["datasets"]
    assert {f"_mmprep/units/{u['id']}.json" for u in manifest["units"]} <= set(remote)
    # credentials are never stored
    assert all(SECRET.encode() not in v and KEY_ID.encode() not in v for k, v in remote.items() if k.endswith(".json"))
    # read back with the real readers from a copy of the remote
    from mmprep.remote import RemoteOut, verify_url

    copy = tmp_path / "copy"
    r = RemoteOut(url, s3["storage_options"])
    r.get(sorted(r.files()), copy)
    mds, wds = read_mds(copy / "mds"), read_wds(copy / "wds")
    assert len(mds) == len(wds) == manifest["totals"]["written"] == N - 7
    assert [m["caption"] for m in mds] == [w["txt"].decode() for w in wds]
    assert verify_url(url, s3["storage_options"]) == []
    # a rerun is a no-op that leaves the remote as it is
    res2 = Pipeline.from_dict(_doc(tmp_path, s3["storage_options"], work_dir=str(tmp_path / "work")), base_dir=tmp_path).run(out=url, quiet=True)
    assert res2.ok and res2.units_skipped == res2.units_total
    assert _outputs(_remote_tree(s3["client"], "run1")) == _ref_outputs(reference)


def test_stopped_between_commit_and_upload_resumes(s3, tmp_path, reference, monkeypatch):
    from mmprep import remote as remote_mod

    url = f"s3://{BUCKET}/run2"
    real = remote_mod.RemoteOut.push_unit
    calls = []

    def flaky(self, work, unit_id, files):
        calls.append(unit_id)
        if len(calls) in (2, 5):
            raise MmprepError("uploading failed (simulated network loss)")
        return real(self, work, unit_id, files)

    monkeypatch.setattr(remote_mod.RemoteOut, "push_unit", flaky)
    doc = _doc(tmp_path, s3["storage_options"], work_dir=str(tmp_path / "work"))
    res = Pipeline.from_dict(doc, base_dir=tmp_path).run(out=url, quiet=True)
    assert len(res.failed) == 2 and res.manifest is None
    remote = _remote_tree(s3["client"], "run2")
    assert "_mmprep/manifest.json" not in remote and "mds/index.json" not in remote
    monkeypatch.setattr(remote_mod.RemoteOut, "push_unit", real)
    res = Pipeline.from_dict(doc, base_dir=tmp_path).run(out=url, quiet=True)
    # the two units were committed locally: they are uploaded, not redone
    assert res.ok and res.units_done == 0 and res.units_skipped == res.units_total
    assert _outputs(_remote_tree(s3["client"], "run2")) == _ref_outputs(reference)


def test_shares_on_two_nodes_and_cli_finalize(s3, tmp_path, reference):
    """Array mode with node-local work dirs: each share uploads its units; the URL is finalized
    by `mmprep finalize` from a third, empty work dir with credentials from the environment."""
    url = f"s3://{BUCKET}/run3"
    for i in range(2):
        doc = _doc(tmp_path, s3["storage_options"], work_dir=str(tmp_path / f"node{i}"))
        res = Pipeline.from_dict(doc, base_dir=tmp_path).run(out=url, quiet=True, shard=(i, 2), finalize_when_done=False)
        assert res.ok and res.manifest is None
    assert not (tmp_path / "node1" / "_mmprep" / "units" / "d-u000000.json").exists()  # node 0's unit
    env = dict(os.environ, AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1", FSSPEC_S3_ENDPOINT_URL=s3["endpoint"])
    p = subprocess.run([sys.executable, "-m", "mmprep.cli", "finalize", url, "--work-dir", str(tmp_path / "node2")], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert SECRET not in p.stderr and KEY_ID not in p.stderr
    remote = _remote_tree(s3["client"], "run3")
    assert _outputs(remote) == _ref_outputs(reference)
    assert json.loads(remote["_mmprep/manifest.json"])["datasets"] == reference["manifest"]["datasets"]
    p = subprocess.run([sys.executable, "-m", "mmprep.cli", "verify", url], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    # a corrupted remote shard is caught, and named by its URL
    from mmprep.remote import verify_url

    key = next(k for k in remote if k.startswith("wds/") and k.endswith(".tar"))
    s3["client"].put_object(Bucket=BUCKET, Key=f"run3/{key}", Body=remote[key][:-700])
    problems = verify_url(url, s3["storage_options"])
    assert problems and all(p.startswith(url) for p in problems) and any(f"{url}/{key}" in p for p in problems), problems


def test_resume_from_a_fresh_machine(s3, tmp_path, reference):
    """Half the units done on one machine; another with an empty work dir completes the run."""
    url = f"s3://{BUCKET}/run4"
    doc = _doc(tmp_path, s3["storage_options"], work_dir=str(tmp_path / "a"))
    Pipeline.from_dict(doc, base_dir=tmp_path).run(out=url, quiet=True, shard=(0, 2))
    doc = _doc(tmp_path, s3["storage_options"], work_dir=str(tmp_path / "b"))
    res = Pipeline.from_dict(doc, base_dir=tmp_path).run(out=url, quiet=True)
    assert res.ok and res.units_skipped == 4 and res.units_done == res.units_total - 4
    assert _outputs(_remote_tree(s3["client"], "run4")) == _ref_outputs(reference)


def test_foreign_or_different_prefix(s3, tmp_path):
    s3["client"].put_object(Bucket=BUCKET, Key="foreign/data.bin", Body=b"x")
    doc = _doc(tmp_path, s3["storage_options"], work_dir=str(tmp_path / "w1"))
    with pytest.raises(MmprepError, match="holds no mmprep run"):
        Pipeline.from_dict(doc, base_dir=tmp_path).run(out=f"s3://{BUCKET}/foreign", quiet=True, overwrite=True)
    assert _remote_tree(s3["client"], "foreign") == {"data.bin": b"x"}
    url = f"s3://{BUCKET}/run5"
    assert Pipeline.from_dict(doc, base_dir=tmp_path).run(out=url, quiet=True).ok
    other = _doc(tmp_path, s3["storage_options"], work_dir=str(tmp_path / "w2"))
    other["write"] = other["write"][2:]
    with pytest.raises(ResumeError, match="different pipeline"):
        Pipeline.from_dict(other, base_dir=tmp_path).run(out=url, quiet=True)
    res = Pipeline.from_dict(other, base_dir=tmp_path).run(out=url, quiet=True, overwrite=True)
    assert res.ok
    assert {k.split("/")[0] for k in _remote_tree(s3["client"], "run5")} == {"_mmprep", "jsonl"}
