"""The formatter's fast paths give exactly what the plain polars / core code gives.

Per-key draws from one hash vs ``unit_floats`` per draw; JSON fragments vs
``struct.json_encode``; the byte scans vs exact tests; the sentence split vs ``re.split``;
whole payloads vs ``pl.struct(...).struct.json_encode()``.
"""

from __future__ import annotations

import json
import random
import re

import numpy as np
import polars as pl
import pytest

from mmprep import Context
from mmprep.hashing import unit_floats
from mmprep_llava import formatters as F
from mmprep_llava import payload as P
from mmprep_llava.scan import scan

ALPHABET = ["a", "Z", "0", "-", "_", "/", ".", "!", "?", " ", "  ", "\t", "\n", "\x00", "\x1f", '"', "\\", "<", "<image>",
            "<image_gen>", "é", "😀", "\u2028", "\xa0", "\x7f"]


def rand_strings(rng: random.Random, n: int, nulls: bool = False, max_parts: int = 12) -> list[str | None]:
    out = []
    for _ in range(n):
        if nulls and rng.random() < 0.15:
            out.append(None)
        else:
            out.append("".join(rng.choice(ALPHABET) for _ in range(rng.choice([0, 1, 2, 5, max_parts]))))
    return out


@pytest.mark.parametrize("case", range(8))
def test_key_draws_equal_unit_floats(case):
    rng = random.Random(case)
    if case == 0:
        vals = [f"t2i-{i:09d}" for i in range(500)]  # derived keys: one length
    elif case == 1:
        vals = [""] * 4  # no byte at all
    elif case == 2:
        vals = ["x" * i for i in range(300)]  # more distinct lengths than the Horner path takes
    else:
        vals = rand_strings(rng, rng.choice([1, 3, 200]), nulls=case % 2 == 0)
    s = pl.Series(vals, dtype=pl.String)
    for seed in (0, 7, 2**31 + 5):
        got = P.key_draws(s, seed, 3)
        for j, d in enumerate(got):
            np.testing.assert_array_equal(d, unit_floats(s, seed * 16 + j))


def _reference_json(s: pl.Series) -> list[str]:
    return [x[len('{"a":'):-1] for x in pl.select(pl.struct(s.alias("a")).struct.json_encode()).to_series().to_list()]


def _fragments_json(s: pl.Series, n: int) -> list[str]:
    return P._concat(P.json_fragments(s, n), n).to_list()


@pytest.mark.parametrize(
    "series",
    [
        pl.Series(rand_strings(random.Random(1), 300)),
        pl.Series(rand_strings(random.Random(2), 300, nulls=True)),
        pl.Series(["plain ascii", "ünïcode 😀", ""] * 20),
        pl.Series([1, -2, 3_000_000_000, 0], dtype=pl.Int64),
        pl.Series([1, 2, None], dtype=pl.Int32),
        pl.Series([5.5, -0.0, 1e-7, 3.4e38, 1e22, 0.1, 123456789.0], dtype=pl.Float64),
        pl.Series([5.5, 4.961201, 1e-30, 3e38], dtype=pl.Float32),
        pl.Series([1.5, float("nan"), float("inf")], dtype=pl.Float64),
        pl.Series([[4.25], [5.0], [1e-9]], dtype=pl.List(pl.Float32)),
        pl.Series([[4.25], [None], [1.0]], dtype=pl.List(pl.Float64)),
        pl.Series([[1.0, 2.0], [3.0], []], dtype=pl.List(pl.Float64)),
        pl.Series([["a", 'b"'], None, []], dtype=pl.List(pl.String)),
        pl.Series([True, False, None]),
        pl.Series([{"x": 1, "y": "a\n"}, {"x": None, "y": None}]),
        pl.Series([None, None], dtype=pl.Null),
    ],
)
def test_json_fragments_equal_struct_json_encode(series):
    assert _fragments_json(series, series.len()) == _reference_json(series)
    # a one-value series is a constant for a longer frame
    one = series.head(1)
    assert _fragments_json(one, 4) == _reference_json(one) * 4


def test_scan_masks_cover_the_exact_tests():
    s = pl.Series([x or "" for x in rand_strings(random.Random(3), 2000, max_parts=40)])
    sc = scan(s)
    exact_escape = s.str.contains(r'[\x00-\x1f"\\]').to_numpy()
    exact_lt = s.str.contains("<", literal=True).to_numpy()
    exact_blank = (s.str.strip_chars().str.len_chars() == 0).to_numpy()
    assert not (exact_escape & ~sc.escape).any()
    assert not (exact_lt & ~sc.tokens).any()
    assert not (exact_blank & ~sc.blank).any()
    assert sc.escape.sum() < len(s)  # they do narrow


