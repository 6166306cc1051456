"""Fixtures for the RTSTRUCT / SEG writer tests (helpers live in writer_helpers.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from writer_helpers import SMALL_SHAPE_ZYX, SMALL_SPACING_MM

from inference.phantom import PhantomSeries, make_phantom_series
from inference.roi_mask import AlgorithmInfo


@pytest.fixture
def algorithm() -> AlgorithmInfo:
    return AlgorithmInfo(
        model_name="phantom-model",
        model_version="1.2.3",
        weights_sha256="0123456789abcdef" * 4,
        software_version="0.1.0",
    )


@pytest.fixture
def phantom_factory(tmp_path: Path) -> Callable[..., PhantomSeries]:
    """Make small phantom series under tmp_path (64x64x12, 3 x 3 x 2.5 mm)."""
    counter = iter(range(1000))

    def make(patient_position: str = "HFS", **kwargs: object) -> PhantomSeries:
        kwargs.setdefault("shape_zyx", SMALL_SHAPE_ZYX)
        kwargs.setdefault("spacing_mm", SMALL_SPACING_MM)
        return make_phantom_series(
            tmp_path / f"ct_{patient_position}_{next(counter)}",
            patient_position=patient_position,
            **kwargs,  # type: ignore[arg-type]
        )

    return make
