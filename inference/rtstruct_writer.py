"""Masks on the source grid to an RT Structure Set (pydicom dataset).

Geometry: contours are traced on voxel edges by
:mod:`inference.contour_extraction` and mapped to DICOM LPS mm through each
slice's ImagePositionPatient, ImageOrientationPatient and PixelSpacing, so a
pixel-centre rasteriser (plastimatch, Eclipse, RayStation...) gets the mask
back voxel for voxel. Holes are separate contours (even-odd / XOR rule).

Labelling: ROI Generation Algorithm AUTOMATIC, Approval Status UNAPPROVED,
the model name, version and weights sha256 in ROI Generation Description and
ROI Derivation Algorithm Identification Sequence, and a Series Description
that says so. See docs/rtstruct.md.
"""

from __future__ import annotations

import codecs
import datetime as dt
import functools
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pydicom
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid
from pydicom.valuerep import IS

from contourd.errors import OutputWriterError
from inference.contour_extraction import SliceGeometry, smooth_contours, trace_mask
from inference.roi_mask import AlgorithmInfo, RoiMask

logger = logging.getLogger(__name__)

MANUFACTURER = "contourd"
#: Referenced SOP Class UID of the RT Referenced Study Sequence item, as MIM
#: and most planning systems write it (Detached Study Management, retired).
DETACHED_STUDY_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"
#: Largest |coordinate| we write, in mm (100 m; keeps every DS value <= 12 chars).
MAX_ABS_COORDINATE_MM = 1.0e5
_CONTOUR_DATA_TAG = Tag(0x3006, 0x0050)
_CONTOUR_IMAGE_SEQUENCE_TAG = Tag(0x3006, 0x0016)
_CONTOUR_GEOMETRIC_TYPE_TAG = Tag(0x3006, 0x0042)
_NUMBER_OF_CONTOUR_POINTS_TAG = Tag(0x3006, 0x0046)
_CONTOUR_NUMBER_TAG = Tag(0x3006, 0x0048)
_REFERENCED_SOP_CLASS_UID_TAG = Tag(0x0008, 0x1150)
_REFERENCED_SOP_INSTANCE_UID_TAG = Tag(0x0008, 0x1155)
_UID_ROOT_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.?$")

# Source attributes copied verbatim when present (Patient, General Study modules).
_PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)
_TYPE2_EMPTY_IF_MISSING = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


