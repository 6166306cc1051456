"""Round trip through an independent reader: plastimatch rasterises our RTSTRUCT.

plastimatch tests pixel centres against each polygon. By default it ORs the
polygons of a slice (holes are filled); with ``--xor-contours`` it applies
the even-odd rule that Eclipse, RayStation and Monaco use. Our contours lie
on voxel edges, so the XOR round trip is exact; see docs/rtstruct.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from writer_helpers import dice, mask_on_grid, require_shared, run_plastimatch

from inference.phantom import PhantomSeries, affine_from_sitk, write_ct_series
from inference.roi_mask import AlgorithmInfo, RoiMask
from inference.rtstruct_writer import write_rtstruct

pytestmark = pytest.mark.interop


def assert_round_trip(
    phantom: PhantomSeries,
    rois: list[RoiMask],
    algorithm: AlgorithmInfo,
    work: Path,
    *,
    smoothing_fraction: float = 0.0,
) -> dict[str, float]:
    ds = write_rtstruct(
        phantom.headers,
        rois,
        algorithm,
        structure_set_label="roundtrip",
        smoothing_fraction=smoothing_fraction,
    )
    rs_path = work / "RS.dcm"
    ds.save_as(rs_path, enforce_file_format=True)
    outputs = run_plastimatch(rs_path, phantom.directory, work / "out", xor_contours=True)
    scores = {}
    for roi in rois:
        assert roi.name in outputs, f"plastimatch wrote no mask for {roi.name}: {outputs}"
        theirs = mask_on_grid(outputs[roi.name], phantom.affine, roi.mask.shape)
        ours = roi.mask
        score = dice(theirs, ours)
        volume_ratio = theirs.sum() / ours.sum()
        assert score >= 0.98, f"{roi.name}: Dice {score:.4f}"
        assert abs(volume_ratio - 1) <= 0.02, f"{roi.name}: volume ratio {volume_ratio:.4f}"
        scores[roi.name] = score
    return scores


@pytest.mark.parametrize("position", ["HFS", "FFS", "HFP", "FFP"])
def test_plastimatch_reads_back_our_masks_in_every_patient_position(
    position: str,
    phantom_factory: Callable[..., PhantomSeries],
    algorithm: AlgorithmInfo,
    tmp_path: Path,
) -> None:
    phantom = phantom_factory(position, reverse_file_order=position in ("FFS", "HFP"))
    scores = assert_round_trip(phantom, phantom.rois, algorithm, tmp_path)
    # voxel-edge contours + pixel-centre rasteriser: exact, not just >= 0.98
    assert all(s == 1.0 for s in scores.values()), scores


def test_light_smoothing_still_round_trips(
    phantom_factory: Callable[..., PhantomSeries], algorithm: AlgorithmInfo, tmp_path: Path
) -> None:
    phantom = phantom_factory("HFS")
    assert_round_trip(phantom, phantom.rois, algorithm, tmp_path, smoothing_fraction=0.25)


def test_plastimatch_default_or_mode_fills_holes_but_keeps_solid_rois(
    phantom_factory: Callable[..., PhantomSeries], algorithm: AlgorithmInfo, tmp_path: Path
) -> None:
    """Documents the reader convention: without --xor-contours holes are filled."""
    phantom = phantom_factory("HFS")
    ds = write_rtstruct(phantom.headers, phantom.rois, algorithm, structure_set_label="or")
    ds.save_as(tmp_path / "RS.dcm", enforce_file_format=True)
    outputs = run_plastimatch(
        tmp_path / "RS.dcm", phantom.directory, tmp_path / "o", xor_contours=False
    )
    for roi in phantom.rois:
        theirs = mask_on_grid(outputs[roi.name], phantom.affine, roi.mask.shape)
        if roi.name == "Ring":
            assert theirs.sum() > roi.mask.sum() * 1.2  # the ring's hole became solid
            assert np.all(theirs[roi.mask])
        elif roi.name in ("BODY", "Kidneys", "Marker", "Wire"):
            assert np.array_equal(theirs, roi.mask), roi.name


@pytest.mark.slow
@pytest.mark.shared_data
def test_openkbp_case_round_trips_through_dicom_ct(
    algorithm: AlgorithmInfo, tmp_path: Path
) -> None:
    case = require_shared("openkbp/validation-pats/pt_201")
    ct = sitk.ReadImage(str(case / "ct.nii.gz"))
    volume = sitk.GetArrayFromImage(ct)
    organs = sorted(p.name.removesuffix(".nii.gz") for p in case.glob("*.nii.gz"))
    organs.remove("ct")
    masks = {
        name: sitk.GetArrayFromImage(sitk.ReadImage(str(case / f"{name}.nii.gz"))) > 0
        for name in organs
    }
    series = write_ct_series(
        tmp_path / "ct", volume, affine_from_sitk(ct), masks=masks, patient_position="HFS"
    )
    rois = [
        RoiMask(
            name=name,
            mask=series.masks[name],
            color_rgb=(255, 0, 0),
            interpreted_type="ORGAN",
            label=i,
        )
        for i, name in enumerate(organs, start=1)
        if series.masks[name].any()
    ]
    assert len(rois) >= 5
    scores = assert_round_trip(series, rois, algorithm, tmp_path)
    assert min(scores.values()) == 1.0, scores
