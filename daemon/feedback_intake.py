"""Receive side of the feedback loop: pair a reviewed RTSTRUCT with what contourd sent.

An RTSTRUCT series reaches the worker as a job like any other. Before
routing, :func:`handle_reviewed_set` looks at it:

- feedback off, not an RTSTRUCT, a sender not in ``feedback.senders`` or an
  Approval Status not in ``feedback.approval_statuses``: not for feedback
  (``None``; the last two with a log line), and the job goes on as before
  (routing, which normally finds no rule for an RTSTRUCT);
- otherwise every job of a referenced series whose results hold an RTSTRUCT
  with a matching Frame of Reference (sent or shadow jobs alike) is paired
  with it and compared ROI by ROI on the grid the sent set was drawn on
  (``results/<job>/grid.json``, else the spooled images); with none it is
  recorded ``unpaired``. A comparison that cannot be made is recorded
  ``failed`` with the reason. The returned line goes in the job's record.

ROI names are matched onto the sent ROI names (the model's, with the clinic's
overrides) through the card's own names, TG-263 names, ``feedback.roi_names``
and the TG-263-style keys of :mod:`training.roi_mapping`.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from contourd.data_folder import DataFolder
from contourd.errors import ContourdError
from daemon.config import ContourdConfig
from daemon.feedback_store import FeedbackStore, ReviewedSet, RoiFigures
from daemon.job_queue import Job, SqliteJobQueue
from inference.grid_file import GRID_FILENAME, read_grid
from inference.outputs import rtstruct_uid
from inference.volume import ImageVolume, load_series
from model_store.registry import ModelRegistry
from training.rtstruct_reader import StructureSet, read_rtstruct
from training.structure_set_compare import compare_structure_sets, roi_mapper

log = logging.getLogger(__name__)

RTSTRUCT_MODALITY = "RTSTRUCT"


def _sent_rtstruct(job: Job) -> Path | None:
    for path in job.result_files:
        if rtstruct_uid(Path(path)) is not None and Path(path).is_file():
            return Path(path)
    return None


def _grid(job: Job, folder: DataFolder) -> ImageVolume:
    grid_path = folder.result_dir(job.id) / GRID_FILENAME
    if grid_path.is_file():
        return read_grid(grid_path)
    present = [p for p in job.instance_paths if p.is_file()]
    if not present:
        return read_grid(grid_path)  # raises, saying the grid file is missing
    return load_series(present)


def _roi_models(
    job: Job, registry: ModelRegistry
) -> tuple[dict[str, tuple[str, str]], dict[str, list[str]]]:
    """Sent ROI name -> (model, version), and sent name -> aliases (card name, TG-263)."""
    owners: dict[str, tuple[str, str]] = {}
    aliases: dict[str, list[str]] = {}
    for entry in job.models:
        name, _, version = entry.partition(" ")
        try:
            record = registry.get(name, version or None)
        except ContourdError as err:
            log.warning("feedback: job %s model %r not in the registry: %s", job.id, entry, err)
            continue
        for card_roi, roi in zip(record.card.rois, record.effective_rois(), strict=True):
            owners[roi.name] = (record.name, record.version)
            names = [card_roi.name] + [n for n in (roi.tg263_name, card_roi.tg263_name) if n]
            aliases[roi.name] = [n for n in names if n != roi.name]
    return owners, aliases


def _for_uids(ds: Dataset) -> set[str]:
    return {
        str(f.FrameOfReferenceUID)
        for f in ds.get("ReferencedFrameOfReferenceSequence", [])
        if "FrameOfReferenceUID" in f
    }


def _counts_for_feedback(ds: Dataset, sender: str, config: ContourdConfig, job: Job) -> bool:
    feedback = config.feedback
    if feedback.senders and sender not in feedback.senders:
        log.info(
            "feedback: structure set %s from %s ignored: sender not in feedback.senders (%s)",
            ds.get("SOPInstanceUID", "?"),
            sender or "?",
            ", ".join(feedback.senders),
        )
        return False
    status = str(ds.get("ApprovalStatus", "") or "")
    if status not in feedback.approval_statuses:
        log.info(
            "feedback: structure set %s from %s (job %s) ignored: Approval Status %r not in "
            "feedback.approval_statuses (%s)",
            ds.get("SOPInstanceUID", "?"),
            sender or "?",
            job.id,
            status,
            ", ".join(feedback.approval_statuses),
        )
        return False
    return True


def handle_reviewed_set(job: Job, config: ContourdConfig, queue: SqliteJobQueue) -> str | None:
    """Compare a reviewed RTSTRUCT job with contourd's sets; ``None`` when not for feedback.

    Returns
    -------
    str or None
        A line for the job's record, or ``None`` when the job is not a
        reviewed structure set that counts (it then goes on as usual).
    """
    if not config.feedback.enabled or job.modality != RTSTRUCT_MODALITY:
        return None
    counted: list[tuple[Path, Dataset]] = []
    for path in job.instance_paths:
        ds: Dataset = pydicom.dcmread(path)
        if ds.get("Modality") != RTSTRUCT_MODALITY:
            continue
        sender = str(ds.file_meta.get("SourceApplicationEntityTitle", "") or job.calling_ae)
        if _counts_for_feedback(ds, sender.strip(), config, job):
            counted.append((path, ds))
    if not counted:
        return None
    store = FeedbackStore(queue.data_dir)
    registry = ModelRegistry(config.data_dir, database=queue.database)
    try:
        recorded: list[tuple[ReviewedSet, list[RoiFigures]]] = []
        earlier: list[str] = []
        for path, ds in counted:
            sop_uid = str(ds.get("SOPInstanceUID", ""))
            before = store.received_job_of(sop_uid, other_than=job.id)
            if before is not None:  # sent again, or a later version of the same series
                earlier.append(f"set {sop_uid} already measured with job {before}")
                continue
            try:
                recorded.extend(_compare_one(job, path, ds, config, queue, registry))
            except ContourdError as err:  # this set is unusable; the others still count
                log.warning("feedback: structure set %s not compared: %s", sop_uid, err)
                failed = _reviewed_set(job, ds, read_rtstruct_or_empty(ds))
                recorded.append((replace(failed, status="failed", message=str(err)), []))
        store.record(job.id, recorded)
    finally:
        store.close()
        registry.close()
    return _summary_line(recorded, earlier)


def _summary_line(recorded: list[tuple[ReviewedSet, list[RoiFigures]]], earlier: list[str]) -> str:
    parts = list(earlier)
    for reviewed, rois in recorded:
        if reviewed.status == "paired":
            counts = Counter(f.edit.classification for f in rois)
            shown = ", ".join(f"{n} {c}" for c, n in sorted(counts.items())) or "no ROI"
            shadow = " (shadow)" if reviewed.shadow else ""
            parts.append(f"compared with job {reviewed.job_id}{shadow}: {shown}")
        else:
            parts.append(f"{reviewed.status}: {reviewed.message}")
    return "reviewed structure set for feedback; " + "; ".join(parts)


def read_rtstruct_or_empty(ds: Dataset) -> StructureSet:
    """The structure set's references, or none when it cannot be parsed."""
    try:
        return read_rtstruct(ds)
    except ContourdError:
        return StructureSet([], [], [])


