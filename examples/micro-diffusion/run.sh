#!/usr/bin/env bash
# micro_diffusion recipe: (1) images + captions -> raw MDS (min side 256, shorter side to 512);
# (2) raw MDS -> latents MDS (SDXL-VAE latents + text embeddings) when stage2.yaml exists and
# the encoders plugin provides the `vae` encoder.
# Usage: examples/micro-diffusion/run.sh OUT      (writes only under OUT)
set -euo pipefail
OUT=${1:?usage: run.sh OUT}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${MMPREP_PYTHON:-python}
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

if [[ -f "$HERE/stage2.yaml" ]] && mmprep components encoder 2>/dev/null | grep -Eq '^encoder[[:space:]]+vae\b'; then
  export MMPREP_STAGE2="$OUT/stage2"
  mmprep run "$HERE/stage2.yaml" --out "$MMPREP_STAGE2" -q
  mmprep verify "$MMPREP_STAGE2"
  echo "stage 2: latents MDS in $MMPREP_STAGE2"
else
  echo "stage 2 skipped (needs $HERE/stage2.yaml and the 'vae' encoder of mmprep-encoders)"
fi
