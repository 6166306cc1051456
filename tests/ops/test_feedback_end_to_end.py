"""Feedback loop end to end with real peers.

DCMTK storescu pushes a phantom CT; contourd (three classical models, so three
ROIs: BODY, Stomach, SoftTissue; a shadow rule runs body + stomach) sends its
RTSTRUCT to a DCMTK storescp playing the TPS; the test edits that RTSTRUCT the way a clinician would
(Stomach moved 3 mm, SoftTissue deleted, GTV added, BODY untouched, Approval
Status APPROVED), pushes it back with storescu, and checks
``contourd feedback --json`` against figures computed here independently
(matplotlib point-in-polygon rasterisation, a k-d tree surface distance,
shapely for the added path length).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import wait_for
from matplotlib.path import Path as MplPath
from node_harness import node_config_file, node_metrics, node_with_tps, storescu_push
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid
from scipy.spatial import cKDTree

from daemon.config import RetentionConfig
from daemon.feedback_dataset import build_feedback_dataset, kept_series_uids
from daemon.job_queue import SqliteJobQueue
from daemon.retention import Retention
from inference.phantom import make_phantom_series
from model_store.registry import ModelRegistry
from training.dicom_dataset import find_case_files, load_source_case
from training.roi_mapping import RoiNameMapper

pytestmark = [pytest.mark.interop, pytest.mark.slow]

SHIFT_MM = 3.0
TOLERANCE_MM = 2.0
BODY_CARD = Path(__file__).resolve().parents[2] / "model_store" / "builtin" / "body" / "model.yaml"


def _classical_model(root: Path, name: str, roi: str, threshold_hu: float) -> Path:
    """A copy of the built-in body card thresholding at ``threshold_hu`` (one ROI)."""
    card = yaml.safe_load(BODY_CARD.read_text())
    card.update(name=name, description=f"test model: {roi} above {threshold_hu} HU")
    card["parameters"]["threshold_hu"] = threshold_hu
    card["rois"] = [{"label": 1, "name": roi, "color": [200, 0, 0], "interpreted_type": "ORGAN"}]
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "model.yaml").write_text(yaml.safe_dump(card))
    return folder


def _config(tmp_path: Path, tps_port: int) -> Path:
    """The end-to-end node config with three models, a shadow rule and ``feedback:``."""
    path = node_config_file(tmp_path, tps_port)
    config = yaml.safe_load(path.read_text())
    config["worker"]["preview"] = False
    config["feedback"] = {
        "senders": ["TPS"],
        "tolerance_mm": TOLERANCE_MM,
        "keep_for_training": True,
    }
    config["rules"] = [
        {
            "name": "ct-shadow",
            "match": {"modality": "CT"},
            "model": ["body", "stomach"],
            "shadow": True,
            "continue": True,
        },
        {
            "name": "ct",
            "match": {"modality": "CT"},
            "model": ["body", "stomach", "soft"],
            "send_to": ["tps"],
        },
    ]
    path.write_text(yaml.safe_dump(config))
    return path


def _roi_number(rs: Dataset, name: str) -> int:
    return next(int(r.ROINumber) for r in rs.StructureSetROISequence if r.ROIName == name)


def _contours(rs: Dataset, name: str) -> list[np.ndarray]:
    number = _roi_number(rs, name)
    item = next(i for i in rs.ROIContourSequence if int(i.ReferencedROINumber) == number)
    return [np.asarray(c.ContourData, dtype=float).reshape(-1, 3) for c in item.ContourSequence]


def _clinician_edit(sent: Dataset, headers: list[Dataset]) -> Dataset:
    """Move 'Stomach' by SHIFT_MM in x, delete 'SoftTissue', add 'GTV', approve."""
    rs = copy.deepcopy(sent)
    rs.SOPInstanceUID = generate_uid()
    rs.file_meta.MediaStorageSOPInstanceUID = rs.SOPInstanceUID
    rs.SeriesInstanceUID = generate_uid()
    rs.ApprovalStatus = "APPROVED"
    rs.ReviewDate, rs.ReviewTime, rs.ReviewerName = "20260101", "120000", "Doctor^Test"
    rs.StructureSetLabel = "APPROVED PLAN"
    moved = _roi_number(rs, "Stomach")
    for item in rs.ROIContourSequence:
        if int(item.ReferencedROINumber) == moved:
            for contour in item.ContourSequence:
                pts = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
                pts[:, 0] += SHIFT_MM
                contour.ContourData = [f"{v:.4f}" for v in pts.ravel()]
    gone = _roi_number(rs, "SoftTissue")
    for keyword in ("StructureSetROISequence", "RTROIObservationsSequence", "ROIContourSequence"):
        seq = getattr(rs, keyword)
        key = "ROINumber" if keyword == "StructureSetROISequence" else "ReferencedROINumber"
        setattr(rs, keyword, DicomSequence([i for i in seq if int(getattr(i, key)) != gone]))
    number = 99
    roi = Dataset()
    roi.ROINumber = number
    roi.ReferencedFrameOfReferenceUID = headers[0].FrameOfReferenceUID
    roi.ROIName = "GTV"
    roi.ROIGenerationAlgorithm = "MANUAL"
    rs.StructureSetROISequence.append(roi)
    obs = Dataset()
    obs.ObservationNumber = number
    obs.ReferencedROINumber = number
    obs.RTROIInterpretedType = "GTV"
    obs.ROIInterpreter = ""
    rs.RTROIObservationsSequence.append(obs)
    item = Dataset()
    item.ReferencedROINumber = number
    item.ROIDisplayColor = [255, 0, 0]
    item.ContourSequence = DicomSequence()
    for header in headers[4:7]:
        x0, y0, z = (float(v) for v in header.ImagePositionPatient)
        square = np.array([[20, 20, 0], [30, 20, 0], [30, 30, 0], [20, 30, 0]], float)
        square += [x0 - 0.5, y0 - 0.5, z]
        contour = Dataset()
        image = Dataset()
        image.ReferencedSOPClassUID = header.SOPClassUID
        image.ReferencedSOPInstanceUID = header.SOPInstanceUID
        contour.ContourImageSequence = DicomSequence([image])
        contour.ContourGeometricType = "CLOSED_PLANAR"
        contour.NumberOfContourPoints = 4
        contour.ContourData = [f"{v:.4f}" for v in square.ravel()]
        item.ContourSequence.append(contour)
    rs.ROIContourSequence.append(item)
    return rs


# -- independent figures --------------------------------------------------------------
def _mask(contours: list[np.ndarray], headers: list[Dataset]) -> np.ndarray:
    """Even-odd rasterisation of HFS contours (pixel centres tested with matplotlib)."""
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    dy, dx = (float(v) for v in headers[0].PixelSpacing)
    zs = np.array([float(h.ImagePositionPatient[2]) for h in headers])
    x0, y0 = (float(v) for v in headers[0].ImagePositionPatient[:2])
    rr, cc = np.mgrid[0:rows, 0:cols]
    centres = np.c_[x0 + cc.ravel() * dx, y0 + rr.ravel() * dy]
    mask = np.zeros((len(headers), rows, cols), dtype=bool)
    for pts in contours:
        k = int(np.argmin(np.abs(zs - pts[0, 2])))
        mask[k] ^= MplPath(pts[:, :2]).contains_points(centres).reshape(rows, cols)
    return mask


def _surface_points_mm(mask: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1, 1:-1].copy()
    for axis in range(3):
        for step in (1, -1):
            inner &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return np.argwhere(mask & ~inner) * spacing_zyx


def _surface_dice(a: np.ndarray, b: np.ndarray, spacing_zyx: np.ndarray) -> float:
    pa, pb = _surface_points_mm(a, spacing_zyx), _surface_points_mm(b, spacing_zyx)
    da, _ = cKDTree(pb).query(pa)
    db, _ = cKDTree(pa).query(pb)
    return float(((da <= TOLERANCE_MM).sum() + (db <= TOLERANCE_MM).sum()) / (len(da) + len(db)))


def _added_path_length(edited: list[np.ndarray], sent: list[np.ndarray]) -> float:
    from shapely.geometry import LinearRing
    from shapely.ops import unary_union

    total = 0.0
    for pts in edited:
        same_plane = [s for s in sent if abs(s[0, 2] - pts[0, 2]) < 0.1]
        ring = LinearRing(pts[:, :2])
        if not same_plane:
            total += ring.length
            continue
        band = unary_union([LinearRing(s[:, :2]) for s in same_plane]).buffer(
            TOLERANCE_MM, quad_segs=64
        )
        total += ring.difference(band).length
    return total


# -- the test -------------------------------------------------------------------------
def _feedback(config: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "daemon", "feedback", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _feedback_json(config: Path) -> dict:
    return json.loads(_feedback(config, "--json"))


def test_reviewed_structure_set_is_measured_roi_by_roi(tmp_path: Path) -> None:

    def import_the_models(data: Path) -> None:
        registry = ModelRegistry(data)
        try:
            for name, roi, threshold in (("stomach", "Stomach", 20), ("soft", "SoftTissue", -100)):
                package = _classical_model(tmp_path / "pkgs", name, roi, threshold)
                registry.import_package(package, "t")
                registry.approve(name, "1.0.0", by="ops-test", note="test data folder")
        finally:
            registry.close()

    with node_with_tps(
        tmp_path, write_config=lambda port: _config(tmp_path, port), prepare=import_the_models
    ) as env:
        tps, node, config, data = env.tps, env.node, env.config, env.data_dir
        series = make_phantom_series(tmp_path / "ct", shape_zyx=(12, 64, 64))
        storescu_push(node.port, series.paths)
        [sent] = wait_for(tps.received, 120, f"RTSTRUCT at the TPS; log: {node.log_tail()}")
        assert sorted(r.ROIName for r in sent.StructureSetROISequence) == [
            "BODY",
            "SoftTissue",
            "Stomach",
        ]
        reviewed = _clinician_edit(sent, series.headers)
        reviewed_path = tmp_path / "reviewed" / "RS.reviewed.dcm"
        reviewed_path.parent.mkdir()
        reviewed.save_as(reviewed_path, enforce_file_format=True)

        # The same set from a sender that does not count, and one nobody asked for.
        other = copy.deepcopy(reviewed)
        other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        other.SeriesInstanceUID = generate_uid()
        other_path = tmp_path / "reviewed" / "RS.other.dcm"
        other.save_as(other_path, enforce_file_format=True)
        stranger = copy.deepcopy(reviewed)
        stranger.SOPInstanceUID = stranger.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        stranger.SeriesInstanceUID = generate_uid()
        frame = stranger.ReferencedFrameOfReferenceSequence[0]
        frame.FrameOfReferenceUID = generate_uid()
        frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[
            0
        ].SeriesInstanceUID = generate_uid()
        stranger_path = tmp_path / "reviewed" / "RS.stranger.dcm"
        stranger.save_as(stranger_path, enforce_file_format=True)

        draft = copy.deepcopy(other)  # not approved yet: does not count either
        draft.SOPInstanceUID = draft.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        draft.SeriesInstanceUID = generate_uid()
        draft.ApprovalStatus = "UNAPPROVED"
        draft_path = tmp_path / "reviewed" / "RS.draft.dcm"
        draft.save_as(draft_path, enforce_file_format=True)

        broken = copy.deepcopy(reviewed)  # Contour Data that is not x, y, z triplets
        broken.SOPInstanceUID = broken.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        broken.SeriesInstanceUID = generate_uid()
        broken.ROIContourSequence[0].ContourSequence[0].ContourData = ["1.0", "2.0"]
        broken_path = tmp_path / "reviewed" / "RS.broken.dcm"
        broken.save_as(broken_path, enforce_file_format=True)

        storescu_push(node.port, [reviewed_path], calling_ae="TPS")
        storescu_push(node.port, [draft_path], calling_ae="TPS")
        storescu_push(node.port, [broken_path], calling_ae="TPS")
        storescu_push(node.port, [other_path], calling_ae="PACS")
        storescu_push(node.port, [stranger_path], calling_ae="TPS")
        queue = SqliteJobQueue(data)

        def rtstruct_jobs_finished() -> bool:
            jobs = [j for j in queue.recent(20) if j.modality == "RTSTRUCT"]
            return len(jobs) == expected_jobs and all(j.finished for j in jobs)

        expected_jobs = 5
        wait_for(rtstruct_jobs_finished, 120, f"5 RTSTRUCT jobs done; {node.log_tail()}")
        storescu_push(node.port, [reviewed_path], calling_ae="TPS")  # the TPS sends it again
        expected_jobs = 6
        wait_for(rtstruct_jobs_finished, 120, f"6 RTSTRUCT jobs done; {node.log_tail()}")
        again = next(j for j in queue.recent(1))
        assert "already measured" in (queue.events(again.id)[-1].message or "")
        doc = _feedback_json(config)
        metrics = node_metrics(node.http_port)
        labels = 'model="body",roi="BODY",shadow="false",version="1.0.0"'
        assert f"contourd_feedback_unchanged{{{labels}}} 1.0".encode() in metrics
        assert f'contourd_feedback_median{{figure="dice",{labels}}} 1.0'.encode() in metrics
        log_text = node.log_text()
        assert "ignored: sender not in feedback.senders" in log_text
        assert "ignored: Approval Status 'UNAPPROVED' not in feedback.approval_statuses" in log_text
        ct_job = next(j for j in queue.recent(20) if j.modality == "CT" and not j.shadow)
        shadow_job = next(j for j in queue.recent(20) if j.modality == "CT" and j.shadow)
        assert (ct_job.state.value, shadow_job.state.value) == ("sent", "shadow")
        assert len(tps.received()) == 1  # nothing was sent for the reviewed sets

    cases = {c["reviewed_sop_uid"]: c for c in doc["cases"]}
    assert [c["reviewed_sop_uid"] for c in doc["cases"]].count(reviewed.SOPInstanceUID) == 2
    assert cases[broken.SOPInstanceUID]["status"] == "failed"
    assert "x, y, z triplets" in cases[broken.SOPInstanceUID]["message"]
    assert other.SOPInstanceUID not in cases  # sender PACS does not count
    assert draft.SOPInstanceUID not in cases  # UNAPPROVED does not count
    assert cases[stranger.SOPInstanceUID]["status"] == "unpaired"
    [case] = [c for c in doc["cases"] if c["job_id"] == ct_job.id]
    assert case["reviewed_sop_uid"] == reviewed.SOPInstanceUID
    assert case["status"] == "paired" and case["job_id"] == ct_job.id
    assert case["sender_ae"] == "TPS" and case["approval_status"] == "APPROVED"
    rois = {r["roi"]: r for r in case["rois"]}
    assert {k: v["classification"] for k, v in rois.items()} == {
        "BODY": "unchanged",
        "Stomach": "edited",
        "SoftTissue": "deleted",
        "GTV": "added",
    }
    assert rois["BODY"]["dice"] == 1.0 and rois["BODY"]["added_path_length_mm"] == 0.0
    assert (rois["BODY"]["model"], rois["Stomach"]["model"]) == ("body", "stomach")

    spacing_zyx = np.array([2.5, *(float(v) for v in series.headers[0].PixelSpacing)], dtype=float)
    sent_moved, edited = _contours(sent, "Stomach"), _contours(reviewed, "Stomach")
    a, b = _mask(sent_moved, series.headers), _mask(edited, series.headers)
    expected_dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert 0.3 < expected_dice < 0.99  # a real edit
    stomach = rois["Stomach"]
    assert stomach["dice"] == pytest.approx(expected_dice, abs=1e-9)
    assert stomach["surface_dice"] == pytest.approx(_surface_dice(a, b, spacing_zyx), abs=1e-9)
    expected_apl = _added_path_length(edited, sent_moved)
    assert expected_apl > 0
    assert stomach["added_path_length_mm"] == pytest.approx(expected_apl, rel=0.01, abs=0.5)
    assert stomach["volume_change_cc"] == pytest.approx(0.0, abs=1e-9)  # moved, not resized
    deleted = rois["SoftTissue"]
    assert deleted["dice"] == 0.0 and deleted["added_path_length_mm"] == 0.0
    assert rois["GTV"]["added_path_length_mm"] == pytest.approx(3 * 40.0)
    [summary] = [s for s in doc["rois"] if s["roi"] == "BODY" and not s["shadow"]]
    assert summary["n_unchanged"] == 1 and summary["median_dice"] == 1.0

    # The shadow job (body + stomach, never sent) is measured against the same set.
    [shadow] = [c for c in doc["cases"] if c["job_id"] == shadow_job.id]
    assert shadow["shadow"] is True and shadow["reviewed_sop_uid"] == reviewed.SOPInstanceUID
    shadow_rois = {r["roi"]: r for r in shadow["rois"]}
    assert {k: v["classification"] for k, v in shadow_rois.items()} == {
        "BODY": "unchanged",
        "Stomach": "edited",
        "GTV": "added",
    }
    assert shadow_rois["Stomach"]["dice"] == pytest.approx(expected_dice, abs=1e-9)

    # The table, the per-case listing and the HTML report read the same rows.
    table = _feedback(config, "--cases", "--model", "stomach")
    assert "Stomach" in table and "BODY" not in table.split("medians over")[0]
    _feedback(config, "--report", str(tmp_path / "report"))
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Worst cases" in page and "stomach 1.0.0: Stomach" in page
    assert len(list((tmp_path / "report").glob("*.png"))) == 4 + 3  # clinical + shadow ROIs

    # keep_for_training: retention leaves the reviewed case's CT; it becomes a DICOM
    # training case with the approved contours (what `contourd train --from-feedback` reads).
    queue = SqliteJobQueue(data)
    report = Retention(
        queue,
        RetentionConfig(delete_images_after_h=0, emergency_free_disk_mb=0),
        keep_series=lambda: kept_series_uids(data),
    ).run_once()
    assert series.headers[0].SeriesInstanceUID not in report.series_purged
    assert other.SeriesInstanceUID in report.series_purged  # the ignored set is not kept
    assert all(p.is_file() for p in queue.get(ct_job.id).instance_paths)
    [case_dir] = build_feedback_dataset(data, "stomach", tmp_path / "dataset")
    case = load_source_case(
        find_case_files(case_dir), RoiNameMapper(["BODY", "Stomach", "SoftTissue"])
    )
    assert sorted(case.masks) == ["BODY", "Stomach"]  # SoftTissue was deleted
    assert np.array_equal(case.masks["Stomach"], b)
