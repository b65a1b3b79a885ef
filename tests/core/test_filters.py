import polars as pl
import pytest

from mmprep import ConfigError, Pipeline

from .conftest import base_doc


def run_filters(run_pipeline, path, filters, tmp_path, name="o"):
    doc = base_doc(path)
    doc["datasets"][0]["filters"] = filters
    res = run_pipeline(doc, out=tmp_path / name)
    return pl.read_parquet(tmp_path / name / "pq" / "*.parquet"), res.manifest["datasets"]["laion"]


def test_each_filter_matches_polars(run_pipeline, table, tmp_path):
    src, path = table
    cases = [
        ({"type": "range", "column": "aesthetic", "min": 4, "max": 6}, src.filter(pl.col("aesthetic").is_between(4, 6)), "filter:range"),
        ({"type": "range", "column": "aesthetic", "min": 4, "strict": True}, src.filter(pl.col("aesthetic") > 4), "filter:range"),
        ({"type": "min-size", "min_size": 512}, src.filter((pl.col("width") >= 512) & (pl.col("height") >= 512)), "filter:min-size"),
        ({"type": "aesthetic", "cutoff": 5.67}, src.filter(pl.col("aesthetic") > 5.67), "filter:aesthetic"),
        ({"type": "not-null", "columns": ["caption"]}, src.filter(pl.col("caption").is_not_null()), "filter:not-null"),
        ({"type": "text-length", "min_chars": 17}, src.filter(pl.col("caption").str.len_chars() >= 17), "filter:text-length"),
        ({"type": "sql", "where": "width >= 512 AND aesthetic > 5.67"}, src.filter((pl.col("width") >= 512) & (pl.col("aesthetic") > 5.67)), "filter:sql"),
    ]
    for i, (f, expected, reason) in enumerate(cases):
        got, stats = run_filters(run_pipeline, path, [f], tmp_path, f"o{i}")
        assert got["image_path"].to_list() == expected["url"].to_list(), f
        assert stats["filtered"] == {reason: src.height - expected.height}


def test_filters_count_sequentially(run_pipeline, table, tmp_path):
    src, path = table
    _, stats = run_filters(run_pipeline, path, [{"type": "aesthetic", "cutoff": 5}, {"type": "min-size", "min_size": 512}], tmp_path)
    a = src.filter(pl.col("aesthetic") > 5)
    b = a.filter((pl.col("width") >= 512) & (pl.col("height") >= 512))
    assert stats["filtered"] == {"filter:aesthetic": src.height - a.height, "filter:min-size": a.height - b.height}
    assert stats["planned"] == b.height


def test_max_list_length_and_dedup(run_pipeline, tmp_path):
    df = pl.DataFrame(
        {
            "input_paths": [["a"], ["a", "b", "c"], ["a", "b", "c", "d"], None, []],
            "caption": ["x", "y", "x", "z", "y"],
        }
    )
    df.write_parquet(tmp_path / "l.parquet")
    doc = {
        "datasets": [{"name": "e", "source": {"type": "parquet", "path": str(tmp_path / "l.parquet")},
                      "filters": [{"type": "max-list-length", "column": "input_paths", "value": 3}, {"type": "dedup", "columns": ["caption"]}]}],
        "write": [{"type": "parquet"}],
    }
    res = run_pipeline(doc)
    got = pl.read_parquet(tmp_path / "out" / "*.parquet")
    assert got["caption"].to_list() == ["x", "y", "z"]
    assert res.manifest["datasets"]["e"]["filtered"] == {"filter:max-list-length": 1, "duplicate": 1}


def test_missing_filter_column_is_plan_error(table, tmp_path):
    _, path = table
    doc = base_doc(path)
    doc["datasets"][0]["filters"] = [{"type": "aesthetic", "cutoff": 5, "column": "fltLaionAesthScore"}]
    p = Pipeline.from_dict(doc, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"datasets\[0\]\.filters\[0\] \(aesthetic\): column 'fltLaionAesthScore' not found"):
        p.run(out=str(tmp_path / "o"), quiet=True)
    assert not (tmp_path / "o").exists()


def test_bad_sql_is_config_error(table, tmp_path):
    _, path = table
    doc = base_doc(path)
    doc["datasets"][0]["filters"] = [{"type": "sql", "where": "width >>= AND"}]
    with pytest.raises(ConfigError, match=r"datasets\[0\]\.filters\[0\]\.where: invalid SQL"):
        Pipeline.from_dict(doc, base_dir=tmp_path)
