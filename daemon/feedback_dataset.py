"""Reviewed cases as training data: what ``feedback.keep_for_training`` keeps.

With ``feedback.keep_for_training: true`` the worker copies every paired,
reviewed RTSTRUCT to ``results/<job>/reviewed/`` and marks the set
``kept_for_training``; retention then leaves the CT images of that job's
series (:func:`kept_series_uids`). ``contourd train --from-feedback MODEL``
calls :func:`build_feedback_dataset`, which lays the kept cases out as
:mod:`training.dicom_dataset` reads them: one folder per case
(``feedback-<set id>``, no patient identifier in the name) holding the CT
series and the approved RTSTRUCT.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from contourd.errors import TrainingError
from daemon.feedback_store import FeedbackStore
from daemon.job_queue import SqliteJobQueue

log = logging.getLogger(__name__)


def kept_series_uids(data_dir: Path) -> set[str]:
    """Series UIDs whose images retention must keep (a reviewed set was kept for training)."""
    store = FeedbackStore(data_dir)
    try:
        rows = store.db.query(
            "SELECT DISTINCT j.series_uid FROM feedback_sets s JOIN jobs j ON j.id = s.job_id "
            "WHERE s.status = 'paired' AND s.kept_for_training = 1"
        )
        return {str(r["series_uid"]) for r in rows}
    finally:
        store.close()


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def build_feedback_dataset(data_dir: Path, model: str, dest: Path) -> list[Path]:
    """Lay out the kept reviewed cases of ``model`` (``NAME`` or ``NAME VERSION``) in ``dest``.

    Returns
    -------
    list[Path]
        The case folders written.

    Raises
    ------
    TrainingError
        When ``dest`` is not empty or no kept case of the model has its
        images and approved RTSTRUCT on disk.
    """
    if dest.exists() and any(dest.iterdir()):
        raise TrainingError(
            f"{dest} is not empty; give --dataset a new folder for the feedback cases"
        )
    name, _, version = model.partition(" ")
    store = FeedbackStore(data_dir)
    queue = SqliteJobQueue(data_dir)
    written: list[Path] = []
    seen_series: set[str] = set()
    try:
        for row in store.sets(status="paired"):
            models = [m.partition(" ") for m in row["models"]]
            if not row["kept_for_training"] or not any(
                n == name and (not version or v == version) for n, _, v in models
            ):
                continue
            job = queue.get(int(row["job_id"]))
            images = [p for p in job.instance_paths if p.is_file()]
            reviewed = Path(row["reviewed_file"] or "")
            if not images or not reviewed.is_file():
                log.warning(
                    "feedback set %s (job %s) skipped: its images or approved RTSTRUCT are gone",
                    row["id"],
                    job.id,
                )
                continue
            if job.series_uid in seen_series:
                continue  # newest reviewed set of a series only (rows come newest first)
            seen_series.add(job.series_uid)
            case = dest / f"feedback-{row['id']}"
            case.mkdir(parents=True)
            for i, path in enumerate(images):
                _link_or_copy(path, case / f"CT{i:05d}.dcm")
            shutil.copy2(reviewed, case / "RS.approved.dcm")
            written.append(case)
    finally:
        store.close()
        queue.close()
    if not written:
        raise TrainingError(
            f"no reviewed case of model {model!r} is kept for training in {data_dir}; set "
            "feedback.keep_for_training: true and let the TPS send approved structure sets"
        )
    log.info("feedback dataset: %d case(s) of %s in %s", len(written), model, dest)
    return written
