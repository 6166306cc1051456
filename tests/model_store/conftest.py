"""Fixtures for the model store tests: a fresh data folder and a tiny unet package."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_store_helpers import write_package  # noqa: E402

from contourd.database import Database  # noqa: E402
from model_store.registry import ModelRegistry  # noqa: E402


@pytest.fixture
def registry(tmp_path: Path, make_database: Callable[[Path], Database]) -> Iterator[ModelRegistry]:
    """A registry on an empty data folder, without built-ins, on each backend."""
    data_dir = tmp_path / "var"
    reg = ModelRegistry(data_dir, builtin_dir=None, database=make_database(data_dir))
    yield reg
    reg.close()


@pytest.fixture
def unet_package(tmp_path: Path) -> Path:
    """A valid package folder of a tiny U-Net ('tiny-hn' 1.0.0, labels 1-2)."""
    return write_package(tmp_path / "pkg" / "tiny-hn")
