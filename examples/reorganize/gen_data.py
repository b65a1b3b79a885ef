"""Generate uneven tars as img2dataset leaves them: NNNNN.tar with <key>.jpg/.txt/.json, some members missing."""

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

out, shards = Path(sys.argv[1]), int(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(1)
g = 0
for s in range(shards):
    n = int(rng.integers(20, 120))  # failed downloads make shards uneven
    with tarfile.open(out / f"{s:05d}.tar", "w") as tf:
        for j in range(n):
            key = f"{s:05d}{j:04d}"
            b = io.BytesIO()
            Image.fromarray((rng.random((8, 8, 3)) * 255).astype("uint8")).resize((32, 32)).save(b, "JPEG")
            members = {"jpg": b.getvalue(), "txt": f"caption {g}".encode(), "json": json.dumps({"key": key, "caption": f"caption {g}", "status": "success"}).encode()}
            if g % 13 == 4:
                del members["txt"]  # some samples lack a member
            if g % 29 == 9:
                del members["jpg"]
            for ext, data in members.items():
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size = len(data)
                ti.mtime = 1700000000 + g
                tf.addfile(ti, io.BytesIO(data))
            g += 1
print(f"{g} samples in {shards} uneven tars -> {out}")
