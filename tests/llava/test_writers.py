"""llava-jsonl / llava-json writers, payloads through the core parquet writer, media materialisation."""

from __future__ import annotations

import io
import json

import polars as pl
import pytest
from llava_helpers import read_jsonl, t2i_rows

from mmprep import Pipeline


def check_accounting(manifest):
    for name, d in manifest["datasets"].items():
        assert d["planned"] == d["written"] + sum(d["rejected"].values()), name


def pipeline(tmp_path, write, n=50, extra_rows=None, **fmt):
    src = t2i_rows(n, seed=5).drop("key", "dataset")
    if extra_rows is not None:
        src = pl.concat([src, extra_rows], how="diagonal_relaxed")
    src.write_parquet(tmp_path / "in.parquet")
    doc = {
        "datasets": [{"name": "t", "source": {"type": "parquet", "path": "in.parquet"}}],
        "format": [{"type": "llava-t2i", **fmt}],
        "write": write,
        "run": {"samples_per_unit": 16},
    }
    return Pipeline.from_dict(doc, base_dir=tmp_path), src


def test_jsonl_parts_json_list_and_parquet_column(tmp_path):
    bad = pl.DataFrame({"s3_path": [None], "caption": ["no image"]})
    p, src = pipeline(tmp_path, ["llava-jsonl", {"type": "llava-json", "path": "json"}, {"type": "parquet", "path": "pq", "columns": ["key", "llava"]}],
                      extra_rows=bad)
    res = p.run(out=str(tmp_path / "out"), quiet=True)
    m = res.manifest
    check_accounting(m)
    assert m["datasets"]["t"]["rejected"] == {"llava_invalid": 1}
    ex = m["rejection_examples"]["llava_invalid"][0]
    assert ex["key"].endswith("050") and ex["message"].startswith("image_gen:")
    out = tmp_path / "out"
    parts = sorted(out.glob("part-*.jsonl"))
    assert [f.name for f in parts] == [f"part-t-{i:05d}.jsonl" for i in range(4)]
    lines = [x for f in parts for x in read_jsonl(f)]
    assert len(lines) == 50 and [int(x["id"].split("-")[1]) for x in lines] == list(range(50))
    doc = json.loads((out / "json" / "data.json").read_text())
    assert doc == lines
    pq = pl.read_parquet(out / "pq" / "*.parquet")
    assert [json.loads(s) for s in pq.sort("key")["llava"]] == lines
    # finalize again: same bytes (idempotent)
    before = (out / "json" / "data.json").read_bytes()
    from mmprep.engine import finalize, verify

    finalize(out)
    assert (out / "json" / "data.json").read_bytes() == before
    assert verify(out) == [], verify(out)
    (out / "json" / "data.json").write_text("[{}")
    assert any("data.json" in prob for prob in verify(out))


def test_jsonl_merge_and_by_dataset(tmp_path):
    p, _ = pipeline(tmp_path, [{"type": "llava-jsonl", "merge": True, "by_dataset": True}])
    p.run(out=str(tmp_path / "out"), quiet=True)
    out = tmp_path / "out"
    assert sorted(f.name for f in (out / "t").iterdir()) == [f"part-t-{i:05d}.jsonl" for i in range(4)]
    assert [int(x["id"].split("-")[1]) for x in read_jsonl(out / "t.jsonl")] == list(range(50))


def test_json_writer_indent(tmp_path):
    p, _ = pipeline(tmp_path, [{"type": "llava-json", "indent": 2}], n=5)
    p.run(out=str(tmp_path / "out"), quiet=True)
    text = (tmp_path / "out" / "data.json").read_text()
    assert "\n  {" in text or "\n{\n  " in text
    assert len(json.loads(text)) == 5


def _jpeg(color, size=(48, 40)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def test_media_images_materialised(tmp_path):
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    n = 6
    for i in range(n):
        (img_dir / f"{i}.jpg").write_bytes(_jpeg((i * 40, 10, 10)))
    src = t2i_rows(n, seed=2).drop("key", "dataset").with_columns(pl.Series("s3_path", [f"imgs/{i}.jpg" for i in range(n)]))
    src.write_parquet(tmp_path / "in.parquet")
    doc = {
        "datasets": [{"name": "m", "source": {"type": "parquet", "path": "in.parquet"}}],
        "media": {"path_column": "s3_path"},
        "format": [{"type": "llava-t2i"}],
        "write": [{"type": "llava-jsonl", "merge": True}],
    }
    res = Pipeline.from_dict(doc, base_dir=tmp_path).run(out=str(tmp_path / "out"), quiet=True)
    check_accounting(res.manifest)
    out = tmp_path / "out"
    rows = read_jsonl(out / "data.jsonl")
    assert len(rows) == n
    from PIL import Image

    for r in rows:
        path = r["image_gen"]
        assert "mmprep-media://" not in path and path.endswith(f"{r['id']}.jpg")
        f = out / path if not path.startswith("/") else __import__("pathlib").Path(path)
        assert f.exists() and f.parent.name == "images"
        Image.open(f).verify()
