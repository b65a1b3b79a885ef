#!/usr/bin/env bash
# micro_diffusion recipe: (1) images + captions -> raw MDS (min side 256, shorter side to 512);
# (2) raw MDS -> latents MDS (SDXL-VAE latents + text embeddings) when stage2.yaml exists and
# the encoders plugin provides the `vae` encoder.
# Usage: examples/micro-diffusion/run.sh OUT      (writes only under OUT)
set -euo pipefail
OUT=${1:?usage: run.sh OUT}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${MMPREP_PYTHON:-python}
source "$HERE/../lib.sh"  # tiny_models, run_encode_yaml
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export MMPREP_EXAMPLE_DATA="$OUT/data"
export MMPREP_STAGE1="$OUT/stage1"

"$PY" "$HERE/make_data.py" "$MMPREP_EXAMPLE_DATA" --count "${MMPREP_EXAMPLE_COUNT:-48}"

mmprep run "$HERE/stage1.yaml" --out "$MMPREP_STAGE1" -q
mmprep verify "$MMPREP_STAGE1"
"$PY" - "$MMPREP_STAGE1" <<'PY'
import json, sys
from pathlib import Path
from streaming.base import StreamingDataset
from streaming.base.util import clean_stale_shared_memory
root = Path(sys.argv[1])
m = json.loads((root / "_mmprep" / "manifest.json").read_text())
clean_stale_shared_memory()
ds = StreamingDataset(local=str(root), remote=None, shuffle=False, batch_size=1)
n = ds.num_samples
assert n == m["totals"]["written"] > 0, (n, m["totals"])
for i in range(n):
    s = ds.get_item(i)
    w, h = s["jpg"].size
    assert min(int(s["width"]), int(s["height"])) >= 256 and min(w, h) <= 512, (s["width"], s["height"], w, h)
print(f"stage 1: {n} samples in {root} (rejected: {m['totals']['rejected_by_reason']})")
PY

if [[ -f "$HERE/stage2.yaml" ]] && mmprep components encoder 2>/dev/null | grep -E '^encoder[[:space:]]+vae\b' >/dev/null; then
  export MMPREP_STAGE2="$OUT/stage2" STAGE1="${STAGE1:-$MMPREP_STAGE1}"
  if [[ -z "${VAE:-}" || -z "${TEXT_ENCODER:-}" ]]; then
    tiny_models
    export VAE="$OUT/models/vae" TEXT_ENCODER="$OUT/models/clip" RES_LOW=${RES_LOW:-32} RES_HIGH=${RES_HIGH:-64}
  fi
  mmprep run "$HERE/stage2.yaml" --out "$MMPREP_STAGE2" -q
  mmprep verify "$MMPREP_STAGE2"
  "$PY" - "$MMPREP_STAGE2" <<'PY'
import json, sys
from pathlib import Path
import numpy as np
from streaming import StreamingDataset
from streaming.base.util import clean_stale_shared_memory
out = Path(sys.argv[1])
m = json.loads((out / "_mmprep" / "manifest.json").read_text())
shapes = {c: spec["shape"] for e in m["encoders"] for c, spec in e["outputs"].items()}
clean_stale_shared_memory()
root = out / m["writers"][0]["path"]
ds = StreamingDataset(local=str(root), remote=None, shuffle=False, batch_size=1)
assert ds.num_samples == m["totals"]["written"] > 0
for i in range(ds.num_samples):
    s = ds.get_item(i)
    for col in ("latents_256", "latents_512", "caption_latents"):
        arr = np.frombuffer(s[col], dtype=np.float16).reshape(shapes[col])  # micro_diffusion's latents_loader
        assert np.isfinite(arr).all()
print(f"stage 2: {ds.num_samples} samples; latents shapes {shapes}")
PY
  echo "stage 2: latents MDS in $MMPREP_STAGE2"
else
  echo "stage 2 skipped (needs $HERE/stage2.yaml and the 'vae' encoder of mmprep-encoders)"
fi
