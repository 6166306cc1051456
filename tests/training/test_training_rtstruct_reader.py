"""Our RTSTRUCT reader against our writer's output and a MIM export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from peer_tools import require_shared as shared_data

from contourd.errors import TrainingError
from inference.phantom import make_phantom_series
from inference.roi_mask import AlgorithmInfo
from inference.rtstruct_writer import write_rtstruct
from inference.volume import load_series
from training.rtstruct_reader import rasterise, rasterise_roi, read_rtstruct


@pytest.mark.parametrize("position", ["HFS", "FFS", "HFP", "FFP"])
def test_writer_output_rasterises_back_to_the_same_masks(tmp_path: Path, position: str) -> None:
    # The phantom has a cavity (holes), a ring, two islands, one voxel and a thin wire.
    phantom = make_phantom_series(tmp_path / "ct", patient_position=position, shape_zyx=(8, 64, 64))
    ds = write_rtstruct(
        phantom.headers,
        phantom.rois,
        AlgorithmInfo("t", "1.0.0", None, "test"),
        structure_set_label="RT",
    )
    ds.save_as(tmp_path / "rs.dcm", enforce_file_format=True)
    volume = load_series(phantom.paths)
    structure_set = read_rtstruct(tmp_path / "rs.dcm")
    assert structure_set.referenced_series_uids == [volume.series_uid]
    masks = rasterise(structure_set, volume)
    assert set(masks) == set(phantom.masks)
    for name, mask in masks.items():
        np.testing.assert_array_equal(mask, phantom.masks[name], err_msg=name)


def test_contours_without_image_references_are_placed_by_position(tmp_path: Path) -> None:
    phantom = make_phantom_series(tmp_path / "ct", patient_position="FFS", shape_zyx=(8, 48, 48))
    ds = write_rtstruct(
        phantom.headers,
        phantom.rois,
        AlgorithmInfo("t", "1.0.0", None, "x"),
        structure_set_label="RT",
    )
    for roi_contour in ds.ROIContourSequence:
        for contour in roi_contour.get("ContourSequence", []):
            del contour.ContourImageSequence
    volume = load_series(phantom.paths)
    masks = rasterise(read_rtstruct(ds), volume)
    for name, mask in masks.items():
        np.testing.assert_array_equal(mask, phantom.masks[name], err_msg=name)


@pytest.mark.shared_data
def test_mim_export_fills_pixel_centres_inside_its_polygons() -> None:
    sample = shared_data("dicom", "rtutils-mim-phantom", "sample")
    volume = load_series(sorted(p for p in sample.glob("*.dcm") if p.name != "rt.dcm"))
    structure_set = read_rtstruct(sample / "rt.dcm")
    assert [r.name for r in structure_set.rois] == ["ROI-1", "ROI-2", "ROI-3", "ROI-4"]
    assert structure_set.referenced_series_uids == [volume.series_uid]
    inverse = np.linalg.inv(volume.affine[:3, :3])
    for roi in structure_set.rois:
        notes: list[str] = []
        mask = rasterise_roi(roi, volume, notes=notes)
        assert notes == []
        assert len(roi.contours) == 3
        for contour in roi.contours:
            crs = (contour.points_lps_mm - volume.affine[:3, 3]) @ inverse.T
            k = int(round(crs[:, 2].mean()))
            assert volume.headers[k].SOPInstanceUID == contour.referenced_sop_uid
            x, y = crs[:, 0], crs[:, 1]
            area_px = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
            # MIM draws along pixel edges: the pixels whose centres are inside
            # cover the polygon's area up to a fraction of a pixel per vertex.
            assert abs(int(mask[k].sum()) - area_px) <= 1.0, roi.name
        # Slices 3 and 4 carry no contour.
        assert not mask[3:].any()


@pytest.mark.shared_data
def test_contours_on_slices_missing_from_the_series_are_skipped_with_a_note() -> None:
    mock = shared_data("dicom", "rtutils-mim-phantom", "tests", "mock_data")
    volume = load_series([mock / "ct_1.dcm", mock / "ct_2.dcm"], min_slices=2)
    structure_set = read_rtstruct(mock / "invalid_reference_rt.dcm")
    notes: list[str] = []
    mask = rasterise_roi(structure_set.rois[0], volume, notes=notes)
    # 2 of the 5 MIM slices are present: their contours are filled, the third is noted.
    filled = [int(k) for k in np.flatnonzero(mask.any(axis=(1, 2)))]
    assert filled == [0, 1]
    assert len(notes) == 1
    assert all("not on one of the 2 image planes" in n for n in notes)


@pytest.mark.shared_data
def test_non_rtstruct_objects_are_refused() -> None:
    sample = shared_data("dicom", "rtutils-mim-phantom", "sample")
    ct = next(p for p in sample.glob("*.dcm") if p.name != "rt.dcm")
    with pytest.raises(TrainingError, match="not an RTSTRUCT"):
        read_rtstruct(pydicom.dcmread(ct))
