#!/usr/bin/env bash
# Reorganize recipe: uneven img2dataset-style tars -> exact-size shards (+ wdinfo.pkl).
# Usage: examples/reorganize/run.sh OUT   (env: SHARDS [12], SAMPLES_PER_SHARD [100])
set -euo pipefail
OUT=${1:?usage: run.sh OUT}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${MMPREP_PYTHON:-python}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SHARDS=${SHARDS:-12}
export MMPREP_EXAMPLE_DATA="$OUT/downloaded"
export LAST_SHARD=$(printf "%05d" $((SHARDS - 1)))
export SAMPLES_PER_SHARD=${SAMPLES_PER_SHARD:-100}
"$PY" "$HERE/gen_data.py" "$MMPREP_EXAMPLE_DATA" "$SHARDS"
mmprep run "$HERE/pipeline.yaml" --out "$OUT/run" --quiet
mmprep verify "$OUT/run"
"$PY" - "$MMPREP_EXAMPLE_DATA" "$OUT/run" "$SAMPLES_PER_SHARD" <<'PYEOF'
import json, sys, tarfile
from pathlib import Path
src, run, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
def samples(p):
    out = {}
    with tarfile.open(p) as tf:
        for m in tf.getmembers():
            k, e = m.name.split(".", 1)
            out.setdefault(k, {})[e] = tf.extractfile(m).read()
    return out
inp = {}
for p in sorted(src.glob("*.tar")):
    inp.update(samples(p))
complete = {k: v for k, v in inp.items() if "jpg" in v and "txt" in v}
shards = sorted((run / "tarfiles_reorganized").glob("[0-9]*.tar"))
got = {}
for i, p in enumerate(shards):
    s = samples(p)
    assert i == len(shards) - 1 or len(s) == n, (p, len(s))
    got.update(s)
assert got == complete, "repacked samples differ from the complete input samples"
m = json.loads((run / "_mmprep" / "manifest.json").read_text())["datasets"]["downloaded"]
assert m["planned"] == len(inp) and m["written"] == len(complete) and m["rejected"] == {"missing_member": len(inp) - len(complete)}
print(f"{len(inp)} input samples -> {len(complete)} in {len(shards)} shards of {n}; {len(inp) - len(complete)} missing_member")
PYEOF
echo "reorganize example OK: $OUT/run/tarfiles_reorganized"
