#!/usr/bin/env bash
# LaViDa-O data YAML -> validated LLaVA payloads + a LaViDa-O data YAML pointing at them.
# Usage: examples/lavida-o/run.sh OUT
set -euo pipefail
OUT=${1:?usage: run.sh OUT}
PY=${MMPREP_PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT/work"
cp "$HERE/data.yaml" "$OUT/work/data.yaml"
"$PY" "$HERE/make_data.py" "$OUT/work/data"
mmprep run "$OUT/work/data.yaml" --out "$OUT/payloads"
"$PY" - "$OUT/payloads" <<'PYEOF'
import json, sys, yaml
from pathlib import Path
out = Path(sys.argv[1])
doc = yaml.safe_load((out / "data.yaml").read_text())
m = json.loads((out / "_mmprep" / "manifest.json").read_text())
for name, d in m["datasets"].items():
    assert d["planned"] == d["written"] + sum(d["rejected"].values()), name
for e in doc["datasets"]:
    rows = [json.loads(l) for l in open(e["json_path"])]
    assert rows and all(r["conversations"][0]["from"] == "human" for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    print(f"{e['name']:12s} {e['length_group']:5s} {len(rows):4d} payloads -> {e['json_path']}")
print("rejected:", m["totals"]["rejected_by_reason"])
PYEOF
mmprep verify "$OUT/payloads"
