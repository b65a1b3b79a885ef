#!/usr/bin/env bash
# Media stage example: fetch, check, resize and re-encode generated images into parquet.
# Usage: examples/media/run.sh OUT   (generates its data under OUT, writes only under OUT)
set -euo pipefail
OUT=${1:?usage: run.sh OUT}
PY=${MMPREP_PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT/work"
cp "$HERE/pipeline.yaml" "$OUT/work/pipeline.yaml"
"$PY" "$HERE/make_data.py" "$OUT/work/data"
mmprep run "$OUT/work/pipeline.yaml" --out "$OUT/result"
"$PY" - "$OUT/result" <<'PYEOF'
import io, json, sys
from pathlib import Path
import polars as pl
from PIL import Image
out = Path(sys.argv[1])
m = json.loads((out / "_mmprep" / "manifest.json").read_text())
for name, d in m["datasets"].items():
    assert d["planned"] == d["written"] + sum(d["rejected"].values()), name
df = pl.read_parquet(sorted((out / "images").glob("*.parquet")))
for r in df.sort("caption").iter_rows(named=True):
    im = Image.open(io.BytesIO(r["image_bytes"]))
    assert im.size == (r["stored_width"], r["stored_height"]) and min(im.size) <= 512
    print(f"{r['caption']:32s} {r['width']}x{r['height']} -> {im.size[0]}x{im.size[1]} {r['image_format']}")
rej = m["totals"]["rejected_by_reason"]
print("rejected:", rej)
assert rej == {"decode_error": 1, "not_an_image": 1, "not_found": 1, "too_small": 1}, rej
assert df.height == 5
PYEOF