def _reviewed_set(job: Job, ds: Dataset, approved: StructureSet) -> ReviewedSet:
    """The record of a reviewed set before pairing (status ``unpaired``)."""
    return ReviewedSet(
        received_job_id=job.id,
        reviewed_sop_uid=str(ds.get("SOPInstanceUID", "")),
        referenced_series_uid=",".join(approved.referenced_series_uids),
        frame_of_reference_uid=",".join(sorted(set(approved.frame_of_reference_uids))),
        sender_ae=str(ds.file_meta.get("SourceApplicationEntityTitle", "") or job.calling_ae),
        approval_status=str(ds.get("ApprovalStatus", "")),
        status="unpaired",
    )


def _compare_one(
    job: Job,
    path: Path,
    ds: Dataset,
    config: ContourdConfig,
    queue: SqliteJobQueue,
    registry: ModelRegistry,
) -> list[tuple[ReviewedSet, list[RoiFigures]]]:
    approved = read_rtstruct(ds)
    for_uids = set(approved.frame_of_reference_uids)
    base = _reviewed_set(job, ds, approved)
    out: list[tuple[ReviewedSet, list[RoiFigures]]] = []
    for series_uid in dict.fromkeys(approved.referenced_series_uids):
        for candidate in queue.jobs_for_series(series_uid):
            sent_path = _sent_rtstruct(candidate)
            if sent_path is None:
                continue
            sent_ds = pydicom.dcmread(sent_path)
            if str(sent_ds.SOPInstanceUID) == base.reviewed_sop_uid:
                continue  # contourd's own set came back unchanged in identity
            if for_uids and not (for_uids & _for_uids(sent_ds)):
                continue
            out.append(_paired(job, candidate, path, approved, sent_ds, config, registry, base))
    if not out:
        message = (
            f"references series {base.referenced_series_uid or '(none)'}, for which "
            "contourd sent no structure set"
        )
        log.info("feedback: structure set %s unpaired: %s", base.reviewed_sop_uid, message)
        out.append((replace(base, message=message), []))
    return out


def _paired(
    job: Job,
    candidate: Job,
    path: Path,
    approved: StructureSet,
    sent_ds: Dataset,
    config: ContourdConfig,
    registry: ModelRegistry,
    base: ReviewedSet,
) -> tuple[ReviewedSet, list[RoiFigures]]:
    base = replace(base, job_id=candidate.id, shadow=candidate.shadow, models=candidate.models)
    try:
        sent = read_rtstruct(sent_ds)
        owners, aliases = _roi_models(candidate, registry)
        for target, names in config.feedback.roi_names.items():
            aliases.setdefault(target, []).extend(names)
        mapper = roi_mapper([r.name for r in sent.rois], aliases)
        grid = _grid(candidate, DataFolder(config.data_dir))
        comparison = compare_structure_sets(
            sent, approved, grid, mapper, tolerance_mm=config.feedback.tolerance_mm
        )
    except ContourdError as err:
        log.warning("feedback: job %s vs job %s not compared: %s", job.id, candidate.id, err)
        return replace(base, status="failed", message=str(err)), []
    whole = (
        "+".join(m.partition(" ")[0] for m in candidate.models),
        "+".join(m.partition(" ")[2] for m in candidate.models),
    )
    figures = [RoiFigures(*owners.get(e.roi, whole), e) for e in comparison.rois]
    kept = ""
    if config.feedback.keep_for_training:
        kept = str(_keep_reviewed_file(path, config, candidate.id))
    reviewed = replace(
        base,
        status="paired",
        message="; ".join(comparison.notes),
        kept_for_training=config.feedback.keep_for_training,
        reviewed_file=kept,
    )
    log.info(
        "feedback: structure set %s compared with job %s: %s",
        base.reviewed_sop_uid,
        candidate.id,
        ", ".join(f"{f.edit.roi} {f.edit.classification}" for f in figures),
    )
    return reviewed, figures


def _keep_reviewed_file(path: Path, config: ContourdConfig, job_id: int) -> Path:
    """Copy the reviewed RTSTRUCT beside the job's results (retention leaves it)."""
    dest_dir = DataFolder(config.data_dir).reviewed_dir(job_id)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / path.name
    shutil.copy2(path, dest)
    return dest
