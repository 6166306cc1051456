"""inference.outputs: one naming scheme, atomic files, one algorithm identification."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from inference_helpers import LocalModel

from contourd import __version__
from inference.outputs import (
    OUTPUT_KINDS,
    PREVIEW_FILENAME,
    SEG_SKIPPED_WARNING,
    identify_algorithm,
    rtstruct_name,
    rtstruct_uid,
    save_atomically,
    seg_name,
    write_preview,
    write_results,
)
from inference.phantom import make_phantom_series
from inference.pipeline import SegmentationResult, segment_series


@pytest.fixture
def result(tmp_path: Path, body_model: LocalModel) -> SegmentationResult:
    series = make_phantom_series(tmp_path / "ct", shape_zyx=(6, 48, 48))
    return segment_series(list(series.paths), body_model)


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_rtstruct_and_seg_are_named_by_their_sop_instance_uid(
    tmp_path: Path, result: SegmentationResult, body_model: LocalModel
) -> None:
    out = tmp_path / "out"
    algorithm = identify_algorithm([body_model])
    written = write_results(
        result, algorithm, out, label="AUTO body", outputs=("rtstruct", "seg"), uid_root=None
    )
    rs_path, seg_path = written.files
    rs, seg = pydicom.dcmread(rs_path), pydicom.dcmread(seg_path)
    assert rs_path.name == rtstruct_name(rs.SOPInstanceUID) == f"RS.{rs.SOPInstanceUID}.dcm"
    assert seg_path.name == seg_name(seg.SOPInstanceUID) == f"SEG.{seg.SOPInstanceUID}.dcm"
    assert rtstruct_uid(rs_path) == rs.SOPInstanceUID
    assert rtstruct_uid(seg_path) is None
    assert (rs.Modality, seg.Modality) == ("RTSTRUCT", "SEG")
    assert rs.StructureSetLabel == "AUTO body"
    assert written.rtstruct is not None and written.rtstruct.SOPInstanceUID == rs.SOPInstanceUID
    assert written.warnings == []
    assert _visible(out) == sorted([rs_path.name, seg_path.name])  # no temporary file left


def test_amend_rtstruct_changes_the_saved_file(
    tmp_path: Path, result: SegmentationResult, body_model: LocalModel
) -> None:
    def amend(ds: pydicom.Dataset) -> None:
        ds.StructureSetDescription = "amended before saving"

    written = write_results(
        result, identify_algorithm([body_model]), tmp_path / "o", label="x", amend_rtstruct=amend
    )
    (path,) = written.files
    assert pydicom.dcmread(path).StructureSetDescription == "amended before saving"


def test_seg_of_a_result_without_rois_is_skipped_with_a_warning(
    tmp_path: Path, result: SegmentationResult, body_model: LocalModel
) -> None:
    empty = replace(result, rois=[])
    written = write_results(
        empty, identify_algorithm([body_model]), tmp_path / "o", label="x", outputs=OUTPUT_KINDS
    )
    assert written.warnings == [SEG_SKIPPED_WARNING]
    (path,) = written.files
    assert path.name.startswith("RS.")


def test_a_failed_write_leaves_no_file_and_keeps_the_earlier_one(tmp_path: Path) -> None:
    target = tmp_path / "RS.1.2.3.dcm"
    target.write_bytes(b"complete earlier file")
    seen_during_write: list[bytes] = []

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"half of a fi")
        seen_during_write.append(target.read_bytes())
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        save_atomically(target, half_then_fail)
    assert seen_during_write == [b"complete earlier file"]  # the partial bytes were never visible
    assert target.read_bytes() == b"complete earlier file"
    assert _visible(tmp_path) == ["RS.1.2.3.dcm"]


def test_the_final_name_appears_only_when_the_file_is_whole(tmp_path: Path) -> None:
    target = tmp_path / "SEG.9.dcm"
    during: list[bool] = []

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(b"x" * 1000)
            handle.flush()
            during.append(target.exists())
            handle.write(b"y" * 1000)

    save_atomically(target, write)
    assert during == [False]
    assert target.read_bytes() == b"x" * 1000 + b"y" * 1000
    assert _visible(tmp_path) == ["SEG.9.dcm"]


def test_preview_is_a_png_written_atomically(tmp_path: Path, result: SegmentationResult) -> None:
    out = tmp_path / "out"
    out.mkdir()
    path = write_preview(out, result.volume.array, result.rois)
    assert path == out / PREVIEW_FILENAME
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _visible(out) == [PREVIEW_FILENAME]


def test_preview_of_a_volume_without_rois_draws_slices(tmp_path: Path) -> None:
    volume = np.zeros((4, 16, 16), dtype=np.float32)
    path = write_preview(tmp_path, volume, [])
    assert path.stat().st_size > 500


def test_algorithm_identification_of_one_and_of_several_models(body_model: LocalModel) -> None:
    other_card = body_model.card.model_copy(update={"name": "outline", "version": "2.1.0"})
    other = LocalModel(card=other_card, weights_sha256="ab" * 32)
    one = identify_algorithm([body_model])
    assert (one.model_name, one.model_version) == ("body", str(body_model.card.version))
    assert one.weights_sha256 == body_model.weights_sha256
    assert one.software_version == __version__
    both = identify_algorithm([body_model, other])
    assert both.model_name == "body+outline"
    assert both.model_version == f"{body_model.card.version}+2.1.0"
    assert both.weights_sha256 is None  # several models have no single weights hash


def test_run_parameters_go_into_the_algorithm_identification(
    tmp_path: Path, result: SegmentationResult, body_model: LocalModel
) -> None:
    other_card = body_model.card.model_copy(update={"name": "outline", "version": "2.1.0"})
    other = LocalModel(card=other_card, weights_sha256="ab" * 32)
    tag = f"body {body_model.card.version}"
    run = {tag: ("nnunet_mode=fast", "nnunet_step=0.75")}
    assert identify_algorithm([body_model], run).parameters == run[tag]
    assert identify_algorithm([body_model]).parameters == ()
    both = identify_algorithm([body_model, other], run)
    assert both.parameters == ("body:nnunet_mode=fast", "body:nnunet_step=0.75")
    algorithm = identify_algorithm([body_model], run)
    rois = [replace(r, algorithm=algorithm) for r in result.rois]
    written = write_results(replace(result, rois=rois), algorithm, tmp_path / "o", label="x",
                            outputs=("rtstruct", "seg"), uid_root=None)  # fmt: skip
    rs, seg = (pydicom.dcmread(p) for p in written.files)
    item = rs.StructureSetROISequence[0].ROIDerivationAlgorithmIdentificationSequence[0]
    params = item.AlgorithmParameters.split(";")
    assert params[0] == f"contourd={__version__}"
    assert params[-2:] == ["nnunet_mode=fast", "nnunet_step=0.75"]
    seg_item = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert "nnunet_mode=fast" in seg_item.AlgorithmParameters
    assert "nnunet_step=0.75" in seg_item.AlgorithmParameters
