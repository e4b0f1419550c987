"""Fixtures for the data tests: the shared real data sets, skipped cleanly when absent."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()


@pytest.fixture
def shared_data() -> Path:
    """Folder of the public data sets (``<repo>/../shared/data``); skip when it is missing."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data sets not found at {SHARED_DATA} (a fresh checkout has none)")
    return SHARED_DATA
