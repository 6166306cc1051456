"""A changed series' structure set names the one it supersedes.

When a series is pushed again with new or replaced instances, its new job
(:attr:`daemon.job_queue.Job.supersedes` set at submission) writes a structure
set that says which earlier one it replaces: the newest earlier job of the
same series and rule that wrote one. Its SOP Instance UID goes into the
Predecessor Structure Set Sequence (3006,0018) and, in words, into the
Structure Set Description, so a planner sees it in the TPS.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import RTStructureSetStorage

from daemon.job_queue import Job, SqliteJobQueue
from inference.outputs import rtstruct_uid


def _predecessor(queue: SqliteJobQueue, job: Job, rule: str) -> tuple[Job, str] | None:
    """The newest earlier job of the series and rule with an RTSTRUCT, and its UID."""
    candidates = [
        j
        for j in queue.jobs_for_series(job.series_uid)
        if j.version < job.version and j.rule == rule
    ]
    for earlier in sorted(candidates, key=lambda j: (j.version, j.id), reverse=True):
        for path in earlier.result_files:
            sop_uid = rtstruct_uid(path)
            if sop_uid is not None:
                return earlier, sop_uid
    return None


def mark_predecessor(rtstruct: Dataset, queue: SqliteJobQueue, job: Job, rule: str) -> str | None:
    """Record in ``rtstruct`` which structure set it supersedes; return a note, or None.

    ``rule`` is the rule the job runs. Does nothing for a job that supersedes
    nothing (first version, or no earlier structure set of the same rule).
    """
    if job.supersedes is None:
        return None
    found = _predecessor(queue, job, rule)
    if found is None:
        return None
    earlier, sop_uid = found
    reference = Dataset()
    reference.ReferencedSOPClassUID = RTStructureSetStorage
    reference.ReferencedSOPInstanceUID = sop_uid
    rtstruct.PredecessorStructureSetSequence = DicomSequence([reference])
    change = job.supersedes.get("change") or "the series changed"
    note = (
        f"Supersedes structure set {sop_uid} (job {earlier.id}, series version "
        f"{earlier.version}): {change}"
    )
    before = str(rtstruct.get("StructureSetDescription", "") or "")
    rtstruct.StructureSetDescription = f"{before}. {note}" if before else note
    return note
