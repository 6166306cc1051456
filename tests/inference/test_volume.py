"""Series to volume: real vendor/codec series load, each bad series is refused with its reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk  # noqa: N813
from inference_helpers import shared_data, write_ct_series

from contourd.errors import SeriesGeometryError
from inference.preprocess import to_sitk_image
from inference.volume import load_series

D2N = Path("dicom") / "dicom2nifti-testdata" / "tests" / "data"


def files(rel: Path | str) -> list[Path]:
    folder = shared_data() / rel
    return sorted(p for p in folder.iterdir() if p.is_file())


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("rel", "shape", "modality"),
    [
        ("dicom/rtutils-mim-phantom/sample", (5, 512, 512), "CT"),  # GE Discovery CT
        (D2N / "ge/anatomical/001", (4, 256, 256), "MR"),
        (D2N / "generic/anatomical/001_implicit", (4, 256, 256), "MR"),
        (D2N / "hitachi/anatomical/001", (4, 64, 64), "MR"),
        (D2N / "philips_enhanced/anatomical/001", (8, 256, 256), "MR"),  # Enhanced MR
        (D2N / "siemens_multiframe/anatomical/001", (8, 256, 256), "MR"),  # Enhanced MR
    ],
)
def test_real_vendor_series_load_as_volumes(rel: Path, shape: tuple, modality: str) -> None:
    volume = load_series(files(rel))
    assert volume.shape == shape
    assert volume.modality == modality
    assert len(volume.headers) == shape[0]
    assert all("PixelData" not in h for h in volume.headers)
    # slices are in increasing order along the normal
    normal = np.cross(volume.affine[:3, 0], volume.affine[:3, 1])
    along = [np.dot(volume.index_to_lps(np.array([[0, 0, k]]))[0], normal) for k in range(shape[0])]
    assert np.all(np.diff(along) > 0)


@pytest.mark.shared_data
def test_ge_ct_is_rescaled_to_hounsfield_units_and_rtstruct_is_skipped() -> None:
    volume = load_series(files("dicom/rtutils-mim-phantom/sample"))
    first = pydicom.dcmread(sorted(volume.headers, key=lambda h: 0)[0].filename)
    raw = first.pixel_array.astype(np.float32)
    k = [h.SOPInstanceUID for h in volume.headers].index(first.SOPInstanceUID)
    expected = raw * float(first.RescaleSlope) + float(first.RescaleIntercept)
    np.testing.assert_array_equal(volume.array[k], expected)
    assert any("RTSTRUCT" in note for note in volume.notes)
    # affine: origin is the first slice's ImagePositionPatient
    np.testing.assert_allclose(
        volume.affine[:3, 3], [float(v) for v in volume.headers[0].ImagePositionPatient]
    )


@pytest.mark.shared_data
@pytest.mark.parametrize(
    "case",
    [
        "generic/compressed_j2k",
        "generic/compressed_jpeg",
        "generic/compressed_jpegls",
        "generic/compressed_rle",
        "generic/anatomical",
    ],
)
def test_series_match_dicom2nifti_ground_truth_voxel_for_voxel(case: str) -> None:
    """Values AND geometry agree with an independent converter (dicom2nifti's NIfTI)."""
    volume = load_series(files(D2N / case / "001"))
    truth = sitk.ReadImage(str(shared_data() / D2N / case / "001_ground_truth.nii.gz"))
    ours = to_sitk_image(volume, reorient=None)
    on_our_grid = sitk.Resample(truth, ours, sitk.Transform(), sitk.sitkNearestNeighbor, -1.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(on_our_grid), volume.array)


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("failing/notavolume/001", r"not a volume: all 4 images lie at one position"),
        ("failing/slicecount/001", r"has 2 slice\(s\) at distinct positions; at least 3"),
        (
            "failing/sliceincrement/001",
            r"missing slices: .* 10\.00 mm where the others are 5\.00 mm \(1 slice",
        ),
        (
            "failing/sliceincrement/002",
            r"missing slices: .* 1\.50 mm where the others are 0\.75 mm",
        ),
        (
            "failing/sliceorientation/001",
            r"primary stack of 2 of 4 images \(ImageType ORIGINAL\\PRIMARY\\M_SE\\M\\SE, axial "
            r"orientation .*; set aside: 2 image\(s\) with non-axial orientation "
            r".*\): has 2 slice\(s\) at distinct positions",
        ),
        ("generic/rgb/001", r"no slice is left after dropping 0 localizer\(s\) and 4 secondary"),
        ("ge/anatomical/001_single_slice", r"has 1 slice\(s\)"),
    ],
)
def test_dicom2nifti_failing_series_are_refused_with_their_reason(case: str, expected: str) -> None:
    with pytest.raises(SeriesGeometryError, match=expected) as info:
        load_series(files(D2N / case))
    assert "series 1." in str(info.value)  # names the series UID