@functools.cache
def _digit_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Characters and keep-masks for 0..100000 (6 integer digits, no leading zeros)
    and 0..9999 ('.' + 4 decimals, no trailing zeros; nothing for 0)."""
    ints = np.arange(100001)
    int_chars = np.stack([(ints // 10**p) % 10 + 48 for p in range(5, -1, -1)], 1)
    int_keep = np.stack([(ints >= 10**p) for p in range(5, -1, -1)], 1)
    int_keep[:, 5] = True
    fracs = np.arange(10000)
    frac_chars = np.stack(
        [np.full(10000, ord("."))] + [(fracs // 10**p) % 10 + 48 for p in range(3, -1, -1)], 1
    )
    # decimal k (0-based) is needed while a non-zero digit remains at or after it
    frac_keep = np.stack([fracs % 10 ** (4 - k) != 0 for k in range(4)], 1)
    frac_keep = np.concatenate([frac_keep[:, :1], frac_keep], axis=1)  # '.' iff any decimal
    return (
        int_chars.astype(np.uint8),
        int_keep,
        frac_chars.astype(np.uint8),
        frac_keep,
    )


_INT_LEN = _digit_tables()[1].sum(axis=1)
_FRAC_LEN = _digit_tables()[3].sum(axis=1)


def format_ds_groups(values: np.ndarray, group_offsets: np.ndarray) -> list[bytes]:
    """Format floats as DICOM DS multi-values, one byte string per group.

    Each value is rounded to 0.1 micrometre (4 decimals), written fixed-point
    without trailing zeros (``-12.5``, ``0``, ``103.0625``), at most 12
    characters, well within the 16 that DS allows. Values are separated by
    backslashes; each group is padded with a trailing space to even length.

    Parameters
    ----------
    values : numpy.ndarray
        1-D float values (mm).
    group_offsets : numpy.ndarray
        ``(G + 1,)`` offsets into ``values``; group ``g`` is
        ``values[group_offsets[g]:group_offsets[g + 1]]`` (non-empty).

    Raises
    ------
    OutputWriterError
        A value is not finite or larger than ``MAX_ABS_COORDINATE_MM``.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    n = values.size
    if n == 0:
        return []
    if not np.all(np.isfinite(values)) or np.abs(values).max() >= MAX_ABS_COORDINATE_MM:
        bad = values[~np.isfinite(values) | (np.abs(values) >= MAX_ABS_COORDINATE_MM)][0]
        raise OutputWriterError(
            f"contour coordinate {bad!r} mm is not finite or beyond +-{MAX_ABS_COORDINATE_MM:g} "
            "mm; check ImagePositionPatient/PixelSpacing of the source series"
        )
    # Integer units of 1e-4 mm; |value| < 1e5 mm keeps them in int32. Digits come
    # from lookup tables (gathers are much cheaper than ten integer divisions).
    int_chars, int_keep, frac_chars, frac_keep = _digit_tables()
    q = np.rint(values * 1e4).astype(np.int32)
    int_part, frac = np.divmod(np.abs(q), 10000)
    negative = q < 0
    chars = np.empty((n, 13), dtype=np.uint8)
    keep = np.empty((n, 13), dtype=bool)
    chars[:, 0] = ord("-")
    keep[:, 0] = negative
    chars[:, 1:7] = int_chars[int_part]
    keep[:, 1:7] = int_keep[int_part]
    chars[:, 7:12] = frac_chars[frac]
    keep[:, 7:12] = frac_keep[frac]
    chars[:, 12] = ord("\\")
    keep[:, 12] = True
    ends = group_offsets[1:] - 1
    keep[ends, 12] = False
    flat = chars[keep].tobytes()
    lengths = negative.astype(np.int64) + _INT_LEN[int_part] + _FRAC_LEN[frac] + 1
    lengths[ends] -= 1
    char_offsets = np.r_[0, np.cumsum(lengths)]
    out = []
    for b0, b1 in zip(
        char_offsets[group_offsets[:-1]], char_offsets[group_offsets[1:]], strict=True
    ):
        chunk = flat[b0:b1]
        out.append(chunk + b" " if len(chunk) % 2 else chunk)
    return out


def _uid_factory(uid_root: str | None) -> str | None:
    """Validate a UID root and return it as a prefix ending in '.' (None = pydicom's root)."""
    if uid_root is None:
        return None
    if not _UID_ROOT_RE.match(uid_root) or len(uid_root.rstrip(".")) > 40:
        raise OutputWriterError(
            f"UID root {uid_root!r} is not a valid UID prefix of at most 40 characters "
            "(digits and dots, no leading zeros); set the site's registered root, e.g. "
            "'1.2.826.0.1.3680043.10.1234'"
        )
    return uid_root if uid_root.endswith(".") else uid_root + "."


def _fit(value: str, max_len: int, what: str) -> str:
    if len(value) > max_len:
        logger.warning("%s %r is longer than %d characters; truncated", what, value, max_len)
        return value[:max_len]
    return value


def _character_set(source: Dataset, texts: Sequence[str]) -> str | list[str]:
    """Keep the source's Specific Character Set unless our texts need UTF-8."""
    charset = source.get("SpecificCharacterSet", "ISO_IR 6") or "ISO_IR 6"
    terms = list(charset) if isinstance(charset, pydicom.multival.MultiValue) else [charset]
    if len(terms) > 1:  # ISO 2022 code extensions: leave as the source wrote it
        return terms
    python_codec = convert_encodings(terms)[0]
    try:
        codecs.lookup(python_codec)
        for text in texts:
            text.encode(python_codec)
    except (LookupError, UnicodeEncodeError):
        logger.info("ROI text not encodable in %s; writing the RTSTRUCT as ISO_IR 192", charset)
        return "ISO_IR 192"
    return str(charset)


