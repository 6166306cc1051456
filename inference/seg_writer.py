"""Masks on the source grid to a DICOM Segmentation (highdicom).

The same masks as the RTSTRUCT, as a BINARY multi-frame SEG that references
the source images frame by frame (no geometry conversion at all: highdicom
copies each source image's plane position). Segment numbers are 1..N in the
order of ``rois`` (SEG requires consecutive numbers; the model's label is not
necessarily consecutive), segment labels are the ROI names, and every
segment is AUTOMATIC with the model identified in the Segment Algorithm
Identification (name, version, weights sha256 in the parameters).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from contourd.errors import OutputWriterError
from inference.contour_extraction import SliceGeometry
from inference.roi_mask import AlgorithmInfo, RoiMask
from inference.rtstruct_writer import MANUFACTURER, _fit, _uid_factory, default_series_description

logger = logging.getLogger(__name__)

_TARGET_TYPES = {"PTV", "CTV", "GTV", "ITV"}
_OBJECT_TYPES = {"MARKER", "REGISTRATION", "ISOCENTER", "CONTRAST_AGENT", "FIXATION", "SUPPORT"}


def segment_codes(interpreted_type: str) -> tuple[hd.sr.CodedConcept, hd.sr.CodedConcept]:
    """Segmented property category and type for an RT ROI Interpreted Type.

    EXTERNAL -> (Body structure, Entire body); targets -> (Body structure,
    Neoplasm); markers and devices -> (Physical object, Physical object);
    anything else (ORGAN, AVOIDANCE, ...) -> (Body structure, Organ).
    """
    category = hd.sr.CodedConcept.from_code(codes.SCT.BodyStructure)
    kind = interpreted_type.upper()
    if kind == "EXTERNAL":
        return category, hd.sr.CodedConcept.from_code(codes.SCT.EntireBody)
    if kind in _TARGET_TYPES:
        return category, hd.sr.CodedConcept.from_code(codes.SCT.Neoplasm)
    if kind in _OBJECT_TYPES:
        thing = hd.sr.CodedConcept.from_code(codes.SCT.PhysicalObject)
        return thing, thing
    return category, hd.sr.CodedConcept.from_code(codes.SCT.Organ)


def algorithm_identification(algorithm: AlgorithmInfo) -> hd.AlgorithmIdentificationSequence:
    """highdicom Algorithm Identification of the model that made the masks."""
    parameters = {"contourd": algorithm.software_version}
    if algorithm.weights_sha256:
        parameters["weights_sha256"] = algorithm.weights_sha256
    for item in algorithm.parameters:
        key, _, value = item.partition("=")
        parameters[key] = value
    return hd.AlgorithmIdentificationSequence(
        name=_fit(algorithm.model_name, 64, "model name"),
        family=codes.cid7162.ArtificialIntelligence,
        version=_fit(algorithm.model_version, 64, "model version"),
        source=MANUFACTURER,
        parameters=parameters,
    )


def write_seg(
    source_datasets: Sequence[Dataset],
    rois: Sequence[RoiMask],
    algorithm: AlgorithmInfo,
    *,
    uid_root: str | None = None,
    series_description: str | None = None,
    series_number: int = 9002,
) -> hd.seg.Segmentation:
    """Build a BINARY DICOM Segmentation from masks on the source grid.

    Parameters
    ----------
    source_datasets : Sequence[pydicom.Dataset]
        Source CT/MR images sorted by increasing position along the slice
        normal, the same order as axis 0 of each mask. Headers suffice
        (pixel data is not read).
    rois : Sequence[RoiMask]
        Masks ``[slice, row, column]`` with names (segment labels) and types.
    algorithm : AlgorithmInfo
        Model identification written into every segment description.
    uid_root : str or None
        Site UID root for the new Series and SOP Instance UIDs.
    series_description : str or None
        Default ``AUTOMATIC contours (unapproved) - <model> <version>``.
    series_number : int
        Series Number of the new series.

    Returns
    -------
    highdicom.seg.Segmentation
        Save with ``seg.save_as(path)``.
    """
    t0 = time.perf_counter()
    sources = list(source_datasets)
    SliceGeometry.from_headers(sources)  # same orientation, sorted: else a clear error
    if not rois:
        raise OutputWriterError("no ROIs to write; a SEG needs at least one segment")
    shape = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    for roi in rois:
        if roi.mask.shape != shape:
            raise OutputWriterError(
                f"ROI {roi.name!r} mask has shape {roi.mask.shape}; expected {shape} "
                "(slices, rows, columns of the source series); resample it to the source grid"
            )
    prefix = _uid_factory(uid_root)
    pixels = np.stack([np.asarray(r.mask, dtype=bool) for r in rois], axis=-1)
    identification = algorithm_identification(algorithm)
    descriptions = []
    for number, roi in enumerate(rois, start=1):
        category, kind = segment_codes(roi.interpreted_type)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=_fit(roi.name, 64, "segment label"),
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=identification,
                display_color=hd.color.CIELabColor.from_rgb(*(int(c) for c in roi.color_rgb)),
            )
        )
    now = dt.datetime.now()
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(prefix),
        series_number=series_number,
        sop_instance_uid=generate_uid(prefix),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER,
        # a list, not the tuple highdicom's hint names: pydicom warns on tuples
        software_versions=[  # type: ignore[arg-type]
            f"contourd {algorithm.software_version}",
            f"{algorithm.model_name} {algorithm.model_version}",
        ],
        device_serial_number="0",
        content_label="AUTOSEG",
        content_description=_fit(
            series_description or default_series_description(algorithm), 64, "content description"
        ),
        series_description=series_description or default_series_description(algorithm),
        series_date=now.date(),
        series_time=now.time(),
    )
    logger.info(
        "SEG %s for series %s: %d segments in %.3f s",
        seg.SOPInstanceUID,
        sources[0].SeriesInstanceUID,
        len(rois),
        time.perf_counter() - t0,
    )
    return seg
