"""A real S3-compatible server (moto, server mode) on loopback holding a parquet and its images."""

from __future__ import annotations

import io
import json

import polars as pl
import pytest
from PIL import Image

from mmprep import Context
from mmprep.media import MediaStage

from ..conftest import moto_s3
from .conftest import jpeg

KEY_ID = "AKIAMMPREPTESTKEY01"
SECRET = "mmprep-super-secret-value-0123456789"
BUCKET = "media-bucket"


@pytest.fixture(scope="module")
def s3():
    with moto_s3(KEY_ID, SECRET) as (endpoint, client):
        yield _fill(endpoint, client)


def _fill(endpoint, client):
    client.create_bucket(Bucket=BUCKET)
    images = {f"imgs/{i}.jpg": jpeg(200 + 40 * i, 160, seed=i) for i in range(4)}
    images["imgs/broken.jpg"] = images["imgs/0.jpg"][:300]
    for k, v in images.items():
        client.put_object(Bucket=BUCKET, Key=k, Body=v)
    table = pl.DataFrame(
        {
            "url": [f"s3://{BUCKET}/{k}" for k in images] + [f"s3://{BUCKET}/imgs/missing.jpg"],
            "text": [f"caption {i}" for i in range(len(images) + 1)],
        }
    )
    buf = io.BytesIO()
    table.write_parquet(buf)
    client.put_object(Bucket=BUCKET, Key="table/part-0.parquet", Body=buf.getvalue())
    storage = {"key": KEY_ID, "secret": SECRET, "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    return {"endpoint": endpoint, "storage_options": storage, "images": images, "table": table}


def test_process_reads_s3_urls(s3):
    stage = MediaStage.from_config({"storage_options": s3["storage_options"], "size": 128, "retries": 0}, Context())
    df = s3["table"].rename({"url": "image_path"}).with_row_index("key").with_columns(pl.col("key").cast(pl.String))
    out = stage.process(df)
    assert out["_reject_reason"].to_list() == [None, None, None, None, "decode_error", "not_found"]
    kept = out.filter(pl.col("_reject_reason").is_null())
    assert kept["width"].to_list() == [200, 240, 280, 320]
    assert kept["stored_height"].to_list() == [128] * 4
    for b in kept["image_bytes"]:
        assert Image.open(io.BytesIO(b)).height == 128
    text = " ".join(m for m in out["_reject_message"].to_list() if m)
    assert SECRET not in text and KEY_ID not in text


def test_wrong_credentials_never_leak(s3):
    # moto accepts any key by default; a wrong endpoint gives a connection error message to check
    so = {
        "key": KEY_ID,
        "secret": SECRET,
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1"},
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
        "retries": 1,
    }
    stage = MediaStage.from_config({"storage_options": so, "retries": 0}, Context())
    out = stage.process(pl.DataFrame({"key": ["a"], "image_path": [f"s3://{BUCKET}/imgs/1.jpg"]}))
    assert out["_reject_reason"][0] in ("connection_error", "timeout")
    assert SECRET not in out["_reject_message"][0] and KEY_ID not in out["_reject_message"][0]
    assert SECRET not in json.dumps(stage.options.model_dump(mode="json"))


def test_pipeline_end_to_end_from_s3(s3, tmp_path, run_pipeline):
    pytest.importorskip("mmprep.engine")
    doc = {
        "datasets": [
            {
                "name": "s3set",
                "source": {
                    "type": "parquet",
                    "path": f"s3://{BUCKET}/table/*.parquet",
                    "storage_options": s3["storage_options"],
                    "rename": {"url": "image_path", "text": "caption"},
                },
            }
        ],
        "media": {"storage_options": s3["storage_options"], "size": 96, "retries": 0, "hash": "sha256"},
        "write": [{"type": "parquet", "path": "pq"}],
        "run": {"samples_per_unit": 4},
    }
    res = run_pipeline(doc, out=tmp_path / "out")
    m = res.manifest
    ds = m["datasets"]["s3set"]
    assert ds["planned"] == 6 and ds["written"] == 4
    assert ds["rejected"] == {"decode_error": 1, "not_found": 1}
    written = pl.read_parquet(sorted((tmp_path / "out" / "pq").glob("*.parquet")))
    assert sorted(written["caption"].to_list()) == [f"caption {i}" for i in range(4)]
    assert written["stored_height"].to_list() == [96] * 4
    assert set(written["width"].to_list()) == {200, 240, 280, 320}
    assert written["sha256"].str.len_chars().to_list() == [64] * 4
    # the media section of the manifest never holds the credentials
    media_text = json.dumps(m["config"]["media"])
    assert SECRET not in media_text and KEY_ID not in media_text
    assert m["config"]["media"]["storage_options"]["client_kwargs"]["endpoint_url"] == s3["endpoint"]
    examples = json.dumps(m.get("datasets"))
    assert SECRET not in examples
