#!/usr/bin/env bash
# Run HERE (the development machine) before the device check: downloads, into .whl/ (ignored
# by git), the Python 3.12 wheels that the device machine's image lacks (polars, pydantic,
# diffusers; see /work/.library/device/KINDS.md for what it holds). About 63 MB: with the
# working tree (~1.5 MB) it stays under the 64 MiB a device call may carry.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  polars==2.1.0 polars-runtime-32==2.1.0 pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 \
  typing-inspection==0.4.5 diffusers==0.39.0 importlib-metadata zipp 2>&1 | grep -v "WARNING: Location" || true
du -sh .whl
