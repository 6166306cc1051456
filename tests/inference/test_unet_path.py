"""The network path end to end with a tiny randomly initialised U-Net package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from inference_helpers import LocalModel, load_body_model, write_ct_series
from safetensors.torch import save_file

from inference.pipeline import segment_series
from inference.precision import cpu_supports_bf16
from inference.predictor import Predictor, PredictorCache
from inference.unet import UNet3D
from model_store.card import ModelCard


def tiny_card(roi_names: tuple[str, str] = ("Blob", "Nothing")) -> ModelCard:
    return ModelCard.model_validate(
        {
            "name": "tiny",
            "version": "0.0.1",
            "description": "random weights for tests",
            "intended_use": "tests only",
            "originator": "tests",
            "modality": "CT",
            "body_site": "HEADNECK",
            "model_type": "unet",
            "rois": [
                {"label": 1, "name": roi_names[0], "color": [255, 0, 0]},
                {"label": 2, "name": roi_names[1], "color": [0, 0, 255]},
            ],
            "preprocessing": {
                "spacing_mm": [6.0, 6.0, 7.0],
                "normalization": {"kind": "ct_clip_scale", "min_hu": -500, "max_hu": 500},
                "patch_size": [16, 16, 16],
            },
            "architecture": {"num_classes": 3, "base_channels": 4, "levels": 3},
            "postprocessing": {1: {"largest_component": True, "fill_holes": True}},
        }
    )


def tiny_package(
    tmp_path: Path, *, bias: tuple[float, float, float] = (0.0, 0.0, 0.0), **kw
) -> LocalModel:
    card = tiny_card(**kw)
    torch.manual_seed(0)
    assert card.architecture is not None
    net = UNet3D(card.architecture)
    assert net.head.bias is not None
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor(bias))
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return LocalModel(card=card, weights_path=path, weights_sha256="test")


def test_unet_masks_come_back_on_the_whole_source_grid(tmp_path: Path) -> None:
    model = tiny_package(tmp_path / "m", bias=(0.0, 8.0, -8.0))
    no_crop = model.card.inference.model_copy(update={"crop_to_foreground": False})
    model.card = model.card.model_copy(update={"inference": no_crop})
    write_ct_series(tmp_path / "ct", patient_position="FFP", shape_zyx=(12, 48, 48))
    result = segment_series(tmp_path / "ct", model, device="cpu")
    assert [r.name for r in result.rois] == ["Blob"]
    (blob,) = result.rois
    assert blob.mask.shape == result.volume.shape == (12, 48, 48)
    assert blob.mask.all()  # class 1 wins everywhere: every source voxel is covered
    assert result.empty_rois == ["Nothing"]
    assert any("'Nothing'" in w and "empty" in w for w in result.warnings)
    for key in ("load", "tiny.preprocess", "tiny.network", "tiny.postprocess", "total"):
        assert result.timings_s[key] >= 0


def test_bf16_agrees_with_fp32(tmp_path: Path) -> None:
    if not cpu_supports_bf16():
        pytest.skip("this CPU has no native bf16 (avx512_bf16/amx_bf16)")
    model = tiny_package(tmp_path)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(24, 40, 40)).astype(np.float32)
    fp32 = Predictor.from_model(model, device="cpu", precision="fp32").predict_proba(image)
    bf16 = Predictor.from_model(model, device="cpu", precision="bf16").predict_proba(image)
    assert fp32.shape == bf16.shape == (3, 24, 40, 40)
    np.testing.assert_allclose(bf16.sum(axis=0), 1.0, atol=1e-4)
    assert float(np.abs(bf16 - fp32).mean()) < 0.02
    assert float((bf16.argmax(0) == fp32.argmax(0)).mean()) > 0.95


def test_sliding_window_with_one_window_equals_whole_volume(tmp_path: Path) -> None:
    model = tiny_package(tmp_path)
    image = np.random.default_rng(1).normal(size=(16, 16, 16)).astype(np.float32)
    predictor = Predictor.from_model(model, device="cpu", precision="fp32")
    whole = predictor.predict_proba(image)
    window = predictor.predict_proba(image, force_sliding_window=True)
    np.testing.assert_allclose(window, whole, atol=1e-5)


def test_sliding_window_covers_a_volume_larger_than_the_patch(tmp_path: Path) -> None:
    model = tiny_package(tmp_path)
    image = np.random.default_rng(2).normal(size=(20, 37, 30)).astype(np.float32)
    predictor = Predictor.from_model(model, device="cpu", precision="fp32")
    probs = predictor.predict_proba(image, force_sliding_window=True)
    assert probs.shape == (3, 20, 37, 30)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-4)
    assert predictor.predict_proba(image).shape == (3, 20, 37, 30)


def test_second_model_with_a_clashing_roi_name_is_reported_and_labels_renumbered(
    tmp_path: Path,
) -> None:
    model = tiny_package(tmp_path / "m", bias=(0.0, 8.0, -8.0), roi_names=("BODY", "Blob"))
    write_ct_series(tmp_path / "ct", shape_zyx=(8, 32, 32))
    cache = PredictorCache()
    result = segment_series(
        tmp_path / "ct", [load_body_model(), model], device="cpu", predictor_cache=cache
    )
    assert [r.name for r in result.rois] == ["BODY"]
    assert any("clashes" in w and "'BODY'" in w for w in result.warnings)
    assert result.models == ["body 1.0.0", "tiny 0.0.1"]
    assert [r.label for r in result.rois] == [1]
    assert len(cache) == 1
    segment_series(tmp_path / "ct", [model], device="cpu", predictor_cache=cache)
    assert len(cache) == 1  # the warm predictor was reused


def test_model_for_another_modality_is_refused(tmp_path: Path) -> None:
    from contourd.errors import InferenceError

    model = tiny_package(tmp_path / "m")
    model.card = model.card.model_copy(update={"modality": "MR"})
    write_ct_series(tmp_path / "ct", shape_zyx=(4, 16, 16))
    with pytest.raises(InferenceError, match="is for MR but series .* is CT"):
        segment_series(tmp_path / "ct", model, device="cpu")


def _count_forward_passes(predictor: Predictor, image: np.ndarray) -> int:
    calls = 0
    forward = predictor._forward

    def counting(batch: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return forward(batch)

    predictor._forward = counting  # type: ignore[method-assign]
    predictor.predict_proba(image)
    return calls


def test_card_inference_strategy_chooses_sliding_window_or_whole_volume(tmp_path: Path) -> None:
    model = tiny_package(tmp_path)
    image = np.random.default_rng(3).normal(size=(24, 40, 40)).astype(np.float32)
    assert model.card.inference.strategy == "sliding_window"  # the default for U-Nets
    window = Predictor.from_model(model, device="cpu", precision="fp32")
    assert window.overlap == 0.25
    # patch 16^3, step 12: z starts 0, 8 (2) x y/x starts 0, 12, 24 (3 x 3)
    assert _count_forward_passes(window, image) == 18
    model.card = model.card.model_copy(
        update={"inference": model.card.inference.model_copy(update={"strategy": "whole_volume"})}
    )
    whole = Predictor.from_model(model, device="cpu", precision="fp32")
    assert _count_forward_passes(whole, image) == 1
    forced = Predictor.from_model(model, device="cpu", precision="fp32", max_whole_volume_voxels=1)
    assert _count_forward_passes(forced, image) == 18


def test_foreground_box_grows_by_the_margin_and_stops_at_the_edges() -> None:
    from inference.postprocess import foreground_box

    image = np.full((20, 30, 40), -1.0, dtype=np.float32)
    image[5:8, 1:10, 30:38] = 0.3
    assert foreground_box(image, 2) == (slice(3, 10), slice(0, 12), slice(28, 40))
    assert foreground_box(np.full((4, 4, 4), -1.0, dtype=np.float32), 2) is None  # blank
    image[0, 0, 0] = image[-1, -1, -1] = 0.0
    assert foreground_box(image, 0) is None  # the box is the whole image: nothing to crop


def test_crop_to_foreground_runs_the_network_on_the_patient_only(tmp_path: Path) -> None:
    model = tiny_package(tmp_path)
    image = np.full((24, 64, 64), -1.0, dtype=np.float32)  # air, as a clipped CT shows it
    patient = np.random.default_rng(4).uniform(-0.5, 0.8, size=(20, 20, 24)).astype(np.float32)
    image[2:22, 30:50, 10:34] = patient
    cropped = Predictor.from_model(model, device="cpu", precision="fp32")
    assert cropped.crop_to_foreground  # the card's default
    full = Predictor.from_model(model, device="cpu", precision="fp32", crop_to_foreground=False)
    assert _count_forward_passes(cropped, image) < _count_forward_passes(full, image)

    probs = cropped.predict_proba(image)
    box = (slice(0, 24), slice(26, 54), slice(6, 38))  # the patient + 4 voxels, clipped
    outside = np.ones(image.shape, dtype=bool)
    outside[box] = False
    assert np.all(probs[0][outside] == 1.0) and np.all(probs[1:, outside] == 0.0)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-4)
    inside = full.predict_proba(np.ascontiguousarray(image[box]))
    np.testing.assert_allclose(probs[(slice(None), *box)], inside, atol=1e-6)


def test_mirror_class_order_swaps_left_right_pairs_only(tmp_path: Path) -> None:
    card = tiny_card(("Parotid_L", "Parotid_R"))
    rois = [
        card.rois[0].model_copy(update={"laterality": "L"}),
        card.rois[1].model_copy(update={"laterality": "R"}),
    ]
    assert card.model_copy(update={"rois": rois}).mirror_class_order() == [0, 2, 1]
    assert card.mirror_class_order() == [0, 1, 2]  # no laterality: nothing to swap


def test_mirror_test_time_augmentation_averages_the_mirrored_and_swapped_output(
    tmp_path: Path,
) -> None:
    model = tiny_package(tmp_path)
    image = np.random.default_rng(5).normal(size=(16, 24, 24)).astype(np.float32)
    plain = Predictor.from_model(model, device="cpu", precision="fp32")
    swapped = Predictor.from_model(
        model, device="cpu", precision="fp32", mirror_class_order=[0, 2, 1]
    )
    expected = 0.5 * (
        plain.predict_proba(image)
        + plain.predict_proba(np.ascontiguousarray(image[:, :, ::-1]))[[0, 2, 1]][:, :, :, ::-1]
    )
    np.testing.assert_allclose(swapped.predict_proba(image), expected, atol=1e-5)
    with pytest.raises(Exception, match="not a permutation"):
        Predictor.from_model(model, device="cpu", mirror_class_order=[0, 1, 1])
