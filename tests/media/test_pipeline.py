"""The media stage inside real pipeline runs (engine, built-in parquet writer, worker processes)."""

from __future__ import annotations

import io

import polars as pl
import pytest
from PIL import Image

from mmprep import ConfigError, Pipeline

from .conftest import jpeg


def _data(tmp_path, bad_inputs):
    img = tmp_path / "imgs"
    img.mkdir()
    names = {"a.jpg": jpeg(800, 600, 1), "b.jpg": jpeg(300, 900, 2), "c.jpg": bad_inputs["truncated_jpeg"], "d.jpg": bad_inputs["html_as_jpg"], "e.png": bad_inputs["one_pixel"]}
    for n, b in names.items():
        (img / n).write_bytes(b)
    paths = list(names) + ["nope.jpg"]
    pl.DataFrame({"path": paths, "caption": [f"c {p}" for p in paths]}).write_parquet(tmp_path / "t.parquet")


@pytest.mark.parametrize("workers", [1, 2])
def test_pipeline_with_media(tmp_path, bad_inputs, run_pipeline, workers):
    _data(tmp_path, bad_inputs)
    doc = {
        "datasets": [{"name": "d", "source": {"type": "parquet", "path": "t.parquet", "rename": {"path": "image_path"}}}],
        "media": {"root": "imgs", "min_size": 16, "size": 128, "resize": "center-crop"},
        "write": [{"type": "parquet", "path": "pq"}],
        "run": {"workers": workers, "samples_per_unit": 3},
    }
    res = run_pipeline(doc, out=tmp_path / f"out{workers}")
    d = res.manifest["datasets"]["d"]
    assert d["written"] == 2
    assert d["rejected"] == {"decode_error": 1, "not_an_image": 1, "not_found": 1, "too_small": 1}
    df = pl.read_parquet(sorted((tmp_path / f"out{workers}" / "pq").glob("*.parquet"))).sort("caption")
    assert df["width"].to_list() == [800, 300] and df["height"].to_list() == [600, 900]
    assert [Image.open(io.BytesIO(b)).size for b in df["image_bytes"]] == [(128, 128)] * 2
    assert "_reject_reason" not in df.columns
    assert res.manifest["config"]["media"]["resize"] == "center-crop"


def test_bad_media_options_are_config_errors(tmp_path):
    doc = {
        "datasets": [{"name": "d", "source": {"type": "parquet", "path": "t.parquet"}}],
        "media": {"size": -3, "bogus": 1},
        "write": [{"type": "parquet", "path": "pq"}],
    }
    pl.DataFrame({"image_path": ["x"]}).write_parquet(tmp_path / "t.parquet")
    with pytest.raises(ConfigError) as e:
        Pipeline.from_dict(doc, base_dir=tmp_path)
    text = str(e.value)
    assert "media.size" in text and "media.bogus: unknown option" in text


def test_extra_image_columns_lists_and_single_paths(tmp_path, bad_inputs):
    """extra_image_columns: lists (and JSON-encoded lists) and single paths are materialised with
    the main image's policy into <col>_bytes; one bad image rejects its row, named by position."""
    from mmprep import Context
    from mmprep.media import MediaStage

    img = tmp_path / "imgs"
    img.mkdir()
    for i in range(4):
        (img / f"{i}.jpg").write_bytes(jpeg(400 + 40 * i, 300, i))
    (img / "bad.jpg").write_bytes(bad_inputs["truncated_jpeg"])
    df = pl.DataFrame({
        "key": ["r0", "r1", "r2", "r3", "r4", "r5"],
        "image_path": ["0.jpg", "1.jpg", "2.jpg", "3.jpg", "0.jpg", "nope.jpg"],
        "inputs": [["1.jpg", "2.jpg"], [], None, ["0.jpg", "bad.jpg"], ["3.jpg", None], ["1.jpg"]],
        "target": ["3.jpg", None, "0.jpg", "1.jpg", "2.jpg", "2.jpg"],
        "json_inputs": ['["1.jpg", "3.jpg"]', "2.jpg", None, "0.jpg", "0.jpg", "0.jpg"],
    })
    stage = MediaStage.from_config({"root": str(img), "size": 128, "extra_image_columns": ["inputs", "target", "json_inputs"]}, Context(base_dir=tmp_path))
    assert stage.required_columns() == ["inputs", "target", "json_inputs"]
    out = stage.process(df)
    assert out.schema["inputs_media"] == pl.List(pl.Binary) and out.schema["target_media"] == pl.Binary
    assert out.schema["json_inputs_media"] == pl.List(pl.Binary)
    assert out["_reject_reason"].to_list() == [None, None, None, "decode_error", "missing_image", "not_found"]
    assert out["_reject_message"][3].startswith("inputs[1]: ") and out["_reject_message"][4].startswith("inputs[1]: ")
    ok = out.filter(pl.col("_reject_reason").is_null())
    sizes = lambda bs: [Image.open(io.BytesIO(b)).size for b in bs]  # noqa: E731
    assert sizes(ok["inputs_media"][0]) == [(188, 128), (205, 128)]  # shorter side 128, order kept
    assert ok["inputs_media"][1].to_list() == [] and ok["inputs_media"][2] is None
    assert sizes([ok["target_media"][0], ok["target_media"][2]]) == [(222, 128), (171, 128)] and ok["target_media"][1] is None
    assert sizes(ok["json_inputs_media"][0]) == [(188, 128), (222, 128)] and len(ok["json_inputs_media"][1]) == 1
    # main 6; then only rows still accepted: inputs 2 + 2 + 1 (r4's null fails unfetched), target 2, json 2 + 1
    assert stage.last_stats["fetched"] == 6 + 5 + 2 + 3
    with pytest.raises(Exception, match="main image"):
        MediaStage.from_config({"extra_image_columns": ["image_path"]})
