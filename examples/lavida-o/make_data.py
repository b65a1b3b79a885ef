"""Generate small LaViDa-O style inputs (parquet t2i, jsonl understanding, json edit) into DIR."""

import json
import random
import sys
from pathlib import Path

import polars as pl

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
rng = random.Random(0)
words = "a red cat sits on the old mat near one tall green tree by the quiet lake under grey sky".split()


def sentence(n):
    return " ".join(rng.choice(words) for _ in range(n)).capitalize() + "."


n = 200
pl.DataFrame({
    "s3_path": [f"s3://my-bucket/laion/{i:06d}.jpg" for i in range(n)],
    "caption": [" ".join(sentence(rng.randint(6, 14)) for _ in range(rng.randint(1, 6))) for _ in range(n)],
    "llava_next_caption": [sentence(rng.randint(8, 20)) for _ in range(n)],
    "fltLaionAesthScore": [round(rng.uniform(4, 7), 3) for _ in range(n)],
    "intWidth": [rng.choice([384, 512, 768, 1024]) for _ in range(n)],
    "intHeight": [rng.choice([384, 512, 768, 1024]) for _ in range(n)],
}).write_parquet(out / "t2i.parquet")
with open(out / "und.jsonl", "w") as fh:
    for i in range(50):
        conv = [{"from": "human", "value": "<image>\nWhat is in the picture?"}, {"from": "gpt", "value": sentence(10)}]
        fh.write(json.dumps({"image": f"coco/{i:06d}.jpg" if i % 5 else None, "conversations": json.dumps(conv)}) + "\n")
edits = [{"input_paths": [f"in/{i}_{j}.png" for j in range(1 + i % 3)], "output_paths": f"out/{i}.png", "instruction": sentence(6)} for i in range(30)]
(out / "edit.json").write_text(json.dumps(edits))
