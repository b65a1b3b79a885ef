"""Security: keys and member names stay inside the output, credentials never leak, pickles refused."""

from __future__ import annotations

import io
import json
import pickle
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import polars as pl
import pytest
import yaml

from ..conftest import check_accounting, moto_s3
from .lib import jpeg

SAFE_MEMBER = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_.]+$")
HOSTILE = ["../../escape", "/etc/passwd", "a/../../b", "..", ".", "~root", "C:\\win\\x", "nul\0byte", "ok-key", "spaces here", "\u202eevil", "x" * 300]


def _all_files(root: Path) -> set[Path]:
    return {p.resolve() for p in root.rglob("*") if p.is_file()}


def _check_contained(tmp: Path, out: Path, before: set[Path]) -> None:
    after = _all_files(tmp)
    new = after - before
    outside = [p for p in new if out.resolve() not in p.parents]
    assert not outside, outside
    for t in out.rglob("*.tar"):
        with tarfile.open(t) as tf:
            for m in tf.getmembers():
                assert SAFE_MEMBER.match(m.name) and "/" not in m.name, m.name


def test_hostile_keys_never_escape_the_output(tmp_path):
    from mmprep import Pipeline

    pl.DataFrame({"id": HOSTILE, "caption": [f"c{i}" for i in range(len(HOSTILE))], "image_bytes": [jpeg(8, 8, i) for i in range(len(HOSTILE))]}).write_parquet(tmp_path / "t.parquet")
    doc = {
        "datasets": [{"name": "../evil", "source": {"type": "parquet", "path": "t.parquet"}, "key": {"column": "id"}}],
        "write": [{"type": "webdataset", "path": "wds"}, {"type": "jsonl", "path": "jl"}, {"type": "parquet", "path": "pq"}, {"type": "mds", "path": "mds"}],
        "run": {"samples_per_unit": 5},
    }
    before = _all_files(tmp_path)
    out = tmp_path / "out"
    res = Pipeline.from_dict(doc, base_dir=tmp_path).run(out=str(out), quiet=True)
    assert res.ok
    check_accounting(res.manifest)
    _check_contained(tmp_path, out, before)
    keys = [json.loads(line)["key"] for f in sorted((out / "jl").glob("*.jsonl")) for line in f.read_text().splitlines()]
    assert len(keys) == len(HOSTILE) == len(set(keys))
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", k) for k in keys)


def test_hostile_member_names_in_input_tars(tmp_path):
    from mmprep import Pipeline

    src = tmp_path / "in.tar"
    with tarfile.open(src, "w") as tf:
        for name, data in [("../../evil.jpg", jpeg(8, 8, 1)), ("../../evil.txt", b"up"), ("/abs/x.jpg", jpeg(8, 8, 2)), ("/abs/x.txt", b"abs"),
                           ("good.jpg", jpeg(8, 8, 3)), ("good.txt", b"fine")]:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    doc = {"datasets": [{"name": "t", "source": {"type": "webdataset", "path": str(src)}}], "write": [{"type": "webdataset", "path": "wds"}]}
    before = _all_files(tmp_path)
    out = tmp_path / "out"
    res = Pipeline.from_dict(doc, base_dir=tmp_path).run(out=str(out), quiet=True)
    assert res.ok
    check_accounting(res.manifest)
    _check_contained(tmp_path, out, before)
    assert not list(tmp_path.parent.parent.rglob("evil.jpg")) and not list(tmp_path.parent.parent.rglob("evil.txt")) and not Path("/abs").exists()


