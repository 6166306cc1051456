"""RTSTRUCT content: labelling, references, DS lengths, validation of input."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from contourd.errors import OutputWriterError
from inference.phantom import PhantomSeries
from inference.roi_mask import AlgorithmInfo
from inference.rtstruct_writer import format_ds_groups, write_rtstruct


def walk(ds: Dataset) -> Iterator[pydicom.DataElement]:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from walk(item)
        else:
            yield elem


@pytest.fixture
def written(
    phantom_factory: Callable[..., PhantomSeries], algorithm: AlgorithmInfo, tmp_path: Path
) -> tuple[PhantomSeries, Dataset]:
    phantom = phantom_factory("FFS")
    ds = write_rtstruct(phantom.headers, phantom.rois, algorithm, structure_set_label="Auto H&N")
    path = tmp_path / "RS.dcm"
    ds.save_as(path, enforce_file_format=True)
    return phantom, pydicom.dcmread(path)


def test_rtstruct_is_labelled_automatic_unapproved_with_model(
    written: tuple[PhantomSeries, Dataset],
) -> None:
    _, ds = written
    assert ds.ApprovalStatus == "UNAPPROVED"
    assert ds.SeriesDescription == "AUTOMATIC contours (unapproved) - phantom-model 1.2.3"
    assert ds.Manufacturer == "contourd"
    assert list(ds.SoftwareVersions) == ["contourd 0.1.0", "phantom-model 1.2.3"]
    assert ds.StructureSetLabel == "Auto H&N"
    for item in ds.StructureSetROISequence:
        assert item.ROIGenerationAlgorithm == "AUTOMATIC"
        assert item.ROIGenerationDescription == "phantom-model 1.2.3 sha256:0123456789abcdef"
        algo = item.ROIDerivationAlgorithmIdentificationSequence[0]
        assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("phantom-model", "1.2.3")
        assert "weights_sha256=" + "0123456789abcdef" * 4 in algo.AlgorithmParameters


def test_patient_study_and_frame_of_reference_come_from_the_source(
    written: tuple[PhantomSeries, Dataset],
) -> None:
    phantom, ds = written
    src = phantom.headers[0]
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        assert ds[keyword].value == src[keyword].value
    assert ds.StudyInstanceUID == src.StudyInstanceUID
    assert ds.SpecificCharacterSet == src.SpecificCharacterSet
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == src.FrameOfReferenceUID
    study = frame.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == src.StudyInstanceUID
    series = study.RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == src.SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in series.ContourImageSequence] == [
        h.SOPInstanceUID for h in phantom.headers
    ]


def test_every_contour_lies_in_the_plane_of_the_image_it_references(
    written: tuple[PhantomSeries, Dataset],
) -> None:
    phantom, ds = written
    by_uid = {h.SOPInstanceUID: h for h in phantom.headers}
    normal = np.cross(
        np.array(phantom.headers[0].ImageOrientationPatient[:3], dtype=float),
        np.array(phantom.headers[0].ImageOrientationPatient[3:], dtype=float),
    )
    n_contours = 0
    for roi in ds.ROIContourSequence:
        for contour in roi.ContourSequence:
            header = by_uid[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            points = np.array(contour.ContourData, dtype=float).reshape(-1, 3)
            assert len(points) == contour.NumberOfContourPoints >= 4
            offsets = (points - np.array(header.ImagePositionPatient, dtype=float)) @ normal
            assert np.abs(offsets).max() < 1e-3
            n_contours += 1
    assert n_contours > 20


def test_all_decimal_strings_fit_sixteen_characters(
    written: tuple[PhantomSeries, Dataset],
) -> None:
    _, ds = written
    ds_values = [e for e in walk(ds) if e.VR in ("DS", "IS")]
    assert ds_values
    for elem in ds_values:
        values = elem.value if isinstance(elem.value, pydicom.multival.MultiValue) else [elem.value]
        for v in values:
            assert len(str(v)) <= 16, (elem.keyword, v)


def test_colours_types_and_names_are_written_as_given(
    written: tuple[PhantomSeries, Dataset],
) -> None:
    phantom, ds = written
    for roi, ss, contour, obs in zip(
        phantom.rois,
        ds.StructureSetROISequence,
        ds.ROIContourSequence,
        ds.RTROIObservationsSequence,
        strict=True,
    ):
        assert ss.ROINumber == contour.ReferencedROINumber == obs.ReferencedROINumber == roi.label
        assert ss.ROIName == roi.name
        assert list(contour.ROIDisplayColor) == list(roi.color_rgb)
        assert obs.RTROIInterpretedType == roi.interpreted_type


def test_hole_slices_have_inner_contours(written: tuple[PhantomSeries, Dataset]) -> None:
    phantom, ds = written
    ring_index = [r.name for r in phantom.rois].index("Ring")
    contours = ds.ROIContourSequence[ring_index].ContourSequence
    per_image: dict[str, int] = {}
    for c in contours:
        uid = c.ContourImageSequence[0].ReferencedSOPInstanceUID
        per_image[uid] = per_image.get(uid, 0) + 1
    assert per_image and all(n == 2 for n in per_image.values())


def test_site_uid_root_is_used_for_new_uids(
    phantom_factory: Callable[..., PhantomSeries], algorithm: AlgorithmInfo
) -> None:
    phantom = phantom_factory("HFS")
    ds = write_rtstruct(
        phantom.headers, phantom.rois[:1], algorithm, structure_set_label="x", uid_root="1.2.3.4"
    )
    assert ds.SOPInstanceUID.startswith("1.2.3.4.")
    assert ds.SeriesInstanceUID.startswith("1.2.3.4.")
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    with pytest.raises(OutputWriterError, match="UID root"):
        write_rtstruct(
            phantom.headers, phantom.rois[:1], algorithm, structure_set_label="x", uid_root="1.02.x"
        )


def test_non_latin_roi_name_switches_to_utf8(
    phantom_factory: Callable[..., PhantomSeries], algorithm: AlgorithmInfo, tmp_path: Path
) -> None:
    phantom = phantom_factory("HFS")
    roi = replace(phantom.rois[1], name="Желудок")
    ds = write_rtstruct(phantom.headers, [roi], algorithm, structure_set_label="x")
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    ds.save_as(tmp_path / "rs.dcm", enforce_file_format=True)
    assert pydicom.dcmread(tmp_path / "rs.dcm").StructureSetROISequence[0].ROIName == "Желудок"


def test_empty_roi_is_kept_without_contours(
    phantom_factory: Callable[..., PhantomSeries], algorithm: AlgorithmInfo
) -> None:
    phantom = phantom_factory("HFS")
    empty = replace(phantom.rois[0], mask=np.zeros_like(phantom.rois[0].mask))
    ds = write_rtstruct(phantom.headers, [empty], algorithm, structure_set_label="x")
    assert ds.StructureSetROISequence[0].ROIName == "BODY"
    assert "ContourSequence" not in ds.ROIContourSequence[0]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"mask": np.zeros((2, 2, 2), dtype=bool)}, "shape"),
        ({"label": 0}, "label"),
        ({"color_rgb": (0, 0, 300)}, "colour"),
        ({"name": "Parotid\\L"}, "backslash"),
    ],
)
def test_bad_roi_input_is_refused_with_a_clear_error(
    phantom_factory: Callable[..., PhantomSeries],
    algorithm: AlgorithmInfo,
    change: dict[str, object],
    match: str,
) -> None:
    phantom = phantom_factory("HFS")
    roi = replace(phantom.rois[0], **change)  # type: ignore[arg-type]
    with pytest.raises(OutputWriterError, match=match):
        write_rtstruct(phantom.headers, [roi], algorithm, structure_set_label="x")


def test_duplicate_roi_names_are_refused(
    phantom_factory: Callable[..., PhantomSeries], algorithm: AlgorithmInfo
) -> None:
    phantom = phantom_factory("HFS")
    twin = replace(phantom.rois[1], name=phantom.rois[0].name)
    with pytest.raises(OutputWriterError, match="used twice"):
        write_rtstruct(phantom.headers, [phantom.rois[0], twin], algorithm, structure_set_label="x")


def test_headers_in_file_order_instead_of_slice_order_are_refused(
    phantom_factory: Callable[..., PhantomSeries], algorithm: AlgorithmInfo
) -> None:
    phantom = phantom_factory("HFS")
    with pytest.raises(OutputWriterError, match="not sorted"):
        write_rtstruct(phantom.headers[::-1], phantom.rois, algorithm, structure_set_label="x")


def test_long_labels_are_truncated_to_their_value_representation(
    phantom_factory: Callable[..., PhantomSeries], algorithm: AlgorithmInfo
) -> None:
    phantom = phantom_factory("HFS")
    ds = write_rtstruct(phantom.headers, phantom.rois[:1], algorithm, structure_set_label="A" * 40)
    assert ds.StructureSetLabel == "A" * 16


def test_decimal_strings_are_short_fixed_point_and_parse_back() -> None:
    values = np.array([0.0, -0.00004, -0.5, 123.45, -99999.99995, 12.000049, 99999.25, -7.0])
    (encoded,) = format_ds_groups(values, np.array([0, values.size]))
    text = encoded.decode("ascii").rstrip(" ")
    parts = text.split("\\")
    assert parts[:4] == ["0", "0", "-0.5", "123.45"]
    assert all(len(p) <= 16 for p in parts)
    assert len(encoded) % 2 == 0
    assert np.allclose([float(p) for p in parts], values, atol=5e-5)


def test_decimal_strings_refuse_absurd_coordinates() -> None:
    with pytest.raises(OutputWriterError, match="beyond"):
        format_ds_groups(np.array([1.0, 1e5]), np.array([0, 2]))


@pytest.mark.parametrize("implicit_vr", [True, False])
def test_network_encoding_in_either_vr_keeps_every_contour_point(
    implicit_vr: bool, phantom_factory: Callable[..., PhantomSeries], algorithm: AlgorithmInfo
) -> None:
    """C-STORE may negotiate Implicit VR: the pre-encoded Contour Data must survive it."""
    from pynetdicom.dsutils import decode, encode

    phantom = phantom_factory("HFP")

    def points(ds: Dataset) -> list[list[float]]:
        return [
            [float(v) for v in c.ContourData]
            for roi in ds.ROIContourSequence
            for c in roi.get("ContourSequence", [])
        ]

    expected = points(
        write_rtstruct(phantom.headers, phantom.rois, algorithm, structure_set_label="x")
    )
    ds = write_rtstruct(phantom.headers, phantom.rois, algorithm, structure_set_label="x")
    encoded = encode(ds, implicit_vr, True)
    assert encoded is not None
    back = decode(io.BytesIO(encoded), implicit_vr, True)
    assert points(back) == expected
    assert len(expected) > 20


def test_each_roi_names_the_model_that_drew_it_when_models_are_merged(
    phantom_factory: Callable[..., PhantomSeries], algorithm: AlgorithmInfo
) -> None:
    phantom = phantom_factory("HFS")
    organ_model = AlgorithmInfo("hn-oar", "1.0.0", "ab" * 32, "0.1.0")
    rois = [phantom.rois[0], replace(phantom.rois[1], algorithm=organ_model)]
    ds = write_rtstruct(phantom.headers, rois, algorithm, structure_set_label="AUTO")
    first, second = ds.StructureSetROISequence
    assert first.ROIGenerationDescription.startswith(
        f"{algorithm.model_name} {algorithm.model_version}"
    )
    assert second.ROIGenerationDescription == "hn-oar 1.0.0 sha256:abababababababab"
    [ident] = second.ROIDerivationAlgorithmIdentificationSequence
    assert ident.AlgorithmName == "hn-oar"
    assert f"weights_sha256={'ab' * 32}" in ident.AlgorithmParameters
