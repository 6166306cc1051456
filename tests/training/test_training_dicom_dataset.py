"""DICOM exports become training cases; uncontoured organs are unknown, not background."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from training_helpers import CLINIC_NAMES, write_dicom_case

from contourd.errors import TrainingError
from training.datasets import dataset_format, nifti_roi_sources, split_cases
from training.dicom_dataset import find_case_files, load_dicom_dataset, load_source_cases
from training.evaluate import load_nifti_source_case
from training.roi_mapping import RoiNameMapper

ROIS = ["Parotid_L", "Parotid_R", "SpinalCord"]


def test_dicom_export_gives_cases_with_mapped_rois_and_unknown_organs(tmp_path: Path) -> None:
    truth = write_dicom_case(tmp_path / "a", 1)
    write_dicom_case(tmp_path / "b", 2, drop=("Cord",))
    write_dicom_case(tmp_path / "c", 3, empty=("RT_Parotid",))
    sources = load_source_cases(tmp_path, ROIS)
    assert [s.case_id for s in sources] == ["a", "b", "c"]
    assert set(sources[0].masks) == set(ROIS)
    for exported, target in CLINIC_NAMES.items():
        np.testing.assert_array_equal(sources[0].masks[target], truth[exported])
    assert set(sources[1].masks) == {"Parotid_L", "Parotid_R"}
    assert set(sources[2].masks) == {"Parotid_L", "SpinalCord"}
    assert any("no contour" in n for n in sources[2].notes)

    cases = load_dicom_dataset(tmp_path, ROIS, (4.0, 4.0, 5.0))
    assert [c.known.tolist() for c in cases] == [
        [True, True, True, True],
        [True, True, True, False],
        [True, True, False, True],
    ]
    # Same spacing as the CT: the label map is the masks, label k = ROIS[k-1].
    labels = cases[0].labels
    assert labels.shape == (16, 48, 48) and cases[0].image_hu.dtype == np.int16
    for k, name in enumerate(ROIS, start=1):
        np.testing.assert_array_equal(labels == k, sources[0].masks[name])


def test_resampling_to_a_coarser_grid_keeps_organ_volumes(tmp_path: Path) -> None:
    write_dicom_case(tmp_path / "a", 4, spacing_mm=(2.0, 2.0, 2.5), shape_zyx=(24, 64, 64))
    source = load_source_cases(tmp_path, ROIS)[0]
    case = load_dicom_dataset(tmp_path, ROIS, (4.0, 4.0, 5.0))[0]
    # The parotids are 4-5 coarse voxels across (the 3-voxel cord is too thin for this check).
    for k, name in enumerate(ROIS[:2], start=1):
        ref_cc = source.masks[name].sum() * 2 * 2 * 2.5 / 1000
        got_cc = (case.labels == k).sum() * 4 * 4 * 5 / 1000
        assert got_cc == pytest.approx(ref_cc, rel=0.15), name


def test_case_folder_without_rtstruct_is_refused_with_the_fix(tmp_path: Path) -> None:
    write_dicom_case(tmp_path / "a", 1)
    (tmp_path / "a" / "RS" / "rtstruct.dcm").unlink()
    with pytest.raises(TrainingError, match="holds no RTSTRUCT; export the structure set"):
        find_case_files(tmp_path / "a")


def test_formats_are_detected(tmp_path: Path) -> None:
    write_dicom_case(tmp_path / "dicom" / "a", 1)
    assert dataset_format(tmp_path / "dicom") == "dicom"
    nifti = tmp_path / "nifti" / "pt_1"
    nifti.mkdir(parents=True)
    sitk.WriteImage(sitk.Image(8, 8, 4, sitk.sitkInt16), str(nifti / "ct.nii.gz"))
    assert dataset_format(tmp_path / "nifti") == "nifti"
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingError, match="neither a NIfTI dataset"):
        dataset_format(tmp_path / "empty")


def test_nifti_case_maps_openkbp_file_names_to_tg263(tmp_path: Path) -> None:
    case = tmp_path / "pt_7"
    case.mkdir()
    ct = sitk.GetImageFromArray(np.full((4, 8, 8), 40, np.int16))
    ct.SetSpacing((3.9, 3.9, 2.5))
    ct.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))
    sitk.WriteImage(ct, str(case / "ct.nii.gz"))
    left = np.zeros((4, 8, 8), np.uint8)
    left[1:3, 2:5, 5:7] = 1
    mask = sitk.GetImageFromArray(left)
    mask.CopyInformation(ct)
    sitk.WriteImage(mask, str(case / "LeftParotid.nii.gz"))
    sitk.WriteImage(mask, str(case / "Mandible.nii.gz"))
    source = load_nifti_source_case(case, RoiNameMapper(["Parotid_L", "Bone_Mandible", "Larynx"]))
    assert set(source.masks) == {"Parotid_L", "Bone_Mandible"}
    np.testing.assert_array_equal(source.masks["Parotid_L"], left > 0)
    assert source.volume.spacing_mm == pytest.approx((3.9, 3.9, 2.5))
    assert source.volume.affine[2, 2] == pytest.approx(-2.5)
    assert nifti_roi_sources(tmp_path, ["Parotid_L", "Bone_Mandible"]) == [
        ["LeftParotid"],
        ["Mandible"],
    ]


def test_split_is_seeded_and_keeps_a_case_on_each_side(tmp_path: Path) -> None:
    from training.openkbp_dataset import TrainingCase

    cases = [TrainingCase(f"c{i}", np.zeros((1, 1, 1), np.int16), np.zeros((1, 1, 1), np.uint8),
                          np.ones(2, bool)) for i in range(10)]  # fmt: skip
    train, val = split_cases(cases, 0.2, seed=1)
    assert len(train) == 8 and len(val) == 2
    assert [c.case_id for c in split_cases(cases, 0.2, seed=1)[1]] == [c.case_id for c in val]
    assert len(split_cases(cases[:2], 0.9, seed=1)[0]) == 1
    with pytest.raises(TrainingError, match="at least 2"):
        split_cases(cases[:1], 0.2, seed=1)
