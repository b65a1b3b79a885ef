import polars as pl
import pytest

from mmprep import ConfigError, Pipeline
from mmprep.builtins.formatters import CaptionCleanFormatter, TemplateFormatter


def test_template_vectorised_with_nulls():
    f = TemplateFormatter(TemplateFormatter.Options(column="p", template="A {caption} of {w}px {{literal}}"))
    df = pl.DataFrame({"caption": ["cat", None], "w": [5, 7]})
    assert f.format(df)["p"].to_list() == ["A cat of 5px {literal}", "A  of 7px {literal}"]
    f2 = TemplateFormatter(TemplateFormatter.Options(column="p", template="{caption}!", null=None))
    assert f2.format(df)["p"].to_list() == ["cat!", None]


def test_template_bad_spec_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"format\[0\]\.template"):
        Pipeline.from_dict(
            {"datasets": [{"name": "d", "source": {"type": "parquet", "path": "x.parquet"}}], "format": [{"type": "template", "column": "c", "template": "{a:>5}"}], "write": ["parquet"]},
            base_dir=tmp_path,
        )


def test_caption_clean():
    f = CaptionCleanFormatter(CaptionCleanFormatter.Options(max_chars=12, drop_empty=True))
    df = pl.DataFrame({"key": list("abcdef"), "caption": ["  cafe\u0301\u200b  bar\n\tbaz ", None, "nan", "a\x00b\ufeffc", "   ", "x" * 20]})
    out = f.format(df)
    assert out["caption"].to_list() == ["café bar baz", None, None, "abc", "", "x" * 12]
    assert out["_reject_reason"].to_list() == [None, "empty_caption", "empty_caption", None, "empty_caption", None]


def test_caption_clean_float_nan_column():
    f = CaptionCleanFormatter(CaptionCleanFormatter.Options())
    out = f.format(pl.DataFrame({"caption": [float("nan"), 1.5]}))
    assert out["caption"].to_list() == [None, "1.5"]