def _check_rois(rois: Sequence[RoiMask], shape: tuple[int, int, int]) -> None:
    seen_numbers: set[int] = set()
    seen_names: set[str] = set()
    for roi in rois:
        if roi.mask.shape != shape:
            raise OutputWriterError(
                f"ROI {roi.name!r} mask has shape {roi.mask.shape}; expected {shape} "
                "(slices, rows, columns of the source series); resample it to the source grid"
            )
        if roi.label in seen_numbers or roi.label < 1:
            raise OutputWriterError(
                f"ROI {roi.name!r} has label {roi.label}; labels must be unique integers >= 1 "
                "(they become ROI Numbers); fix the model card"
            )
        if roi.name in seen_names or not roi.name.strip():
            raise OutputWriterError(
                f"ROI name {roi.name!r} is empty or used twice; planning systems reject "
                "duplicate names; rename it in the model store"
            )
        if "\\" in roi.name or any(ord(ch) < 32 for ch in roi.name):
            raise OutputWriterError(
                f"ROI name {roi.name!r} contains a backslash or control character, which "
                "DICOM text cannot hold; rename it in the model store"
            )
        if len(roi.color_rgb) != 3 or not all(0 <= int(c) <= 255 for c in roi.color_rgb):
            raise OutputWriterError(
                f"ROI {roi.name!r} colour {roi.color_rgb!r} is not three integers 0..255"
            )
        seen_numbers.add(roi.label)
        seen_names.add(roi.name)


def _item(*elements: tuple[BaseTag, str, Any]) -> Dataset:
    """A sequence item from values already of the right type (skips pydicom's
    per-element conversion and validation, ~10x faster for thousands of
    contours; the values here are made by this module and known valid)."""
    return Dataset(
        {tag: DataElement(tag, vr, value, already_converted=True) for tag, vr, value in elements}
    )


def _referenced_image(header: Dataset) -> Dataset:
    return _item(
        (_REFERENCED_SOP_CLASS_UID_TAG, "UI", UID(header.SOPClassUID)),
        (_REFERENCED_SOP_INSTANCE_UID_TAG, "UI", UID(header.SOPInstanceUID)),
    )


def _algorithm_item(algorithm: AlgorithmInfo) -> Dataset:
    """Algorithm Identification Macro item (PS3.3 Table 10-19)."""
    family = Dataset()
    family.CodeValue = "123110"
    family.CodingSchemeDesignator = "DCM"
    family.CodeMeaning = "Artificial Intelligence"
    item = Dataset()
    item.AlgorithmFamilyCodeSequence = DicomSequence([family])
    item.AlgorithmName = _fit(algorithm.model_name, 64, "model name")
    item.AlgorithmVersion = _fit(algorithm.model_version, 64, "model version")
    params = [f"contourd={algorithm.software_version}"]
    if algorithm.weights_sha256:
        params.append(f"weights_sha256={algorithm.weights_sha256}")
    params.extend(algorithm.parameters)
    item.AlgorithmParameters = ";".join(params)
    item.AlgorithmSource = MANUFACTURER
    return item


def generation_description(algorithm: AlgorithmInfo) -> str:
    """ROI Generation Description (LO, <= 64 chars): model, version, weights hash prefix."""
    text = f"{algorithm.model_name} {algorithm.model_version}"
    if algorithm.weights_sha256:
        text += f" sha256:{algorithm.weights_sha256[:16]}"
    return _fit(text, 64, "ROI generation description")


def default_series_description(algorithm: AlgorithmInfo) -> str:
    """``AUTOMATIC contours (unapproved) - <model> <version>`` (LO, <= 64 chars)."""
    return _fit(
        f"AUTOMATIC contours (unapproved) - {algorithm.model_name} {algorithm.model_version}",
        64,
        "series description",
    )


