"""Benchmark: LLaVA text-to-image payloads, mmprep (llava-t2i + llava-jsonl through the engine)
vs a pandas loop calling a per-row Python function with the same templates (LaViDa-O style).

    .venv/bin/python bench/llava.py --rows 1000000 [--workers 1] [--keep DIR]

Captions are multi-sentence, ~30% longer than 150 characters (those are eligible for the
random sentence truncation). Both sides read the same parquet, build the same payloads
(same per-key draws, checked on the first rows) and write JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

MICRO = "[[micro_conds_texts]]"
VOCAB = np.array(
    "a an the red blue green old young small large dog cat man woman child tree house car street river mountain sky "
    "cloud beach city field flower bird horse boat bridge window table chair lamp book painting photo of with on in "
    "near under over beside standing sitting walking running bright dark sunny rainy wooden metal glass stone".split()
)


def make_data(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    long = rng.random(rows) < 0.30
    n_words = np.where(long, rng.integers(30, 90, rows), rng.integers(5, 20, rows))
    words = VOCAB[rng.integers(0, len(VOCAB), int(n_words.sum()))]
    # sentence ends every ~10 words
    ends = rng.random(len(words)) < 0.1
    words = np.where(ends, np.char.add(words, "."), words)
    owner = np.repeat(np.arange(rows), n_words)
    df = pl.DataFrame({"o": owner, "w": words}).group_by("o", maintain_order=True).agg(pl.col("w").str.join(" "))
    caps = (df["w"].str.slice(0, 1).str.to_uppercase() + df["w"].str.slice(1) + ".").alias("caption")
    pl.DataFrame(
        {
            "s3_path": pl.format("s3://bucket/images/{}.jpg", pl.int_range(rows, eager=True)) if False else [f"s3://bucket/images/{i:09d}.jpg" for i in range(rows)],
            "caption": caps,
            "fltLaionAesthScore": rng.uniform(4, 7, rows).astype(np.float32),
        }
    ).write_parquet(path)


def select_sentences(caption: str, u: float) -> str:
    sentences = re.split(r"(?<=[.!?]) +", caption.strip())
    k = int(u * len(sentences)) + 1  # random.randint(1, n) with a per-key draw
    return " ".join(sentences[:k])


def t2i_row(data: dict, u_trunc: float, u_k: float, max_len: int = 800) -> dict:
    """LaViDa-O preproces_text_to_image_generation_s3, per row (per-key draws instead of random)."""
    caption = data["caption"]
    if u_trunc < 0.2 and len(caption) > 150:
        caption = select_sentences(caption, u_k)
    if len(caption) > max_len:
        caption = caption[:max_len]
    payload = {
        "id": data["key"],
        "image_gen": data["s3_path"],
        "conversations": [
            {"from": "human", "value": f"Generate an image with the caption: {caption} {MICRO}"},
            {"from": "gpt", "value": "Sure <image_gen>"},
        ],
    }
    if "fltLaionAesthScore" in data:
        payload["gen_score"] = [data["fltLaionAesthScore"]]
    return payload


def run_pandas(src: Path, out: Path, seed: int) -> float:
    import pandas as pd

    from mmprep.hashing import unit_floats

    t0 = time.perf_counter()
    df = pd.read_parquet(src)
    df["key"] = [f"t-{i:09d}" for i in range(len(df))]
    keys = pl.Series(df["key"].to_numpy())
    u_trunc = unit_floats(keys, seed=seed * 16 + 1)  # the same draws mmprep uses
    u_k = unit_floats(keys, seed=seed * 16 + 2)
    with open(out, "w") as fh:
        for i, rec in enumerate(df.to_dict("records")):
            rec["fltLaionAesthScore"] = float(rec["fltLaionAesthScore"])
            fh.write(json.dumps(t2i_row(rec, u_trunc[i], u_k[i]), ensure_ascii=False, separators=(",", ":")) + "\n")
    return time.perf_counter() - t0


def run_mmprep(src: Path, out: Path, workers: int, rows: int) -> float:
    from mmprep import Pipeline

    doc = {
        "datasets": [{"name": "t", "source": {"type": "parquet", "path": str(src)}}],
        "format": [{"type": "llava-t2i"}],
        "write": [{"type": "llava-jsonl"}],
        "run": {"samples_per_unit": max(1, rows // max(workers * 4, 1)), "workers": workers},
    }
    t0 = time.perf_counter()
    res = Pipeline.from_dict(doc, base_dir=src.parent).run(out=str(out), quiet=True)
    dt = time.perf_counter() - t0
    assert res.manifest["totals"]["written"] == rows, res.manifest["totals"]
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--keep", default=None, help="keep the generated data and outputs here")
    a = ap.parse_args()
    tmp = Path(a.keep or tempfile.mkdtemp(prefix="bench-llava-"))
    tmp.mkdir(parents=True, exist_ok=True)
    src = tmp / "captions.parquet"
    t0 = time.perf_counter()
    make_data(src, a.rows)
    caps = pl.read_parquet(src, columns=["caption"])["caption"].str.len_chars()
    print(f"data: {a.rows} rows, {(caps > 150).mean():.1%} captions > 150 chars, mean {caps.mean():.0f} chars ({time.perf_counter() - t0:.1f} s)")

    out = tmp / "mmprep"
    shutil.rmtree(out, ignore_errors=True)
    t_mm = run_mmprep(src, out, a.workers, a.rows)
    t_pd = run_pandas(src, tmp / "pandas.jsonl", seed=0)

    # same payloads (ids are the engine's keys: compare everything but the id)
    mm = [json.loads(line) for f in sorted(out.glob("part-*.jsonl")) for line in open(f)][:2000]
    with open(tmp / "pandas.jsonl") as fh:
        pdl = [json.loads(next(fh)) for _ in range(len(mm))]
    for x, y in zip(mm, pdl):
        x.pop("id"), y.pop("id")
        x["gen_score"] = [round(v, 4) for v in x["gen_score"]]
        y["gen_score"] = [round(v, 4) for v in y["gen_score"]]
    same = sum(x["conversations"] == y["conversations"] and x["image_gen"] == y["image_gen"] for x, y in zip(mm, pdl))
    print(f"payload check (first {len(mm)} rows, conversations + image_gen): {same} identical")
    print(f"| rows | pandas loop (s) | mmprep (s) | speed-up |\n|---|---|---|---|\n| {a.rows:,} | {t_pd:.2f} | {t_mm:.2f} | {t_pd / t_mm:.1f}x |")
    print(f"rows/s: pandas {a.rows / t_pd:,.0f}, mmprep {a.rows / t_mm:,.0f}")
    if not a.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
