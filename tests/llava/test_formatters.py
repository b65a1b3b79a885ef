"""Each llava formatter against hand-computed payloads, plus the t2i reference on random data."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from llava_helpers import MICRO, ref_t2i, t2i_rows

from mmprep import Context
from mmprep.hashing import unit_floats
from mmprep_llava import formatters as F


def run(cls, df, seed=0, **opts):
    return cls(cls.Options(**opts), Context(seed=seed)).format(df)


def payloads(df, col="llava"):
    return [json.loads(s) for s in df[col].to_list()]


def test_t2i_exact_short_caption():
    df = pl.DataFrame({"key": ["d-000001"], "s3_path": ["s3://b/x.jpg"], "caption": ["A dog."], "fltLaionAesthScore": [5.5], "hpsv2": [0.25]})
    out = run(F.T2IFormatter, df)
    assert payloads(out) == [
        {
            "id": "d-000001",
            "image_gen": "s3://b/x.jpg",
            "conversations": [
                {"from": "human", "value": "Generate an image with the caption: A dog. [[micro_conds_texts]]"},
                {"from": "gpt", "value": "Sure <image_gen>"},
            ],
            "gen_score": [5.5],
            "hpsv2": [0.25],
        }
    ]
    assert out["_reject_reason"].to_list() == [None]
    # key order as in LaViDa-O's dict literal
    assert list(json.loads(out["llava"][0])) == ["id", "image_gen", "conversations", "gen_score", "hpsv2"]


def test_t2i_constant_id_no_micro_no_scores():
    df = pl.DataFrame({"key": ["k"], "s3_path": ["p.jpg"], "caption": ["x"]})
    p = payloads(run(F.T2IFormatter, df, id="constant", micro_conditions=False))[0]
    assert p == {"id": "000951660", "image_gen": "p.jpg", "conversations": [
        {"from": "human", "value": "Generate an image with the caption: x"}, {"from": "gpt", "value": "Sure <image_gen>"}]}


def test_t2i_truncation_forced_and_max_chars():
    cap = "One two three. Four five six!  Seven eight? Nine ten eleven. " * 4
    df = pl.DataFrame({"key": ["k1"], "s3_path": ["p"], "caption": [cap]})
    u_k = unit_floats(df["key"], seed=2)[0]  # seed*16 + 2 = the k draw at seed 0
    sentences = ["One two three.", "Four five six!", "Seven eight?", "Nine ten eleven."] * 4
    k = int(u_k * len(sentences)) + 1
    expected = " ".join(sentences[:k])
    p = payloads(run(F.T2IFormatter, df, truncate_probability=1.0))[0]
    assert p["conversations"][0]["value"] == f"Generate an image with the caption: {expected} {MICRO}"
    p = payloads(run(F.T2IFormatter, df, truncate_probability=0.0, max_caption_chars=10))[0]
    assert p["conversations"][0]["value"] == f"Generate an image with the caption: {cap[:10]} {MICRO}"
    # not truncated: random_truncate off, or the key listed in no_drop_keys (priority)
    for opts in ({"random_truncate": False}, {"no_drop_keys": ["caption"]}):
        p = payloads(run(F.T2IFormatter, df, truncate_probability=1.0, max_caption_chars=None, **opts))[0]
        assert p["conversations"][0]["value"] == f"Generate an image with the caption: {cap} {MICRO}"
    p = payloads(run(F.T2IFormatter, df, truncate_probability=1.0, random_truncate=False, no_drop_keys=[]))[0]
    assert p["conversations"][0]["value"] != f"Generate an image with the caption: {cap[:800]} {MICRO}"


def test_max_cap_length_env(monkeypatch):
    monkeypatch.setenv("MAX_CAP_LENGTH", "5")
    assert F.T2IFormatter.Options().max_caption_chars == 5
    monkeypatch.delenv("MAX_CAP_LENGTH")
    assert F.T2IFormatter.Options().max_caption_chars == 800


@pytest.mark.parametrize("opts", [{}, {"random_caption_keys": ["caption", "llava_next_caption"]},
                                  {"random_caption_keys": ["caption", "llava_next_caption"], "no_drop_keys": ["llava_next_caption"]},
                                  {"max_caption_chars": 120}])
def test_t2i_matches_per_row_reference(opts):
    df = t2i_rows(400, seed=3)
    out = run(F.T2IFormatter, df, seed=7, **opts)
    draws = list(zip(*(unit_floats(df["key"], seed=7 * 16 + j) for j in range(3))))
    ref_opts = {k: v for k, v in opts.items() if k in ("random_caption_keys", "no_drop_keys")}
    ref = [
        ref_t2i({k: v for k, v in row.items() if k not in ("dataset", "intWidth", "intHeight")}, draws[i], max_len=opts.get("max_caption_chars", 800), **ref_opts)
        for i, row in enumerate(df.iter_rows(named=True))
    ]
    got = payloads(out)
    assert got == ref
    truncated = sum(1 for g, r in zip(got, df["caption"]) if r not in g["conversations"][0]["value"])
    assert truncated > 0  # some rows really were truncated / switched


def test_t2i_hash():
    df = pl.DataFrame({"key": ["h"], "strImagehash": ["abc123"], "longLLA_captions": ["Blue sky."]})
    p = payloads(run(F.T2IHashFormatter, df))[0]
    assert p["image_gen"] == "piat://abc123"
    assert p["conversations"][0]["value"] == f"Generate an image with the caption: Blue sky. {MICRO}"
    assert payloads(run(F.T2IHashFormatter, df, image_prefix="hash://"))[0]["image_gen"] == "hash://abc123"


def test_grounded_caption_and_rec():
    df = pl.DataFrame({"key": ["g"], "s3_path": ["s3://i.jpg"], "loc_caption": ["A <LOC_1> cat"], "label": ["the cat"], "loc_string": ["<LOC_3>"]})
    assert payloads(run(F.GroundedCaptionFormatter, df, id="constant"))[0] == {
        "id": "000951660", "image": "s3://i.jpg", "conversations": [
            {"from": "human", "value": "<image>\n Generate a dense image caption with bounding boxes in LOC format."},
            {"from": "gpt", "value": "A <LOC_1> cat"}]}
    assert payloads(run(F.RecFormatter, df))[0] == {
        "id": "g", "image": "s3://i.jpg", "conversations": [
            {"from": "human", "value": "<image>\n Please locate the cat in this image. Give bounding boxes in LOC format."},
            {"from": "gpt", "value": "<LOC_3>"}]}


def test_understanding_json_string_and_list_column():
    conv = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A cat."}]
    text_only = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]
    df = pl.DataFrame({"key": ["u1", "u2", "u3"], "image": ["a/1.jpg", None, "/abs/3.jpg"],
                       "conversations": [json.dumps(conv), json.dumps(text_only), json.dumps(conv)]})
    got = payloads(run(F.UnderstandingFormatter, df, s3_prefix="s3://pre"))
    assert got == [
        {"id": "u1", "conversations": conv, "image": "s3://pre/a/1.jpg"},
        {"id": "u2", "conversations": text_only},  # no image key at all (LaViDa-O: only when not None)
        {"id": "u3", "conversations": conv, "image": "/abs/3.jpg"},  # os.path.join keeps absolute paths
    ]
    df2 = df.with_columns(pl.col("conversations").str.json_decode(pl.List(pl.Struct({"from": pl.String, "value": pl.String}))))
    assert payloads(run(F.UnderstandingFormatter, df2, s3_prefix="s3://pre")) == got


def test_multi_image_reasoning_suffix():
    long_answer = " ".join(["word"] * 151)
    rows = {
        "key": ["m1", "m2"],
        "image": [["a.jpg", "b.jpg"], ["c.jpg"]],
        "conversations": [
            [{"from": "human", "value": "<image><image> compare"}, {"from": "gpt", "value": long_answer}],
            [{"from": "human", "value": "<image> what"}, {"from": "gpt", "value": " ".join(["w"] * 150)}],
        ],
    }
    got = payloads(run(F.MultiImageFormatter, pl.DataFrame(rows), s3_prefix="s3://p/"))
    assert got[0] == {"id": "m1", "conversations": [
        {"from": "human", "value": "<image><image> compare\n Please also perform detailed reasoning for this problem and provide detailed reasoning traces."},
        {"from": "gpt", "value": long_answer}], "image": ["s3://p/a.jpg", "s3://p/b.jpg"]}
    assert got[1]["conversations"][0]["value"] == "<image> what"  # 150 words: not more than 150
    assert got[1]["image"] == ["s3://p/c.jpg"]


def test_edit_presets():
    df = pl.DataFrame({"key": ["e"], "input_paths": [["in1.png", "in2.png"]], "output_paths": ["out.png"], "instruction": ["add a hat"], "hpsv2": [0.5]})
    p = payloads(run(F.EditFormatter, df, s3_prefix="s3://ed"))[0]
    assert p == {
        "id": "e", "image_gen_enc": ["s3://ed/in1.png", "s3://ed/in2.png"], "image": ["s3://ed/in1.png", "s3://ed/in2.png"],
        "image_gen": "s3://ed/out.png", "pad_image_gen": True, "pixel_diff": False,
        "conversations": [{"from": "human", "value": "<image> <image_gen_enc> <image> <image_gen_enc>  add a hat"},
                          {"from": "gpt", "value": "Sure <image_gen>"}],
        "reweight": False, "hpsv2": [0.5]}
    assert list(p) == ["id", "image_gen_enc", "image", "image_gen", "pad_image_gen", "pixel_diff", "conversations", "reweight", "hpsv2"]
    # sharegpt_4o preset: single string input, t2i micro, no pixel_diff / hpsv2 fields
    name, defaults = F.ALIASES["process_sharegpt_4o_edit"]
    df2 = pl.DataFrame({"key": ["s"], "input_image": ["x.jpg"], "output_image": ["y.jpg"], "input_prompt": ["make it red"]})
    p2 = payloads(run(F.EditFormatter, df2, t2i=True, reweight=True, **defaults))[0]
    assert p2 == {"id": "s", "image_gen_enc": ["x.jpg"], "image": ["x.jpg"], "image_gen": "y.jpg", "pad_image_gen": True,
                  "conversations": [{"from": "human", "value": f"<image> <image_gen_enc>  make it red {MICRO}"},
                                    {"from": "gpt", "value": "Sure <image_gen>"}], "reweight": True}


def test_template_generic():
    df = pl.DataFrame({"key": ["t"], "img": ["x.jpg"], "q": ["why?"], "a": ["because"], "score": [3]})
    out = run(F.TemplateFormatter, df, image="img", image_prefix="/data", extra={"score": "score"},
              conversations=[{"from": "human", "value": "<image>\n{q}"}, {"from": "gpt", "value": "A: {a}"}])
    assert payloads(out)[0] == {"id": "t", "image": "/data/x.jpg", "conversations": [
        {"from": "human", "value": "<image>\nwhy?"}, {"from": "gpt", "value": "A: because"}], "score": 3}


def test_passthrough_drops_absent_fields():
    df = pl.DataFrame({"key": ["p1", "p2"], "dataset": ["d", "d"], "id": ["x", "y"], "image": ["a.jpg", None],
                       "conversations": [[{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}],
                                         [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]]})
    got = payloads(run(F.PassthroughFormatter, df))
    assert got == [{"id": "p1", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]},
                   {"id": "p2", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}]
    assert [p["id"] for p in payloads(run(F.PassthroughFormatter, df, keep_id=True))] == ["x", "y"]


def test_image_root_and_dataset_restriction():
    df = pl.DataFrame({"key": ["a", "b", "c"], "dataset": ["x", "x", "y"], "image": ["r/1.jpg", "/abs/2.jpg", "r/3.jpg"]})
    out = run(F.ImageRootFormatter, df, root="/imgs", datasets=["x"])
    assert out["image"].to_list() == ["/imgs/r/1.jpg", "/abs/2.jpg", "r/3.jpg"]
    # a formatter restricted to one dataset formats only its rows and keeps the order
    df2 = t2i_rows(4).with_columns(pl.Series("dataset", ["x", "y", "x", "y"]))
    out2 = run(F.T2IFormatter, df2, datasets=["x"])
    assert out2["key"].to_list() == df2["key"].to_list()
    assert [v is None for v in out2["llava"].to_list()] == [False, True, False, True]
    assert run(F.T2IFormatter, df2, datasets=["z"]).equals(df2)
