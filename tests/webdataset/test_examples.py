"""The recipes examples/{nemo,reorganize,proclip}/run.sh, at test size, end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,env",
    [
        ("nemo", {"N": "160", "SAMPLES_PER_SHARD": "25"}),
        ("reorganize", {"SHARDS": "5", "SAMPLES_PER_SHARD": "40"}),
        ("proclip", {"SHARDS_N": "2", "PER_SHARD": "15"}),
    ],
)
def test_example_runs(tmp_path, name, env):
    bindir = str(Path(sys.executable).parent)
    e = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""), MMPREP_PYTHON=sys.executable, **env)
    r = subprocess.run(["bash", str(ROOT / "examples" / name / "run.sh"), str(tmp_path / "out")], env=e, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"{name} example OK" in r.stdout
    assert all(str(p).startswith(str(tmp_path)) for p in (tmp_path / "out").rglob("*"))
