"""From a completed series version to a job: re-pushes, changes, incomplete series.

``contourd serve`` hands every completed version to :func:`submit_completion`:

- an *incomplete* version (see daemon/series_completeness.py) becomes a
  ``failed`` job with the message that says what is missing; nothing is
  contoured;
- an *unchanged* re-push (the same instances with the same content as an
  earlier version that made, or is making, a structure set) makes no new job
  and no new structure set. The earlier job records the re-push; when its
  rule says ``on_resend: redeliver`` its existing files are sent again (same
  SOP Instance UIDs, so the planning system sees the same object again);
- a *changed* series (new or replaced instances) makes a new job whose
  structure set names the one it supersedes (:mod:`daemon.supersession`).

A new job records the series' attributes (what routing matches on: header
values, image count, AE titles) read once here from the spooled headers;
the worker routes on that record (:mod:`daemon.worker`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from daemon.job_queue import JobState, SqliteJobQueue
from daemon.series_assembler import SeriesCompletion
from routing.rules import Rule
from routing.series_attributes import SeriesAttributes

log = logging.getLogger(__name__)

RESENT_EVENT = "resent_unchanged"

_MAKING = frozenset(
    {
        JobState.COMPLETE,
        JobState.ROUTED,
        JobState.SCHEDULED,
        JobState.RUNNING,
        JobState.WRITTEN,
        JobState.SENDING,
        JobState.SENT,
        JobState.SHADOW,
    }
)


def submit_completion(
    queue: SqliteJobQueue, completion: SeriesCompletion, rules: Sequence[Rule]
) -> int:
    """Turn a completed version into a job, or into a note on an earlier job.

    Returns the id of the new job, or of the earlier job that stands for an
    unchanged re-push.
    """
    if completion.incomplete is None and completion.same_content_as:
        earlier_job = _record_repush(queue, completion, rules)
        if earlier_job is not None:
            return earlier_job
    supersedes = {"change": completion.change} if completion.change else None
    attributes = None if completion.incomplete else series_record(completion)
    return queue.submit_series(completion, supersedes=supersedes, series_attributes=attributes)


def series_record(completion: SeriesCompletion) -> dict[str, Any] | None:
    """The completed version's :class:`SeriesAttributes` as a record, read once.

    ``None`` when no spooled file is readable; the worker then reads the files
    itself and fails the job with the reason.
    """
    try:
        attributes = SeriesAttributes.from_files(
            completion.instance_paths, completion.calling_ae, completion.called_ae
        )
    except ValueError as err:
        log.warning("series %s: attributes not recorded (%s)", completion.series_uid, err)
        return None
    return attributes.to_record()


def _record_repush(
    queue: SqliteJobQueue, completion: SeriesCompletion, rules: Sequence[Rule]
) -> int | None:
    jobs = queue.jobs_for_series(completion.series_uid)
    own = [j for j in jobs if j.version == completion.version]
    if own:  # re-emitted after a restart and already a job
        return own[0].id
    earlier = set(completion.same_content_as)
    makers = [j for j in jobs if j.version in earlier and (j.result_files or j.state in _MAKING)]
    if not makers:
        return None  # nothing was made from this content yet: process it
    newest = max(j.version for j in makers)
    by_name = {r.name: r for r in rules}
    marker = f"as version {completion.version} "
    for job in (j for j in makers if j.version == newest):
        events = queue.events(job.id)
        if any(e.state == RESENT_EVENT and marker in (e.message or "") for e in events):
            continue  # this re-push was recorded before a restart
        rule = by_name.get(job.rule or "")
        redeliver = (
            rule is not None
            and rule.on_resend == "redeliver"
            and bool(job.result_files)
            and bool(job.destinations)
            and not job.shadow
            and job.state in (JobState.SENT, JobState.FAILED)
        )
        what = (
            "its structure set is sent again (rule on_resend: redeliver)"
            if redeliver
            else f"no new structure set (rule {job.rule!r} on_resend: "
            f"{rule.on_resend if rule else 'ignore'})"
        )
        message = (
            f"series re-sent unchanged {marker}({completion.num_instances} instances, "
            f"same content as version {job.version}) from {completion.calling_ae or '?'}: {what}"
        )
        queue.note(job.id, RESENT_EVENT, message)
        if redeliver:
            queue.requeue_delivery(job.id, job.destinations)
        log.info("job %s: %s", job.id, message)
    return min(j.id for j in makers if j.version == newest)
