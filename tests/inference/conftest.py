"""Fixtures for the inference tests (helpers live in inference_helpers.py)."""

from __future__ import annotations

import pytest
from inference_helpers import LocalModel, load_body_model


@pytest.fixture
def body_model() -> LocalModel:
    """The built-in classical body model (card only, no weights)."""
    return load_body_model()
