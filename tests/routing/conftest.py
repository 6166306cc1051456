"""Fixtures for the routing tests (rules, engine, config loader, CLI)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from routing_helpers import SHARED_DICOM


@pytest.fixture
def shared_dicom() -> Path:
    """../shared/data/dicom, or skip (fail under CI=true) when it is missing."""
    if not SHARED_DICOM.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"shared test data missing at {SHARED_DICOM}")
        pytest.skip(f"needs ../shared/data/dicom (not found at {SHARED_DICOM})")
    return SHARED_DICOM


@pytest.fixture
def dcmtk() -> None:
    """Skip (fail under CI=true) when DCMTK is not installed."""
    if shutil.which("dcmodify") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dcmtk missing: apt-get install dcmtk")
        pytest.skip("needs dcmtk: apt-get install dcmtk")
