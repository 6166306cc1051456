"""Fixtures for the routing tests (rules, engine, config loader, CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest
from routing_helpers import SHARED_DICOM

HERE = Path(__file__).resolve().parent


@pytest.fixture
def shared_dicom() -> Path:
    """../shared/data/dicom, or skip with the reason when it is missing."""
    if not SHARED_DICOM.is_dir():
        pytest.skip(f"needs ../shared/data/dicom (not found at {SHARED_DICOM})")
    return SHARED_DICOM


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the routing tests that read ../shared/data with ``shared_data``."""
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents and "shared_dicom" in getattr(
            item, "fixturenames", ()
        ):
            item.add_marker(pytest.mark.shared_data)