def write_rtstruct(
    source_headers: Sequence[Dataset],
    rois: Sequence[RoiMask],
    algorithm: AlgorithmInfo,
    *,
    structure_set_label: str,
    uid_root: str | None = None,
    smoothing_fraction: float = 0.0,
    series_description: str | None = None,
    series_number: int = 9001,
) -> Dataset:
    """Build an RT Structure Set from masks on the source grid.

    Parameters
    ----------
    source_headers : Sequence[pydicom.Dataset]
        Headers (pixel data not needed) of the source CT/MR images, sorted by
        increasing position along the slice normal ``IOP[0:3] x IOP[3:6]``;
        the same order as axis 0 of every ``RoiMask.mask``.
    rois : Sequence[RoiMask]
        Masks ``[slice, row, column]`` with names, colours, types and labels
        (clinic overrides already applied). An empty mask gives an ROI
        without contours.
    algorithm : AlgorithmInfo
        Model name, version, weights sha256 and contourd version.
    structure_set_label : str
        Structure Set Label (SH, truncated to 16 characters).
    uid_root : str or None
        Site UID root for the new Series and SOP Instance UIDs; None uses
        pydicom's root.
    smoothing_fraction : float
        0 (default) writes exact voxel-edge contours; otherwise the largest
        vertex displacement per axis as a fraction of a voxel, in [0, 0.5).
    series_description : str or None
        Overrides the default ``AUTOMATIC contours (unapproved) - <model> <version>``.
    series_number : int
        Series Number of the new series.

    Returns
    -------
    pydicom.Dataset
        With ``file_meta`` (Explicit VR Little Endian); save it with
        ``ds.save_as(path, enforce_file_format=True)``. Contour Data elements
        are stored pre-encoded (raw) for speed; pydicom decodes them on access.

    Raises
    ------
    OutputWriterError
        Inconsistent geometry, mask shapes, duplicate ROI names or numbers,
        invalid UID root or colours.
    """
    t0 = time.perf_counter()
    headers = list(source_headers)
    geometry = SliceGeometry.from_headers(headers)
    first = headers[0]
    shape = (len(headers), int(first.Rows), int(first.Columns))
    _check_rois(rois, shape)
    prefix = _uid_factory(uid_root)
    without_frame = [h for h in headers if not h.get("FrameOfReferenceUID")]
    if without_frame:
        raise OutputWriterError(
            f"{len(without_frame)} of the {len(headers)} source images have no Frame of "
            f"Reference UID (0020,0052), e.g. {without_frame[0].get('SOPInstanceUID', '?')}; "
            "an RTSTRUCT must name the frame its contours lie in; send the series with "
            "its Frame of Reference UID (anonymisers must keep it)"
        )
    for h in headers[1:]:
        if h.FrameOfReferenceUID != first.FrameOfReferenceUID or (
            h.SeriesInstanceUID != first.SeriesInstanceUID
        ):
            raise OutputWriterError(
                f"source images {first.SOPInstanceUID} and {h.SOPInstanceUID} belong to "
                "different series or frames of reference; pass one series"
            )

    now = dt.datetime.now()
    date, tm = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")[:13]
    sop_uid = generate_uid(prefix)
    description = series_description or default_series_description(algorithm)

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RTStructureSetStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationVersionName = _fit(
        f"CONTOURD_{algorithm.software_version}", 16, "implementation version name"
    )
    texts = [r.name for r in rois] + [structure_set_label, description]
    ds.SpecificCharacterSet = _character_set(first, texts)
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, tm
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = sop_uid
    for keyword in _PATIENT_STUDY_KEYWORDS:
        if keyword in first:
            ds[keyword] = first[keyword]
        elif keyword in _TYPE2_EMPTY_IF_MISSING:
            setattr(ds, keyword, "")
    # RT Series
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid(prefix)
    ds.SeriesNumber = series_number
    ds.SeriesDate, ds.SeriesTime = date, tm
    ds.SeriesDescription = _fit(description, 64, "series description")
    ds.OperatorsName = ""
    # General Equipment
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MANUFACTURER
    ds.SoftwareVersions = [
        _fit(f"contourd {algorithm.software_version}", 64, "software version"),
        _fit(f"{algorithm.model_name} {algorithm.model_version}", 64, "software version"),
    ]
    # Frame of Reference
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    # Structure Set
    ds.StructureSetLabel = _fit(structure_set_label, 16, "structure set label")
    ds.StructureSetName = _fit(structure_set_label, 64, "structure set name")
    ds.StructureSetDescription = description
    ds.InstanceNumber = 1
    ds.StructureSetDate, ds.StructureSetTime = date, tm

    series_ref = Dataset()
    series_ref.SeriesInstanceUID = first.SeriesInstanceUID
    series_ref.ContourImageSequence = DicomSequence([_referenced_image(h) for h in headers])
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = DETACHED_STUDY_MANAGEMENT
    study_ref.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study_ref.RTReferencedSeriesSequence = DicomSequence([series_ref])
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame_ref.RTReferencedStudySequence = DicomSequence([study_ref])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame_ref])

    ss_rois, roi_contours, observations = [], [], []
    n_contours = 0
    for roi in rois:
        item = Dataset()
        item.ROINumber = roi.label
        item.ReferencedFrameOfReferenceUID = first.FrameOfReferenceUID
        item.ROIName = _fit(roi.name, 64, "ROI name")
        if roi.tg263_name:
            item.ROIDescription = f"TG-263: {roi.tg263_name}"
        item.ROIGenerationAlgorithm = "AUTOMATIC"
        roi_algorithm = roi.algorithm or algorithm
        item.ROIGenerationDescription = generation_description(roi_algorithm)
        item.ROIDerivationAlgorithmIdentificationSequence = DicomSequence(
            [_algorithm_item(roi_algorithm)]
        )
        ss_rois.append(item)

        contour_item = Dataset()
        contour_item.ROIDisplayColor = [int(c) for c in roi.color_rgb]
        contours = trace_mask(roi.mask)
        if smoothing_fraction:
            contours = smooth_contours(contours, smoothing_fraction)
        if contours.n_loops == 0:
            logger.warning("ROI %r is empty: written without contours", roi.name)
        else:
            counts = np.diff(contours.loop_offsets)
            vertex_slice = np.repeat(contours.loop_slice, counts)
            points_mm = geometry.to_patient_mm(contours.vertices_cr, vertex_slice)
            encoded = format_ds_groups(points_mm.ravel(), contours.loop_offsets * 3)
            sequence = []
            for k in range(contours.n_loops):
                header = headers[contours.loop_slice[k]]
                c = _item(
                    (_CONTOUR_IMAGE_SEQUENCE_TAG, "SQ", DicomSequence([_referenced_image(header)])),
                    (_CONTOUR_GEOMETRIC_TYPE_TAG, "CS", "CLOSED_PLANAR"),
                    (_NUMBER_OF_CONTOUR_POINTS_TAG, "IS", IS(int(counts[k]))),
                    (_CONTOUR_NUMBER_TAG, "IS", IS(k + 1)),
                )
                data = encoded[k]
                c[_CONTOUR_DATA_TAG] = RawDataElement(
                    _CONTOUR_DATA_TAG, "DS", len(data), data, 0, False, True, True, False
                )
                sequence.append(c)
            contour_item.ContourSequence = DicomSequence(sequence)
            n_contours += contours.n_loops
        contour_item.ReferencedROINumber = roi.label
        roi_contours.append(contour_item)

        obs = Dataset()
        obs.ObservationNumber = roi.label
        obs.ReferencedROINumber = roi.label
        obs.ROIObservationLabel = _fit(roi.name, 16, "ROI observation label")
        obs.RTROIInterpretedType = roi.interpreted_type
        obs.ROIInterpreter = ""
        observations.append(obs)

    ds.StructureSetROISequence = DicomSequence(ss_rois)
    ds.ROIContourSequence = DicomSequence(roi_contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    ds.ApprovalStatus = "UNAPPROVED"
    # Contour Data is stored pre-encoded (raw). Tell pydicom the items are already
    # Explicit VR Little Endian in the final character set, so that saving with
    # that transfer syntax writes the bytes as they are instead of decoding and
    # re-validating every coordinate (seconds for a body contour). Saving with
    # another transfer syntax still works, through pydicom's slow path.
    for contour_item in ds.ROIContourSequence:
        for c in contour_item.get("ContourSequence", []):
            c.set_original_encoding(False, True, c._character_set)
    logger.info(
        "RTSTRUCT %s for series %s: %d ROIs, %d contours in %.3f s",
        sop_uid,
        first.SeriesInstanceUID,
        len(rois),
        n_contours,
        time.perf_counter() - t0,
    )
    return ds
