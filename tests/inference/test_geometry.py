"""The same phantom in every patient position lands on the same anatomy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from inference_helpers import (
    LocalModel,
    body_truth_lps,
    dice,
    grid_points_lps,
    hu_lps,
    write_ct_series,
)

from inference.pipeline import segment_series
from inference.postprocess import Cleanup, probabilities_to_masks
from inference.preprocess import model_grid_for, resample_to_grid
from inference.sanity_checks import RoiExpectation, check_masks
from inference.volume import load_series

CASES = [
    ("HFS", False, 0.0),
    ("FFS", False, 0.0),
    ("HFP", False, 0.0),
    ("FFP", False, 0.0),
    ("HFS", True, 0.0),
    ("FFP", True, 0.0),
    ("HFS", False, 15.0),
]


@pytest.mark.parametrize(("position", "reverse", "tilt_deg"), CASES)
def test_body_mask_lands_on_the_phantom_body_in_every_position(
    tmp_path: Path, body_model: LocalModel, position: str, reverse: bool, tilt_deg: float
) -> None:
    written = write_ct_series(
        tmp_path, patient_position=position, reverse_file_order=reverse, tilt_deg=tilt_deg
    )
    result = segment_series(tmp_path, body_model)
    volume = result.volume
    np.testing.assert_allclose(volume.affine, written.affine, atol=1e-3)
    truth = body_truth_lps(grid_points_lps(volume.affine, volume.shape)).reshape(volume.shape)
    (body,) = result.rois
    assert body.name == "BODY"
    assert body.mask.shape == volume.shape
    assert dice(body.mask, truth) >= 0.99
    # the couch (bottom rows of every image) was removed
    assert not body.mask[:, -7:-4, :].any()


def test_sanity_check_flags_swapped_left_and_right(tmp_path: Path) -> None:
    write_ct_series(tmp_path, patient_position="HFS")
    volume = load_series(sorted(tmp_path.iterdir()))
    points = grid_points_lps(volume.affine, volume.shape)
    cavity = np.isclose(hu_lps(points), -850.0).reshape(volume.shape)  # lies at +x: patient LEFT
    assert check_masks([(RoiExpectation("Lung_L", laterality="L"), cavity)], volume) == []
    warnings = check_masks([(RoiExpectation("Lung_R", laterality="R"), cavity)], volume)
    assert len(warnings) == 1 and "left and right may be swapped" in warnings[0]
    assert "touches" not in warnings[0]


def test_sanity_check_reports_volume_out_of_range_and_fov_edge(tmp_path: Path) -> None:
    write_ct_series(tmp_path, patient_position="HFS")
    volume = load_series(sorted(tmp_path.iterdir()))
    mask = np.zeros(volume.shape, dtype=bool)
    mask[3:6, 0:5, 10:20] = True  # touches the first row
    warnings = check_masks(
        [(RoiExpectation("Parotid_L", volume_range_cc=(20.0, 50.0)), mask)], volume
    )
    assert any("12.0 cc is outside the expected range 20-50 cc" in w for w in warnings)
    assert any("touches the edge of the field of view (first row)" in w for w in warnings)


@pytest.mark.parametrize(("position", "tilt_deg"), [("HFS", 0.0), ("FFP", 0.0), ("HFP", 12.0)])
def test_probabilities_return_to_the_source_grid_on_the_same_anatomy(
    tmp_path: Path, position: str, tilt_deg: float
) -> None:
    """Model-grid probabilities of the phantom body come back onto any source grid."""
    write_ct_series(tmp_path, patient_position=position, tilt_deg=tilt_deg)
    volume = load_series(sorted(tmp_path.iterdir()))
    grid = model_grid_for(volume, (3.0, 3.0, 4.0))
    body_on_grid = body_truth_lps(grid_points_lps(grid.affine, grid.size_zyx)).reshape(
        grid.size_zyx
    )
    probs = np.stack([~body_on_grid, body_on_grid]).astype(np.float32)
    masks = probabilities_to_masks(probs, grid, volume, [1], {1: Cleanup()})
    truth = body_truth_lps(grid_points_lps(volume.affine, volume.shape)).reshape(volume.shape)
    assert dice(masks[1], truth) >= 0.97
    # and the source image lands on the same anatomy on the model grid
    hu = resample_to_grid(volume, grid, outside_value=-1024.0)
    points = grid_points_lps(grid.affine, grid.size_zyx)
    away_from_couch = (np.abs(points[:, 1]) < 90).reshape(grid.size_zyx)
    ones = np.ones(volume.shape, np.float32)
    covered = resample_to_grid(volume, grid, outside_value=0.0, array=ones) > 0.999
    region = away_from_couch & covered
    assert dice((hu > -950) & region, body_on_grid & region) >= 0.97
