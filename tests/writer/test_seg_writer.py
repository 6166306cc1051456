"""DICOM SEG: same masks as the RTSTRUCT, readable by highdicom, labelled AUTOMATIC."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from contourd.errors import OutputWriterError
from inference.phantom import PhantomSeries
from inference.roi_mask import AlgorithmInfo
from inference.seg_writer import write_seg


def test_seg_reads_back_with_highdicom_voxel_for_voxel(
    phantom_factory: Callable[..., PhantomSeries], algorithm: AlgorithmInfo, tmp_path: Path
) -> None:
    phantom = phantom_factory("FFS", reverse_file_order=True)
    seg = write_seg(phantom.headers, phantom.rois, algorithm)
    seg.save_as(tmp_path / "SEG.dcm")
    back = hd.seg.segread(tmp_path / "SEG.dcm")
    pixels = back.get_pixels_by_source_instance(
        source_sop_instance_uids=[h.SOPInstanceUID for h in phantom.headers],
        segment_numbers=list(range(1, len(phantom.rois) + 1)),
        assert_missing_frames_are_empty=True,
    )
    for i, roi in enumerate(phantom.rois):
        assert np.array_equal(pixels[..., i] > 0, roi.mask), roi.name


def test_segments_carry_roi_names_and_the_model(
    phantom_factory: Callable[..., PhantomSeries], algorithm: AlgorithmInfo
) -> None:
    phantom = phantom_factory("HFS")
    seg = write_seg(phantom.headers, phantom.rois, algorithm, uid_root="1.2.3")
    assert seg.SOPInstanceUID.startswith("1.2.3.")
    assert seg.SeriesDescription == "AUTOMATIC contours (unapproved) - phantom-model 1.2.3"
    assert seg.StudyInstanceUID == phantom.headers[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == phantom.headers[0].FrameOfReferenceUID
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels == [r.name for r in phantom.rois]
    for segment in seg.SegmentSequence:
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        algo = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("phantom-model", "1.2.3")
        assert "0123456789abcdef" * 4 in algo.AlgorithmParameters
    body = seg.SegmentSequence[0]
    assert body.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Entire body"


def test_seg_refuses_masks_off_the_source_grid(
    phantom_factory: Callable[..., PhantomSeries], algorithm: AlgorithmInfo
) -> None:
    phantom = phantom_factory("HFS")
    bad = replace(phantom.rois[0], mask=phantom.rois[0].mask[:-1])
    with pytest.raises(OutputWriterError, match="shape"):
        write_seg(phantom.headers, [bad], algorithm)


def test_empty_roi_stays_a_segment_without_breaking_the_others(
    phantom_factory: Callable[..., PhantomSeries], algorithm: AlgorithmInfo
) -> None:
    phantom = phantom_factory("HFS")
    empty = replace(phantom.rois[1], mask=np.zeros_like(phantom.rois[1].mask))
    seg = write_seg(phantom.headers, [phantom.rois[0], empty], algorithm)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["BODY", "Stomach"]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[h.SOPInstanceUID for h in phantom.headers],
        segment_numbers=[1, 2],
    )
    assert np.array_equal(pixels[..., 0] > 0, phantom.rois[0].mask)
    assert not pixels[..., 1].any()