def test_sentence_split_equals_re_split():
    rng = random.Random(4)
    caps = ["".join(rng.choice(["Word", "word", ". ", ".  ", "! ", "?   ", ".", " ", "\t", "é", "\x00 ", "?!  "]) for _ in range(rng.randint(0, 30)))
            for _ in range(1500)]
    for subset in (caps, [c for c in caps if "\x00" not in c]):  # with and without the marker byte
        got = F._split_sentences(pl.Series(subset)).to_list()
        assert got == [re.split(r"(?<=[.!?]) +", c.strip()) for c in subset]


def _old_finish_json(df: pl.DataFrame, fields: dict, optional: tuple[str, ...]) -> list[str]:
    """The payload as one struct json_encode (what the formatters wrote before the fast paths)."""
    exprs = {}
    for name, e in fields.items():
        if isinstance(e, P.Conversation):
            e = pl.concat_list([pl.struct(pl.lit(r).alias("from"), v.cast(pl.String).alias("value")) for r, v in e.turns])
        exprs[name] = e
    payload = df.with_columns([e.alias(f"__{n}") for n, e in exprs.items()]).select(
        pl.struct([pl.col(f"__{n}").alias(n) for n in exprs]).struct.json_encode()
    ).to_series()
    for n in optional:
        payload = payload.str.replace_all(f',"{n}":null', "", literal=True)
    return payload.to_list()


def test_payloads_equal_one_struct_json_encode():
    rng = random.Random(5)
    n = 400
    df = pl.DataFrame(
        {
            "key": [f"k-{i}" for i in range(n)],
            "q": rand_strings(rng, n, nulls=True),
            "a": rand_strings(rng, n),
            "img": [rng.choice([None, "a.jpg", 'we"ird\n.png']) for _ in range(n)],
            "score": [rng.choice([None, 1.5, 2.0]) for _ in range(n)],
            "tags": [rng.choice([None, [], ["x"], ["y", "z"]]) for _ in range(n)],
        }
    )
    fields = {
        "id": pl.col("key"),
        "image": pl.col("img"),
        "conversations": P.Conversation((("human", pl.concat_str([pl.lit("<image>\n"), pl.col("q")])), ("gpt", pl.col("a")), ("human", pl.lit("more?")))),
        "flag": pl.lit(True),
        "score": pl.concat_list([pl.col("score")]),
        "tags": pl.col("tags"),
    }
    out = P.finish(df, fields, column="llava", optional=("image", "tags"))
    assert out["llava"].to_list() == _old_finish_json(df, fields, ("image", "tags"))
    for line in out["llava"].to_list():
        json.loads(line)
    # validation: the same messages as the list-column path on the same conversations
    conv = pl.concat_list([pl.struct(pl.lit(r).alias("from"), v.cast(pl.String).alias("value")) for r, v in fields["conversations"].turns])
    as_list = P.finish(df, {**fields, "conversations": conv}, column="llava", optional=("image", "tags"))
    assert out["_reject_message"].to_list() == as_list["_reject_message"].to_list()
    assert out["_reject_reason"].to_list() == as_list["_reject_reason"].to_list()
    assert 0 < out["_reject_reason"].null_count() < n  # both valid and invalid rows occur


def test_empty_frame_and_constant_only_fields():
    df = pl.DataFrame({"key": pl.Series([], dtype=pl.String)})
    fields = {"id": pl.lit("c"), "conversations": P.Conversation((("human", pl.lit("q")), ("gpt", pl.lit("a"))))}
    out = P.finish(df, fields, column="llava")
    assert out.height == 0 and out["llava"].dtype == pl.String
    df = pl.DataFrame({"key": ["a", "b"]})
    out = P.finish(df, fields, column="llava")
    assert out["llava"].to_list() == ['{"id":"c","conversations":[{"from":"human","value":"q"},{"from":"gpt","value":"a"}]}'] * 2
    assert out["_reject_reason"].to_list() == [None, None]


def test_t2i_key_draws_from_one_hash(monkeypatch):
    """The t2i formatter hashes each key once (not once per draw)."""
    import mmprep_llava.payload as payload_mod

    calls = []
    real = payload_mod.hash_strings
    monkeypatch.setattr(payload_mod, "hash_strings", lambda *a, **k: calls.append(1) or real(*a, **k))
    df = pl.DataFrame({"key": [f"k{i}" for i in range(50)], "s3_path": ["p"] * 50, "caption": ["A cat. " * 30] * 50})
    F.T2IFormatter(F.T2IFormatter.Options(random_caption_keys=["caption"]), Context()).format(df)
    assert calls == []  # the pre-mix state comes straight from the bytes (Horner), no hash_strings call
