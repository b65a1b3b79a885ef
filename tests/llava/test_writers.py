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


def _edit_and_multi_image_data(tmp_path):
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    for i in range(6):
        (img_dir / f"{i}.jpg").write_bytes(_jpeg((i * 40, 10, 10), size=(96 + 8 * i, 64)))
    pl.DataFrame({
        "input_paths": [["0.jpg", "1.jpg"], ["2.jpg"], ["3.jpg", "missing.jpg"]],
        "output_paths": ["4.jpg", "5.jpg", "0.jpg"],
        "instruction": ["add a hat", "make it red", "remove the car"],
    }).write_parquet(tmp_path / "edit.parquet")
    pl.DataFrame({
        "image": [["1.jpg", "2.jpg", "3.jpg"], ["4.jpg"]],
        "conversations": [json.dumps([{"from": "human", "value": "<image><image><image> compare"}, {"from": "gpt", "value": "same"}]),
                          json.dumps([{"from": "human", "value": "<image> what"}, {"from": "gpt", "value": "a cat"}])],
    }).write_parquet(tmp_path / "multi.parquet")
    return img_dir


def _edit_doc(img_dir, write):
    return {
        "datasets": [
            {"name": "edit", "source": {"type": "parquet", "path": "edit.parquet"}},
            {"name": "multi", "source": {"type": "parquet", "path": "multi.parquet"}},
        ],
        "format": [{"type": "llava-edit", "datasets": ["edit"]}, {"type": "llava-multi-image", "datasets": ["multi"]}],
        # every image list is materialised: edit inputs, edit target (the main image), multi-image lists
        "media": {"root": str(img_dir), "path_column": "output_paths", "extra_image_columns": ["input_paths", "image"],
                  "size": 32, "resize": "center-crop"},
        "write": write,
        "run": {"samples_per_unit": 2},
    }


def test_list_valued_images_materialised_and_paths_rewritten(tmp_path):
    """Edit inputs/targets and multi-image lists come out of the media stage as files next to
    the payloads; every payload path points at one of them; a missing input rejects its row."""
    from PIL import Image

    img_dir = _edit_and_multi_image_data(tmp_path)
    doc = _edit_doc(img_dir, [{"type": "llava-jsonl", "merge": True, "by_dataset": True}])
    # the media stage needs a main image per row: give the multi-image rows one too
    pl.read_parquet(tmp_path / "multi.parquet").with_columns(pl.lit("4.jpg").alias("output_paths")).write_parquet(tmp_path / "multi.parquet")
    res = Pipeline.from_dict(doc, base_dir=tmp_path).run(out=str(tmp_path / "out"), quiet=True)
    check_accounting(res.manifest)
    assert res.manifest["datasets"]["edit"]["rejected"] == {"not_found": 1}
    ex = res.manifest["rejection_examples"]["not_found"][0]
    assert ex["message"].startswith("input_paths[1]: ")
    out = tmp_path / "out"
    edits = read_jsonl(out / "edit.jsonl")
    multi = read_jsonl(out / "multi.jsonl")
    assert len(edits) == 2 and len(multi) == 2
    images = out / "images"

    def check(path, size=(32, 32)):
        assert "mmprep-media://" not in path and path.startswith(str(images.resolve()) + "/"), path
        with Image.open(path) as im:
            assert im.size == size

    e0 = edits[0]
    assert [p.rsplit("/", 1)[1] for p in e0["image"]] == [f"{e0['id']}-input_paths-0.jpg", f"{e0['id']}-input_paths-1.jpg"]
    assert e0["image_gen_enc"] == e0["image"] and e0["image_gen"].endswith(f"/{e0['id']}.jpg")
    for e in edits:
        for p in [*e["image"], e["image_gen"]]:
            check(p)
    m0 = multi[0]
    assert [p.rsplit("/", 1)[1] for p in m0["image"]] == [f"{m0['id']}-image-{i}.jpg" for i in range(3)]
    for m in multi:
        for p in m["image"]:
            check(p)
    # the input image's pixels, not another's: 2.jpg is (80, 10, 10) red-ish
    with Image.open(edits[1]["image"][0]) as im:
        r, g, b = im.convert("RGB").getpixel((16, 16))
        assert abs(r - 80) < 12 and g < 24 and b < 24
    # every file under images/ is referenced by a payload (nothing of the rejected row is left)
    referenced = {p.rsplit("/", 1)[1] for e in edits for p in [*e["image"], e["image_gen"]]} | {p.rsplit("/", 1)[1] for m in multi for p in m["image"]}
    referenced |= {f"{m['id']}.jpg" for m in multi}  # multi rows' main image (their output_paths)
    assert {f.name for f in images.iterdir()} == referenced


def test_images_written_to_an_object_store(tmp_path):
    """images_url on a real S3-compatible server: payload paths are the s3:// URLs, the objects
    hold the materialised bytes, credentials are not stored."""
    from tests.conftest import moto_s3

    key_id, secret = "AKIAMMPREPLLAVA0001", "llava-secret-value-0123456789"
    with moto_s3(key_id, secret) as (endpoint, client):
        client.create_bucket(Bucket="llava-out")
        so = {"key": key_id, "secret": secret, "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
        img_dir = _edit_and_multi_image_data(tmp_path)
        doc = _edit_doc(img_dir, [{"type": "llava-json", "by_dataset": True, "images_url": "s3://llava-out/imgs/", "storage_options": so}])
        doc["datasets"] = doc["datasets"][:1]
        doc["format"] = doc["format"][:1]
        from mmprep import ConfigError

        with pytest.raises(ConfigError, match=r"media.extra_image_columns\[1\]: column 'image' not found in any dataset"):
            Pipeline.from_dict(doc, base_dir=tmp_path).run(out=str(tmp_path / "bad"), quiet=True)
        assert not (tmp_path / "bad").exists()
        doc["media"]["extra_image_columns"] = ["input_paths"]
        res = Pipeline.from_dict(doc, base_dir=tmp_path).run(out=str(tmp_path / "out"), quiet=True)
        check_accounting(res.manifest)
        out = tmp_path / "out"
        edits = json.loads((out / "edit.json").read_text())
        assert len(edits) == 2 and not (out / "images").exists()
        keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="llava-out")["Contents"])
        paths = sorted(p for e in edits for p in [*e["image"], e["image_gen"]])
        assert paths == [f"s3://llava-out/{k}" for k in keys] and len(keys) == 5
        body = client.get_object(Bucket="llava-out", Key=keys[0])["Body"].read()
        from PIL import Image

        assert Image.open(io.BytesIO(body)).size == (32, 32)
        stored = (out / "_mmprep" / "manifest.json").read_text() + (out / "_mmprep" / "run.json").read_text()
        assert secret not in stored
