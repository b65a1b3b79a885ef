"""Payload validation: each rule rejects with reason llava_invalid and a message naming it."""

from __future__ import annotations

import polars as pl
import pytest

from mmprep import Context
from mmprep_llava import formatters as F


def tmpl(rows, turns, **opts):
    df = pl.DataFrame(rows)
    return F.TemplateFormatter(F.TemplateFormatter.Options(conversations=turns, **opts), Context()).format(df)


H = {"from": "human", "value": "{q}"}
G = {"from": "gpt", "value": "{a}"}


@pytest.mark.parametrize(
    "rows, turns, opts, rule",
    [
        ({"key": ["k"], "q": ["<image> x"], "a": ["y"], "img": [None]}, [H, G], {"image": "img"}, "image_tokens: 1 <image> token(s) in human turns but 0 image(s)"),
        ({"key": ["k"], "q": ["x"], "a": ["y"], "img": ["a.jpg"]}, [H, G], {"image": "img"}, "image_tokens: 0 <image> token(s) in human turns but 1 image(s)"),
        ({"key": ["k"], "q": ["<image><image>"], "a": ["y"], "img": [["a", "b", "c"]]}, [H, G], {"image": "img"}, "image_tokens: 2 <image> token(s) in human turns but 3 image(s)"),
        ({"key": ["k"], "q": ["x"], "a": ["y <image_gen>"]}, [H, G], {}, "image_gen: <image_gen> in the conversation but image_gen is not set"),
        ({"key": ["k"], "q": ["x"], "a": ["y"], "g": ["o.jpg"]}, [H, G], {"image_gen": "g"}, "image_gen: image_gen is set but no turn has <image_gen>"),
        ({"key": ["k"], "q": ["<image> <image_gen_enc>"], "a": ["<image_gen>"], "e": [["a", "b"]], "g": ["o"]}, [H, G],
         {"image": "e", "image_gen_enc": "e", "image_gen": "g"}, "image_tokens: 1 <image> token(s) in human turns but 2 image(s)"),
        ({"key": ["k"], "q": ["<image> <image_gen_enc>"], "a": ["<image_gen>"], "e": [["a", "b"]], "i": [["a"]], "g": ["o"]}, [H, G],
         {"image": "i", "image_gen_enc": "e", "image_gen": "g"}, "image_gen_enc: 1 <image_gen_enc> token(s) but 2 image_gen_enc image(s)"),
        ({"key": ["k"], "q": ["x"], "a": ["y"]}, [G, H], {}, "roles: turns [gpt,human] do not alternate human/gpt starting with human"),
        ({"key": ["k"], "q": ["x"], "a": ["y"]}, [H, H], {}, "roles: turns [human,human] do not alternate human/gpt starting with human"),
        ({"key": ["k"], "q": ["x"], "a": ["  "]}, [H, G], {}, "empty_value: a turn has an empty or null value"),
        ({"key": ["k"], "q": [None], "a": ["y"]}, [H, G], {}, "empty_value: a turn has an empty or null value"),
    ],
)
def test_rules(rows, turns, opts, rule):
    out = tmpl(rows, turns, **opts)
    assert out["_reject_reason"].to_list() == ["llava_invalid"]
    assert out["_reject_message"].to_list() == [rule]


def test_valid_rows_pass_and_mixed():
    rows = {"key": ["ok", "bad"], "q": ["<image> x", "x"], "a": ["y", "y"], "img": ["a.jpg", "b.jpg"]}
    out = tmpl(rows, [H, G], image="img")
    assert out["_reject_reason"].to_list() == [None, "llava_invalid"]
    assert out["_reject_message"][0] is None


def test_empty_conversation_and_existing_reasons_kept():
    df = pl.DataFrame({"key": ["a", "b"], "conversations": [[], [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]],
                       "_reject_reason": [None, "decode_error"], "_reject_message": [None, "broken"]},
                      schema_overrides={"conversations": pl.List(pl.Struct({"from": pl.String, "value": pl.String}))})
    out = F.PassthroughFormatter(F.PassthroughFormatter.Options(), Context()).format(df)
    assert out["_reject_reason"].to_list() == ["llava_invalid", "decode_error"]
    assert out["_reject_message"].to_list() == ["conversations: no turns", "broken"]


def test_validation_off():
    out = tmpl({"key": ["k"], "q": ["x"], "a": ["y"]}, [G, H], validate_payload=False)
    assert "_reject_reason" not in out.columns
