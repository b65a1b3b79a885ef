"""Generate WebDataset shards whose json member holds several caption fields (ProCLIP / LLM2CLIP style)."""

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

out, shards, per = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(2)
g = 0
for s in range(shards):
    with tarfile.open(out / f"{s:05d}.tar", "w") as tf:
        for j in range(per):
            key = f"{s:05d}{j:04d}"
            b = io.BytesIO()
            Image.fromarray((rng.random((8, 8, 3)) * 255).astype("uint8")).resize((32, 32)).save(b, "JPEG")
            meta = {"shortSV_captions": f"a dog number {g}", "longSV_captions": f"a detailed description of dog number {g} on grass", "raw_caption": f"img {g}"}
            for ext, data in (("jpg", b.getvalue()), ("json", json.dumps(meta).encode())):
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            g += 1
print(f"{g} samples in {shards} shards -> {out}")
