#!/usr/bin/env bash
# ProCLIP recipe: shards with a json of several caption fields -> sidecar tars and merged tars, joined by key.
# Usage: examples/proclip/run.sh OUT   (env: SHARDS_N [4], PER_SHARD [50])
# When examples/proclip/encode.yaml exists and validates with the installed encoders (it needs
# $LLM), it runs next on the same shards (SHARDS glob).
set -euo pipefail
OUT=${1:?usage: run.sh OUT}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${MMPREP_PYTHON:-python}
source "$HERE/../lib.sh"  # tiny_models, run_encode_yaml
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
"$PY" "$HERE/gen_data.py" "$OUT/shards" "${SHARDS_N:-4}" "${PER_SHARD:-50}"
export SHARDS="$OUT/shards/*.tar"
mmprep run "$HERE/pipeline.yaml" --out "$OUT/run" --quiet
mmprep verify "$OUT/run"
"$PY" - "$OUT/shards" "$OUT/run" <<'PYEOF'
import json, sys, tarfile
from pathlib import Path
shards, run = Path(sys.argv[1]), Path(sys.argv[2])
def samples(p):
    out = {}
    with tarfile.open(p) as tf:
        for m in tf.getmembers():
            k, e = m.name.split(".", 1)
            out.setdefault(k, {})[e] = tf.extractfile(m).read()
    return out
total = 0
for p in sorted(shards.glob("*.tar")):
    base = samples(p)
    side = samples(run / "sidecar" / f"{p.stem}_prompts.tar")
    merged = samples(run / "merged" / p.name)
    assert list(side) == list(base) == list(merged), p  # same keys, same order
    for k, v in base.items():
        meta = json.loads(v["json"])
        assert side[k] == {"short_prompt": meta["shortSV_captions"].encode(), "long_prompt": f"Describe: {meta['longSV_captions']}".encode()}
        assert merged[k] == {**v, **side[k]}
    total += len(base)
print(f"sidecar + merged outputs aligned key by key with {total} input samples")
PYEOF
if [ -f "$HERE/encode.yaml" ]; then
  if [ -z "${LLM:-}" ] && mmprep components encoder 2>/dev/null | grep -E "^encoder +llm-mean " >/dev/null; then
    tiny_models
    export LLM="$OUT/models/lm" MAX_LEN=${MAX_LEN:-64}
  fi
  run_encode_yaml "$HERE/encode.yaml" "$OUT/encoded"
fi
echo "proclip example OK: $OUT/run"
