"""Fixtures of the reliability suite: a test-only fault plugin visible to subprocesses and workers."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def fault_plugin(tmp_path_factory):
    """Install tests/reliability/faultplugin as the entry point ``faults`` (a dist-info on sys.path
    and PYTHONPATH, so `mmprep run` subprocesses, spawn workers and local Ray workers load it too).
    Removed again at the end of the session."""
    from mmprep.registry import load

    site = tmp_path_factory.mktemp("faultsite")
    shutil.copy(HERE / "faultplugin" / "mmprep_faults.py", site / "mmprep_faults.py")
    di = site / "mmprep_faults-0.1.dist-info"
    di.mkdir()
    (di / "METADATA").write_text("Metadata-Version: 2.1\nName: mmprep-faults\nVersion: 0.1\n")
    (di / "entry_points.txt").write_text("[mmprep]\nfaults = mmprep_faults\n")
    old_pp = os.environ.get("PYTHONPATH")
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = str(site) + (os.pathsep + old_pp if old_pp else "")
    load(refresh=True)
    yield site
    sys.path.remove(str(site))
    if old_pp is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old_pp
    sys.modules.pop("mmprep_faults", None)
    load(refresh=True)
