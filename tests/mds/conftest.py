"""Shared fixtures of the mmprep-mds tests: small real JPEGs, unit frames, engine-like commit."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from .mds_testlib import commit


@pytest.fixture
def write_units(tmp_path):
    """write_units(writer, [frames]) -> (root, records): stage, commit and finalize like the engine."""
    from mmprep import UnitInfo

    def run(writer, frames, root=None, finalize=True):
        root = root or tmp_path / "out"
        records = []
        for i, df in enumerate(frames):
            uid = f"u{i:05d}"
            staging = tmp_path / "staging" / uid
            staging.mkdir(parents=True)
            stats = writer.write_unit(df, UnitInfo(uid, i, df.height, ["ds"]), staging)
            commit(staging, root)
            shutil.rmtree(staging)
            records.append({"unit": uid, "index": i, "rows": df.height, "stats": stats})
        info = writer.finalize(root, records, {"encoders": []}) if finalize else None
        return root, records, info

    return run