@pytest.mark.shared_data
def test_dicom2nifti_gantry_tilt_is_kept_on_a_sheared_grid() -> None:
    volume = load_series(files(D2N / "failing/gantrytilting/001"))
    assert volume.shape == (4, 512, 512)
    assert volume.tilt_deg == pytest.approx(14.0, abs=0.05)
    assert any("gantry tilt of 14.00 degrees" in n for n in volume.notes)
    # every slice origin is exactly where the affine puts it
    for k, header in enumerate(volume.headers):
        np.testing.assert_allclose(
            volume.index_to_lps(np.array([[0, 0, k]]))[0],
            [float(v) for v in header.ImagePositionPatient],
            atol=1e-3,
        )
    with pytest.raises(SeriesGeometryError, match=r"gantry tilt of 14\.00 degrees"):
        load_series(files(D2N / "failing/gantrytilting/001"), allow_tilt=False)


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("US1_UNCR.dcm", r"modality 'US' is not an image series"),
        ("liver.dcm", r"modality 'SEG' is not an image series"),
        ("emri_small.dcm", r"holds 10 frames without functional groups"),
        ("emri_small_jpeg_2k_lossless_too_short.dcm", r"unreadable \(empty or truncated\)"),
        ("eCT_Supplemental.dcm", r"has 2 slice\(s\)"),
    ],
)
def test_codec_corner_cases_are_refused_with_their_reason(name: str, expected: str) -> None:
    path = shared_data() / "dicom" / "pydicom-data-codecs" / "data_store" / "data" / name
    with pytest.raises(SeriesGeometryError, match=expected):
        load_series([path])


def test_unordered_files_are_sorted_along_the_slice_normal(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path, shape_zyx=(6, 32, 32), reverse_file_order=True)
    volume = load_series(written.paths[::-1])
    np.testing.assert_allclose(volume.affine, written.affine, atol=1e-4)
    numbers = [int(h.InstanceNumber) for h in volume.headers]
    assert numbers == sorted(numbers)


def test_byte_identical_duplicates_are_dropped_with_a_note(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path / "s", shape_zyx=(5, 32, 32))
    copy = tmp_path / "s" / "copy.dcm"
    shutil.copy(written.paths[2], copy)
    volume = load_series([*written.paths, copy])
    assert volume.shape == (5, 32, 32)
    assert "dropped 1 duplicate image(s) at an existing position" in volume.notes


def test_different_images_at_one_position_are_refused(tmp_path: Path) -> None:
    def shift_slice_3_onto_2(ds: pydicom.Dataset, k: int) -> None:
        if k == 3:
            ds.ImagePositionPatient = ds.ImagePositionPatient[:2] + [ds.ImagePositionPatient[2] - 5]
            ds.PixelData = bytes(len(ds.PixelData))  # a different image there

    written = write_ct_series(tmp_path, shape_zyx=(6, 32, 32), extra=shift_slice_3_onto_2)
    with pytest.raises(
        SeriesGeometryError,
        match=r"duplicated slice positions with different pixel data \(2 images at -2\.50 mm\)",
    ):
        load_series(written.paths)


def test_localizers_are_dropped_with_a_note(tmp_path: Path) -> None:
    def localizer_first(ds: pydicom.Dataset, k: int) -> None:
        if k == 0:
            ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]

    written = write_ct_series(tmp_path, shape_zyx=(6, 32, 32), extra=localizer_first)
    volume = load_series(written.paths)
    assert volume.shape == (5, 32, 32)
    assert "dropped 1 localizer/scout image(s)" in volume.notes


def test_uneven_spacing_is_refused_with_the_steps(tmp_path: Path) -> None:
    written = write_ct_series(
        tmp_path, shape_zyx=(5, 32, 32), positions_mm=[0.0, 5.0, 10.0, 13.0, 18.0]
    )
    with pytest.raises(
        SeriesGeometryError,
        match=r"uneven slice spacing: 1 of 4 steps differ from the median 5\.00 mm by more "
        r"than 0\.25 mm: 3\.00 mm between 10\.00 and 13\.00 mm; expected evenly",
    ):
        load_series(written.paths)


def test_files_from_two_series_are_refused(tmp_path: Path) -> None:
    a = write_ct_series(tmp_path / "a", shape_zyx=(3, 16, 16))
    b = write_ct_series(tmp_path / "b", shape_zyx=(3, 16, 16))
    with pytest.raises(SeriesGeometryError, match=r"belong to 2 series"):
        load_series(a.paths + b.paths)


@pytest.mark.shared_data
def test_pipeline_segments_the_real_ge_ct_with_the_body_model() -> None:
    from inference_helpers import load_body_model

    from inference.pipeline import segment_series

    result = segment_series(
        shared_data() / "dicom" / "rtutils-mim-phantom" / "sample", load_body_model()
    )
    (body,) = result.rois
    assert body.mask.shape == result.volume.shape == (5, 512, 512)
    assert 0.05 < body.mask.mean() < 0.9
    # the body voxels are tissue-dense on average, the rest is mostly air
    assert float(result.volume.array[body.mask].mean()) > -350
    assert any("RTSTRUCT" in w for w in result.warnings)
