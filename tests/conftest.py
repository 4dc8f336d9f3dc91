"""Shared fixtures. Tests that use the reference data in ../shared/data skip when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; skips the test when the reference data is not beside the checkout."""
    if not SHARED_DATA.is_dir():
        pytest.skip("reference data ../shared/data is not present beside this checkout")
    return SHARED_DATA
