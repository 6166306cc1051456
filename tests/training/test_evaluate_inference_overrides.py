"""`contourd evaluate --strategy/--overlap/--no-crop/--mirror` change only this evaluation."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from contourd.errors import InferenceError
from daemon.cli.evaluate import describe_inference, with_inference_overrides
from training.evaluate import load_package_model

HN_OAR = Path(__file__).resolve().parents[2] / "model_store" / "builtin" / "hn-oar"


def _args(**kw: object) -> argparse.Namespace:
    values = {"strategy": None, "overlap": None, "no_crop": False, "mirror": False}
    return argparse.Namespace(**{**values, **kw})


def test_overrides_change_a_copy_of_the_card_only() -> None:
    model = load_package_model(HN_OAR)
    assert describe_inference(model.card) == "sliding window, overlap 0.25, cropped to the patient"
    assert with_inference_overrides(model, _args()) is model
    changed = with_inference_overrides(
        model, _args(strategy="whole_volume", overlap=0.5, no_crop=True, mirror=True)
    )
    inf = changed.card.inference
    assert (inf.strategy, inf.overlap, inf.crop_to_foreground, inf.mirror_left_right) == (
        "whole_volume",
        0.5,
        False,
        True,
    )
    assert describe_inference(changed.card) == "whole volume, whole grid, left-right mirror TTA"
    assert model.card.inference.strategy == "sliding_window"  # the original is untouched
    assert changed.card.name == "hn-oar" and changed.weights_sha256 == model.weights_sha256


def test_overlap_outside_zero_to_one_is_refused_with_the_value() -> None:
    model = load_package_model(HN_OAR)
    with pytest.raises(InferenceError, match=r"--overlap 1.0 is outside \[0, 1\)"):
        with_inference_overrides(model, _args(overlap=1.0))
