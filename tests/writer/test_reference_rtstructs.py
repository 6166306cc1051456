"""Field-by-field comparison with clinical RTSTRUCTs (MIM 7.0.3 and Varian).

Every public attribute (with its path through sequences) that the reference
file has must be in ours with the same VR, unless it is a deliberate
difference listed here and in docs/rtstruct.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from writer_helpers import require_shared

from inference.phantom import PhantomSeries
from inference.roi_mask import AlgorithmInfo
from inference.rtstruct_writer import write_rtstruct

pytestmark = pytest.mark.shared_data

REFERENCES = {
    "MIM": "dicom/rtutils-mim-phantom/sample/rt.dcm",
    "Varian": "dicom/dicompyler-core-breast/tests/testdata/example_data/rtss.dcm",
}

#: Attributes the references have and we leave out on purpose (reason in docs/rtstruct.md).
DELIBERATELY_ABSENT = {
    "InstitutionName": "General Equipment describes contourd, not the scanner's site",
    "StationName": "idem",
    "DeviceSerialNumber": "idem (type 3)",
    "PatientAge": "Patient Study (type 3) describes the imaging visit; not copied",
    "PatientSize": "idem",
    "PatientWeight": "idem",
    "RTROIObservationsSequence/ROIObservationDescription": "MIM display settings",
    "RTROIObservationsSequence/ROIPhysicalPropertiesSequence": "no density overrides",
    "RTROIObservationsSequence/ROIPhysicalPropertiesSequence/ROIPhysicalProperty": "idem",
    "RTROIObservationsSequence/ROIPhysicalPropertiesSequence/ROIPhysicalPropertyValue": "idem",
    "RTROIObservationsSequence/RTROIIdentificationCodeSequence": "no coded ROI identity yet",
    "RTROIObservationsSequence/RTROIIdentificationCodeSequence/CodeValue": "idem",
    "RTROIObservationsSequence/RTROIIdentificationCodeSequence/CodingSchemeDesignator": "idem",
    "RTROIObservationsSequence/RTROIIdentificationCodeSequence/CodeMeaning": "idem",
    "ReviewDate": "only for APPROVED structure sets; ours are UNAPPROVED",
    "ReviewTime": "idem",
    "ReviewerName": "idem",
}


def attribute_paths(ds: Dataset, prefix: str = "") -> dict[str, str]:
    """Public attribute paths ('Seq/Seq/Keyword') -> VR, over all sequence items."""
    out: dict[str, str] = {}
    for elem in ds:
        if elem.tag.is_private:
            continue
        path = prefix + (elem.keyword or str(elem.tag))
        out[path] = elem.VR
        if elem.VR == "SQ":
            for item in elem.value:
                out.update(attribute_paths(item, path + "/"))
    return out


@pytest.fixture
def ours(
    phantom_factory: Callable[..., PhantomSeries], algorithm: AlgorithmInfo, tmp_path: Path
) -> Dataset:
    phantom = phantom_factory("HFS")
    rois = [replace(r, tg263_name=r.name) for r in phantom.rois]
    ds = write_rtstruct(phantom.headers, rois, algorithm, structure_set_label="compare")
    ds.save_as(tmp_path / "RS.dcm", enforce_file_format=True)
    return pydicom.dcmread(tmp_path / "RS.dcm")


@pytest.mark.parametrize("vendor", sorted(REFERENCES))
def test_we_write_every_attribute_the_clinical_file_has_or_list_why_not(
    vendor: str, ours: Dataset
) -> None:
    reference = pydicom.dcmread(require_shared(REFERENCES[vendor]))
    theirs = attribute_paths(reference)
    mine = attribute_paths(ours)
    missing = sorted(set(theirs) - set(mine) - set(DELIBERATELY_ABSENT))
    assert missing == [], f"{vendor} has attributes we neither write nor list: {missing}"
    vr_mismatch = {p: (theirs[p], mine[p]) for p in set(theirs) & set(mine) if theirs[p] != mine[p]}
    assert vr_mismatch == {}


def test_deliberate_absences_are_real_differences(ours: Dataset) -> None:
    union: set[str] = set()
    for relative in REFERENCES.values():
        union |= set(attribute_paths(pydicom.dcmread(require_shared(relative))))
    mine = set(attribute_paths(ours))
    assert set(DELIBERATELY_ABSENT) <= union, "stale entry: no reference has it"
    assert not set(DELIBERATELY_ABSENT) & mine, "listed as absent but we write it"


@pytest.mark.parametrize("vendor", sorted(REFERENCES))
def test_shared_values_follow_the_clinical_conventions(vendor: str, ours: Dataset) -> None:
    reference = pydicom.dcmread(require_shared(REFERENCES[vendor]))
    assert ours.Modality == reference.Modality == "RTSTRUCT"
    assert ours.SOPClassUID == reference.SOPClassUID
    ref_contour = reference.ROIContourSequence[0].ContourSequence[0]
    our_contour = ours.ROIContourSequence[0].ContourSequence[0]
    assert our_contour.ContourGeometricType == ref_contour.ContourGeometricType == "CLOSED_PLANAR"
    assert len(our_contour.ContourData) == 3 * our_contour.NumberOfContourPoints
    assert len(ref_contour.ContourData) == 3 * ref_contour.NumberOfContourPoints
    assert (
        our_contour.ContourImageSequence[0].ReferencedSOPClassUID
        == ref_contour.ContourImageSequence[0].ReferencedSOPClassUID
    )
    assert len(ours.ROIContourSequence[0].ROIDisplayColor) == 3
    # the one thing we must differ in: who made the contours and their status
    assert {r.ROIGenerationAlgorithm for r in reference.StructureSetROISequence} == {"MANUAL"}
    assert {r.ROIGenerationAlgorithm for r in ours.StructureSetROISequence} == {"AUTOMATIC"}
    assert ours.ApprovalStatus == "UNAPPROVED"