class _Payload:
    """Unpickling this creates a file: proof that nothing unpickled it."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickles_are_refused_unless_allowed(tmp_path):
    from mmprep import Pipeline

    flag = tmp_path / "PWNED"
    src = tmp_path / "nemo.tar"
    with tarfile.open(src, "w") as tf:
        for key in ("s0", "s1"):
            for ext, data in (("pickle", pickle.dumps(_Payload(str(flag)))), ("txt", b"caption")):
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    for allow, out in ((False, tmp_path / "refused"), (True, tmp_path / "allowed")):
        doc = {"datasets": [{"name": "n", "source": {"type": "webdataset", "path": str(src), "allow_pickle": allow}}], "write": [{"type": "jsonl", "path": "jl", "exclude": ["pickle"]}]}
        res = Pipeline.from_dict(doc, base_dir=tmp_path).run(out=str(out), quiet=True)
        assert res.ok
        d = res.manifest["datasets"]["n"]
        if allow:
            assert d["written"] == 2 and not d["rejected"]
        else:
            assert d["written"] == 0 and d["rejected"] == {"pickle_refused": 2}
            ex = res.manifest["rejection_examples"]["pickle_refused"][0]["message"]
            assert "allow_pickle" in ex
        assert not flag.exists()  # never unpickled, even when allowed (kept as raw bytes)


KEY_ID = "AKIAMMPREPLEAKTEST99"
SECRET = "s3cr3t-should-never-appear-anywhere-42"
URL_PW = "hunter2-url-password"


@pytest.fixture(scope="module")
def s3():
    with moto_s3(KEY_ID, SECRET) as (endpoint, c):
        c.create_bucket(Bucket="bkt")
        for i in range(6):
            c.put_object(Bucket="bkt", Key=f"img/{i}.jpg", Body=jpeg(20, 16, i))
        yield endpoint


def test_credentials_never_in_logs_manifests_or_errors(s3, tmp_path, mmprep_env):
    """S3 (moto server) inputs with credentials in storage_options and a password in a URL:
    the secrets appear in no file of the output, no log line and no error message."""
    import boto3

    so = {"key": KEY_ID, "secret": SECRET, "client_kwargs": {"endpoint_url": s3, "region_name": "us-east-1"}}
    urls = [f"s3://bkt/img/{i}.jpg" for i in range(6)] + ["s3://bkt/img/missing.jpg", f"http://user:{URL_PW}@127.0.0.1:9/x.jpg"]
    buf = io.BytesIO()
    pl.DataFrame({"id": [f"s-{i}" for i in range(len(urls))], "image_path": urls, "caption": [f"c{i}" for i in range(len(urls))]}).write_parquet(buf)
    boto3.client("s3", endpoint_url=s3, aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET, region_name="us-east-1").put_object(Bucket="bkt", Key="t/part.parquet", Body=buf.getvalue())
    doc = {
        # key from a column: derived keys hit the remote-parquet row-count bug (test_remote_parquet_derived_keys)
        "datasets": [{"name": "s3", "source": {"type": "parquet", "path": "s3://bkt/t/part.parquet", "storage_options": so}, "key": {"column": "id"}}],
        "media": {"storage_options": so, "size": 16, "retries": 0, "connect_timeout": 1, "headers": {"Authorization": f"Bearer {SECRET}"}},
        "write": [{"type": "webdataset", "path": "wds"}],
        "run": {"samples_per_unit": 4, "status": True},
    }
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    env = {**mmprep_env, "MMPREP_LOG": "debug"}
    p = subprocess.run([sys.executable, "-m", "mmprep.cli", "run", str(cfg), "--out", str(out)], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    m = json.loads((out / "_mmprep" / "manifest.json").read_text())
    check_accounting(m)
    assert m["totals"]["written"] == 6 and m["datasets"]["s3"]["rejected"] == {"connection_error": 1, "not_found": 1}
    # a failing run too: a missing input object -> the plan error message
    bad = dict(doc)
    bad["datasets"] = [{**doc["datasets"][0], "source": {**doc["datasets"][0]["source"], "path": "s3://bkt/nope/*.parquet"}}]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    p2 = subprocess.run([sys.executable, "-m", "mmprep.cli", "run", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "out2")], env=env, capture_output=True, text=True)
    assert p2.returncode != 0
    v = subprocess.run([sys.executable, "-m", "mmprep.cli", "verify", str(out)], env=env, capture_output=True, text=True)
    texts = {"stdout": p.stdout, "stderr": p.stderr, "bad-stderr": p2.stderr + p2.stdout, "verify": v.stdout + v.stderr}
    for f in out.rglob("*"):
        # plan.parquet is the input table itself (rows to fetch, URLs as given): input data, not a log
        if f.is_file() and f.name != "plan.parquet":
            data = f.read_bytes()
            for s in (KEY_ID, SECRET, URL_PW):
                assert s.encode() not in data, (f, s)
            if f.suffix == ".parquet":  # status files are compressed: check decoded too
                texts[str(f)] = pl.read_parquet(f).write_csv()
    for name, t in texts.items():
        for s in (KEY_ID, SECRET, URL_PW):
            assert s not in t, (name, s)
    assert "***" in (out / "_mmprep" / "run.json").read_text()


def test_remote_parquet_derived_keys(s3, tmp_path):
    """A remote parquet dataset without a key column plans all its rows (derived keys)."""
    import boto3

    from mmprep import Pipeline

    so = {"key": KEY_ID, "secret": SECRET, "client_kwargs": {"endpoint_url": s3, "region_name": "us-east-1"}}
    buf = io.BytesIO()
    pl.DataFrame({"caption": ["a", "b", "c"]}).write_parquet(buf)
    boto3.client("s3", endpoint_url=s3, aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET, region_name="us-east-1").put_object(Bucket="bkt", Key="k/part.parquet", Body=buf.getvalue())
    doc = {"datasets": [{"name": "r", "source": {"type": "parquet", "path": "s3://bkt/k/part.parquet", "storage_options": so}}], "write": ["jsonl"]}
    res = Pipeline.from_dict(doc, base_dir=tmp_path).run(out=str(tmp_path / "out"), quiet=True)
    assert res.manifest["datasets"]["r"]["planned"] == 3
