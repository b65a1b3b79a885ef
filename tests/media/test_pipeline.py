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
