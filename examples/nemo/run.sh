#!/usr/bin/env bash
# NeMo recipe: parquet of local image paths + captions -> WebDataset tars -> exact-size shards -> wdinfo.pkl.
# Usage: examples/nemo/run.sh OUT   (env: N rows [3000], SAMPLES_PER_SHARD [1000])
# When examples/nemo/encode.yaml exists and every encoder it names is installed, it runs next
# (precached encodings in the NeMo pickle layout), reading the shards from $WDS_SHARDS.
set -euo pipefail
OUT=${1:?usage: run.sh OUT}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${MMPREP_PYTHON:-python}
source "$HERE/../lib.sh"  # tiny_models, run_encode_yaml
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export MMPREP_EXAMPLE_DATA="$OUT/data"
export SAMPLES_PER_SHARD=${SAMPLES_PER_SHARD:-1000}
"$PY" "$HERE/gen_data.py" "$MMPREP_EXAMPLE_DATA" "${N:-3000}"
mmprep run "$HERE/pipeline.yaml" --out "$OUT/run" --quiet
mmprep verify "$OUT/run"
export WDS_SHARDS="$OUT/run/tarfiles_reorganized"
"$PY" - "$WDS_SHARDS" "$SAMPLES_PER_SHARD" <<'PYEOF'
import pickle, sys, tarfile
from pathlib import Path
root, n = Path(sys.argv[1]), int(sys.argv[2])
info = pickle.loads((root / "wdinfo.pkl").read_bytes())
shards = sorted(p.name for p in root.glob("*.tar"))
for name in info["tar_files"]:
    with tarfile.open(root / name) as tf:
        assert sum(m.name.endswith(".jpg") for m in tf.getmembers()) == n, name
assert info["chunk_size"] == n and info["total_key_count"] == n * len(info["tar_files"])
print(f"wdinfo.pkl: {len(info['tar_files'])} full shards of {n} (of {len(shards)} shards)")
PYEOF
if [ -f "$HERE/encode.yaml" ]; then  # NeMo precache config (dialect): IN = the shards, OUT = its output
  if [ -z "${VAE:-}" ] && mmprep components encoder 2>/dev/null | grep -E "^encoder +vae " >/dev/null; then
    tiny_models
    export VAE="$OUT/models/vae" CLIP="$OUT/models/clip" T5="$OUT/models/t5" RES=${RES:-64}
  fi
  IN="$WDS_SHARDS" CHUNK="$SAMPLES_PER_SHARD" OUT="$OUT/encoded" run_encode_yaml "$HERE/encode.yaml" "$OUT/encoded"
fi
echo "nemo example OK: $OUT/run/tarfiles_reorganized"
