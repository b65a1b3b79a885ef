"""Every examples/<name>/run.sh runs end to end on its own generated data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import REPO, check_accounting

EXAMPLES = sorted(p.parent.name for p in (REPO / "examples").glob("*/run.sh"))
#: test-size settings (each run.sh's defaults are the demo sizes)
SIZES = {
    "nemo": {"N": "160", "SAMPLES_PER_SHARD": "25"},
    "reorganize": {"SHARDS": "5", "SAMPLES_PER_SHARD": "40"},
    "proclip": {"SHARDS_N": "2", "PER_SHARD": "15"},
    "micro-diffusion": {"MMPREP_EXAMPLE_COUNT": "24"},
}
DONE_LINE = {"nemo", "reorganize", "proclip"}  # these print "<name> example OK"


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs(name, tmp_path, mmprep_env):
    out = tmp_path / name
    env = dict(mmprep_env, MMPREP_PYTHON=sys.executable, **SIZES.get(name, {}))
    r = subprocess.run(["bash", str(REPO / "examples" / name / "run.sh"), str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"stdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-5000:]}"
    if name in DONE_LINE:
        assert f"{name} example OK" in r.stdout
    assert "skipped" not in r.stdout, r.stdout  # every stage of every recipe runs in the tests
    assert all(str(p).startswith(str(out)) for p in out.rglob("*"))  # writes only under OUT
    manifests = list(out.rglob("_mmprep/manifest.json"))
    assert manifests, "the example produced no finalized mmprep output"
    for m in manifests:
        check_accounting(json.loads(m.read_text()))
    # examples write only under OUT
    assert not any(p.name.startswith("_mmprep") for p in (REPO / "examples" / name).iterdir())


def test_quickstart_output(tmp_path, mmprep_env):
    out = tmp_path / "qs"
    env = dict(mmprep_env, MMPREP_PYTHON=sys.executable)
    subprocess.run(["bash", str(REPO / "examples" / "quickstart" / "run.sh"), str(out)], env=env, check=True, capture_output=True)
    m = json.loads((out / "dataset" / "_mmprep" / "manifest.json").read_text())
    d = m["datasets"]["laion-mini"]
    assert d["source_rows"] == 5000 and d["written"] > 500
    rows = [json.loads(line) for f in sorted((out / "dataset" / "jsonl").glob("*.jsonl")) for line in f.read_text().splitlines()]
    assert len(rows) == d["written"]
    assert all(r["prompt"].endswith(", high quality") and "  " not in r["prompt"] for r in rows)
    assert all(r["width"] >= 512 and r["height"] >= 512 for r in rows)
