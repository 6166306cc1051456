"""SeriesAttributes from real headers: vendors, enhanced multi-frame, orientation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pydicom
import pytest

from contourd.errors import SeriesFilesError
from routing.series_attributes import SeriesAttributes, orientation_from_iop


def test_ge_ct_header(shared_dicom: Path) -> None:
    files = sorted((shared_dicom / "rtutils-mim-phantom" / "sample").glob("2.16.*.dcm"))
    attrs = SeriesAttributes.from_files(files, calling_ae="CTSIM1", called_ae="CONTOURD")
    assert attrs.modality == "CT"
    assert attrs.manufacturer == "GE MEDICAL SYSTEMS"
    assert attrs.series_description == "PHANTOM_EXAMPLE"
    assert attrs.protocol_name == "10.2 Daily CT QA"
    assert attrs.study_description is None  # empty in this header
    assert attrs.station_name == "ptct"
    assert attrs.image_type == ("ORIGINAL", "PRIMARY", "AXIAL")
    assert attrs.slice_thickness_mm == pytest.approx(5.0)
    assert attrs.num_images == 5
    assert attrs.orientation == "axial"
    assert attrs.patient_position == "HFS"
    assert (attrs.calling_ae, attrs.called_ae) == ("CTSIM1", "CONTOURD")


def test_siemens_ct_with_body_part_and_feet_first(shared_dicom: Path) -> None:
    ds = pydicom.dcmread(
        shared_dicom / "pydicom-data-codecs" / "data_store" / "data" / "bad_sequence.dcm",
        stop_before_pixels=True,
    )
    attrs = SeriesAttributes.from_dataset(ds)
    assert (attrs.manufacturer, attrs.body_part, attrs.patient_position) == (
        "SIEMENS",
        "NECK",
        "FFS",
    )


def test_enhanced_multiframe_mr_takes_orientation_and_thickness_from_functional_groups(
    shared_dicom: Path,
) -> None:
    folder = shared_dicom / "dicom2nifti-testdata/tests/data/philips_enhanced/anatomical/001"
    attrs = SeriesAttributes.from_files(sorted(folder.glob("*.dcm")))
    assert attrs.modality == "MR"
    assert attrs.num_images == 8
    assert attrs.orientation is not None
    assert attrs.slice_thickness_mm is not None and attrs.slice_thickness_mm > 0


def test_sagittal_mr(shared_dicom: Path) -> None:
    folder = shared_dicom / "dicom2nifti-testdata/tests/data/ge/anatomical/001"
    assert SeriesAttributes.from_files(sorted(folder.glob("*.dcm"))).orientation == "sagittal"


@pytest.mark.parametrize(
    ("iop", "expected"),
    [
        ((1, 0, 0, 0, 1, 0), "axial"),
        ((1, 0, 0, 0, 0, -1), "coronal"),
        ((0, 1, 0, 0, 0, -1), "sagittal"),
        ((1, 0, 0, 0, 0.9703, -0.2419), "axial"),  # 14 degree gantry tilt
        ((0.60883, 0.790737, 0.063724, -0.142762, 0.188227, -0.971694), "oblique"),
        (None, None),
        ((1, 0, 0, 1, 0, 0), None),  # degenerate
    ],
)
def test_orientation_from_image_orientation_patient(
    iop: tuple[float, ...] | None, expected: str | None
) -> None:
    assert orientation_from_iop(iop) == expected


def test_attributes_hold_no_patient_identifiers() -> None:
    names = {f.name for f in dataclasses.fields(SeriesAttributes)}
    assert not names & {"patient_name", "patient_id", "patient_birth_date"}


def test_no_dicom_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not dicom")
    with pytest.raises(SeriesFilesError, match=r"none of the 1 file\(s\) in .* is readable DICOM"):
        SeriesAttributes.from_files([tmp_path / "notes.txt"])
