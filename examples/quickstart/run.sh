#!/usr/bin/env bash
# Usage: examples/quickstart/run.sh OUT   (generates its data under OUT, writes only under OUT)
set -euo pipefail
OUT=${1:?usage: run.sh OUT}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${MMPREP_PYTHON:-python}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
"$PY" "$HERE/make_data.py" "$OUT/data.parquet" 5000
DATA="$OUT/data.parquet" mmprep run "$HERE/pipeline.yaml" --out "$OUT/dataset" --overwrite
mmprep verify "$OUT/dataset"
echo "quickstart output: $OUT/dataset (manifest: $OUT/dataset/_mmprep/manifest.json)"
