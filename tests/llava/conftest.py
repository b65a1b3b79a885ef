"""Fixtures for tests/llava (helpers live in llava_helpers.py)."""

from __future__ import annotations

import os
import sys

import polars as pl
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

from llava_helpers import t2i_rows  # noqa: E402


@pytest.fixture
def t2i_frame() -> pl.DataFrame:
    return t2i_rows(300)
