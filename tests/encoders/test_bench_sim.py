"""bench/encoders.py's CPU-overhead part (the sim device) runs in CI size: every path of the
VAE and text tables completes through the real encoders and a real `mmprep run`. No timing
is asserted (ratios live in bench/RESULTS.md)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_encoder_bench_on_the_sim_device_runs(tmp_path):
    cmd = [sys.executable, str(REPO / "bench" / "encoders.py"), "--device", "sim", "--count", "12", "--res", "64",
           "--batch", "4", "--unit", "6", "--loader-workers", "0", "--threads", "2", "--text-count", "24", "--text-batch", "8"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ") and not line.startswith("| workload")]
    assert [r.split(" | ")[0] for r in rows] == ["| VAE SDXL 64²", "| CLIP-L text", "| T5-base-sized"], res.stdout
    vae = rows[0].split(" | ")
    assert vae[1] == "12" and all(float(x) > 0 for x in vae[4:10])  # every path produced a rate
