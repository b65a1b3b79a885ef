"""Helpers and a per-row reference of LaViDa-O's text-to-image function for tests/llava."""

from __future__ import annotations

import json
import os
import random
import re

import polars as pl

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MICRO = "[[micro_conds_texts]]"
WORDS = "a red cat sits on the old mat near one tall green tree by the lake".split()


def ref_select_sentences(caption: str, u: float) -> str:
    """LaViDa-O randomly_select_sentences with k drawn from u instead of random.randint."""
    sentences = re.split(r"(?<=[.!?]) +", caption.strip())
    k = int(u * len(sentences)) + 1
    return " ".join(sentences[:k])


def ref_t2i(row: dict, draws: tuple[float, float, float], caption_key="caption", random_caption_keys=None,
            no_drop_keys=None, random_truncate=True, max_len=800, image_key="s3_path", prefix="", id_="key"):
    """LaViDa-O preproces_text_to_image_generation_s3, per row, with the per-key draws."""
    u_key, u_trunc, u_k = draws
    if random_caption_keys is not None:
        caption_key = random_caption_keys[min(int(u_key * len(random_caption_keys)), len(random_caption_keys) - 1)]
    caption = row[caption_key]
    do = random_truncate
    if no_drop_keys is not None:
        do = caption_key not in no_drop_keys
    if u_trunc < 0.2 and len(caption) > 150 and do:
        caption = ref_select_sentences(caption, u_k)
    caption = caption[:max_len]
    p = {
        "id": row["key"] if id_ == "key" else "000951660",
        "image_gen": prefix + row[image_key],
        "conversations": [
            {"from": "human", "value": f"Generate an image with the caption: {caption} {MICRO}"},
            {"from": "gpt", "value": "Sure <image_gen>"},
        ],
    }
    if "fltLaionAesthScore" in row:
        p["gen_score"] = [row["fltLaionAesthScore"]]
    if "hpsv2" in row:
        p["hpsv2"] = [row["hpsv2"]]
    return p


def make_caption(rng: random.Random, long: bool) -> str:
    n_sent = rng.randint(4, 9) if long else rng.randint(1, 2)
    sents = []
    for _ in range(n_sent):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 12) if long else rng.randint(2, 5))]
        sents.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", "."]) + ("  " if rng.random() < 0.2 else ""))
    return " ".join(sents).strip()


def t2i_rows(n: int, seed: int = 0, prefix: str = "t") -> pl.DataFrame:
    rng = random.Random(seed)
    caps = [make_caption(rng, rng.random() < 0.5) for _ in range(n)]
    return pl.DataFrame(
        {
            "key": [f"{prefix}-{i:06d}" for i in range(n)],
            "dataset": [prefix] * n,
            "s3_path": [f"s3://bucket/{i}.jpg" for i in range(n)],
            "caption": caps,
            "llava_next_caption": [c.upper() for c in caps],
            "fltLaionAesthScore": [round(4 + rng.random() * 3, 3) for _ in range(n)],
            "intWidth": [rng.choice([256, 512, 1024]) for _ in range(n)],
            "intHeight": [rng.choice([256, 512, 1024]) for _ in range(n)],
        }
    )


def read_jsonl(path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


