#!/usr/bin/env bash
# Run ON THE DEVICE MACHINE (one call, carry .whl made by bench/gpu/prepare.sh):
#   run(command="bash bench/gpu/check.sh", carry=[".whl"], timeout_s=580)
# Installs the carried wheels and mmprep + mmprep-encoders (no deps) into /tmp/site, runs the
# encoder tests (tests/encoders/test_cuda.py runs there, it is skipped without a GPU) and the
# GPU benchmark; logs land in $OUT (tests.log, bench.log, env.txt).
set -uo pipefail
OUT=${OUT:-/tmp/mmprep-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . plugins/encoders || exit 1
{ nvidia-smi; python3 -c "import torch, transformers, diffusers, polars; print(torch.__version__, transformers.__version__, diffusers.__version__, polars.__version__)"; nproc; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/encoders/test_cuda.py tests/encoders/test_outputs.py tests/encoders/test_vae.py tests/encoders/test_text.py 2>&1 | tee "$OUT/tests.log" | tail -25
timeout 300 python3 bench/encoders.py --device cuda --count 5000 --res 256 512 --batch 32 --loader-workers 8 \
  --text-count 4096 --text-batch 128 --writer parquet 2>&1 | tee "$OUT/bench.log"
