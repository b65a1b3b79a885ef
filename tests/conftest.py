"""Shared test set-up: offline HF, helpers to run pipelines and check accounting."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("POLARS_MAX_THREADS", "2")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def check_accounting(manifest: dict) -> None:
    """planned == written + rejected, for every dataset and in total."""
    for name, d in manifest["datasets"].items():
        assert d["planned"] == d["written"] + sum(d["rejected"].values()), (name, d)
    t = manifest["totals"]
    assert t["planned"] == t["written"] + t["rejected"]
    assert t["rejected"] == sum(t["rejected_by_reason"].values())


@pytest.fixture
def run_pipeline(tmp_path):
    """Run a pipeline dict (or YAML path) into tmp_path/out; assert accounting; return the result."""
    from mmprep import Pipeline

    def _run(doc, out=None, base_dir=None, **kw):
        out = Path(out) if out else tmp_path / "out"
        kw.setdefault("quiet", True)
        if isinstance(doc, (str, Path)):
            p = Pipeline.from_yaml(doc)
        else:
            p = Pipeline.from_dict(doc, base_dir=base_dir or tmp_path)
        res = p.run(out=str(out), **kw)
        assert res.ok, res.failed
        if res.manifest is not None:
            check_accounting(res.manifest)
        return res

    return _run


@pytest.fixture
def mmprep_env():
    """Environment for subprocess runs of the `mmprep` console script."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@contextlib.contextmanager
def moto_s3(key_id: str, secret: str):
    """A real S3-compatible server (moto, server mode) on loopback: yields (endpoint, boto3 client)."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key_id, aws_secret_access_key=secret, region_name="us-east-1")
        yield endpoint, client
    finally:
        server.stop()
