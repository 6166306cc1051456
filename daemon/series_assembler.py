"""Series assembly: decide when a received series is complete and hand it on once.

A series version is complete when the first of these happens:

- ``quiet_period``: no instance of it arrived for ``series.complete_after_s``;
- ``association_release``: the association that sent it was released normally
  and either ``series.complete_on`` is ``association_release`` or the
  ``complete_on_release(attributes)`` hook says so (routing plugs in here; it
  gets the first header, the AE titles and the images so far);
  an aborted association never completes a series at once;
- ``expected_count``: as many distinct instances arrived as the first header's
  ``series.expected_count_attribute`` says (e.g. a private "images in series").

Before completing, the version must look whole
(:func:`daemon.series_completeness.assess`): an association that ended in an
abort or a dropped connection (or a node stop while it was sending) holds its
series until an association that starts later is released normally (the
sender's retry), and gaps in Instance Number or slice position, or fewer images
than Images in Acquisition says, hold it as well. A version that is still not
whole ``series.incomplete_wait_s`` after its last image is completed with
reason ``incomplete`` and :attr:`SeriesCompletion.incomplete` set; the job
queue records it as ``failed`` with that message, and nothing is contoured.

Instances that arrive after completion open the next version of the series
(version 2, 3, ...), never dropped. Completion is handed on by calling
``on_series_complete(SeriesCompletion)`` from a scheduler thread; when the call
returns normally the version is marked ``handed_off`` in the database. If it
raises, the hand-off is retried every ``handoff_retry_s``; at start the node
re-emits every complete but not handed-off version with reason ``restart``.
Delivery is therefore at-least-once: the receiver de-duplicates by
``(series_uid, version)``.

apscheduler drives the timers: one date job per open series version, which on
firing re-arms itself if an instance arrived during the wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from apscheduler.schedulers.background import BackgroundScheduler
from pydicom import dcmread
from pydicom.dataset import Dataset

from daemon.instance_db import InstanceDB
from daemon.series_completeness import CompletenessVerdict, SliceFacts, assess
from daemon.series_content import ContentDigest, content_digest, describe_change
from routing.series_attributes import SeriesAttributes

log = logging.getLogger(__name__)

CompletionReason = Literal[
    "quiet_period", "association_release", "expected_count", "restart", "incomplete"
]


@dataclass(frozen=True)
class SeriesCompletion:
    """A series version that is complete and ready to be routed and processed.

    Attributes
    ----------
    study_uid, series_uid : str
        Validated UIDs.
    version : int
        1 for the first batch; later batches of the same series count up.
    spool_dir : Path
        ``<data_dir>/spool/<study_uid>/<series_uid>``.
    instance_paths : list[Path]
        *All* instances of the series currently on disk (every version so far,
        a re-sent SOP instance once, its newest copy), sorted by path. Routing
        reads headers from these files (``routing.series_attributes``).
    num_instances : int
        ``len(instance_paths)``.
    num_received : int
        C-STORE requests stored for this version (re-sends included).
    first_instance_path : Path
        The first instance received in this version.
    calling_ae, called_ae, peer_address : str
        Who sent the first instance of this version (``""`` when the version
        was rebuilt from the spool after a crash and the sender is unknown).
    modality, body_part, series_description : str
        From the first instance's header (``""`` when absent).
    completed_at : datetime
        When the version was marked complete (timezone-aware, UTC).
    reason : str
        ``quiet_period``, ``association_release``, ``expected_count``,
        ``incomplete`` (still not whole ``series.incomplete_wait_s`` after the
        last image) or ``restart`` (re-emitted after a restart; not handed off
        before).
    completeness : str
        The completeness verdict and the signal that decided it.
    incomplete : str or None
        Set when the version was given up as incomplete: the message for the
        job record (what is missing, which signal said so, what to do).
    same_content_as : list of int
        Earlier versions (oldest first) that held exactly the same instances
        with the same content: this version is a re-push, not a change.
    change : str or None
        For a changed series, how it differs from the newest earlier version
        ("200 instances, version 1 had 198 (2 new)"); None for version 1.
    """

    study_uid: str
    series_uid: str
    version: int
    spool_dir: Path
    instance_paths: list[Path]
    num_instances: int
    num_received: int
    first_instance_path: Path
    calling_ae: str
    called_ae: str
    peer_address: str
    modality: str
    body_part: str
    series_description: str
    completed_at: datetime
    reason: CompletionReason
    completeness: str = ""
    incomplete: str | None = None
    same_content_as: list[int] = field(default_factory=list)
    change: str | None = None


@dataclass(frozen=True)
class InstanceArrival:
    """One instance that is on disk under its final name (input to the assembler).

    ``header`` is the data set without pixel data; ``association_id`` is any
    integer unique among open associations (0 when rebuilt from the spool).
    """

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: Path
    size_bytes: int
    calling_ae: str
    called_ae: str
    peer_address: str
    association_id: int
    header: Dataset
    received_at: datetime


CompletionCallback = Callable[[SeriesCompletion], None]
ReleaseHook = Callable[[SeriesAttributes], bool]


@dataclass
class _OpenSeries:
    """In-memory state of the series version that is still receiving."""

    series_uid: str
    version: int
    header: Dataset
    row: dict[str, Any]
    last_arrival_s: float  # time.monotonic()
    sop_uids: set[str] = field(default_factory=set)
    associations: set[int] = field(default_factory=set)
    expected_count: int | None = None
    # Per association: images it sent to this version, when it sent the first.
    association_images: dict[int, int] = field(default_factory=dict)
    association_started_s: dict[int, float] = field(default_factory=dict)
    interrupted_at_s: float | None = None
    facts: dict[str, SliceFacts] = field(default_factory=dict)  # by SOP Instance UID
    held: str | None = None  # the verdict that holds the version back, once logged

    @property
    def interruption(self) -> str | None:
        """Why an association of this version did not end normally, or None."""
        value = self.row.get("interrupted")
        return str(value) if value else None


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value)


def _now_utc() -> datetime:
    return datetime.now(UTC)


class SeriesAssembler:
    """Tracks open series versions and hands completed ones to a callback.

    Parameters
    ----------
    db
        The receive tables.
    on_series_complete
        Called once per completed version (at least once; see module doc).
    complete_after_s
        Quiet period in seconds.
    complete_on
        ``"quiet_period"`` (default) or ``"association_release"`` (complete
        every series of an association when it is released).
    complete_on_release
        Optional hook ``(first_header) -> bool``; True completes that series
        on release even when ``complete_on`` is ``"quiet_period"``.
    expected_count_attribute
        Optional DICOM keyword whose integer value in the first header is the
        number of instances of the series.
    incomplete_wait_s
        How long after its last image a version that is not whole waits for
        the rest before it is completed as ``incomplete``, in seconds.
    handoff_retry_s
        Delay before retrying a callback that raised, in seconds.
    """

    def __init__(
        self,
        db: InstanceDB,
        on_series_complete: CompletionCallback,
        *,
        complete_after_s: float = 10.0,
        complete_on: str = "quiet_period",
        complete_on_release: ReleaseHook | None = None,
        expected_count_attribute: str | None = None,
        incomplete_wait_s: float = 600.0,
        handoff_retry_s: float = 30.0,
    ) -> None:
        self.db = db
        self.on_series_complete = on_series_complete
        self.complete_after_s = complete_after_s
        self.complete_on = complete_on
        self.complete_on_release = complete_on_release
        self.expected_count_attribute = expected_count_attribute
        self.incomplete_wait_s = incomplete_wait_s
        self.handoff_retry_s = handoff_retry_s
        self._lock = threading.RLock()
        self._open: dict[str, _OpenSeries] = {}
        self._scheduler = BackgroundScheduler(
            timezone=UTC, job_defaults={"misfire_grace_time": None, "coalesce": True}
        )

    # -- life cycle -----------------------------------------------------
    def start(self) -> None:
        """Start the timer thread (call after :meth:`recover`)."""
        self._scheduler.start()

    def stop(self) -> None:
        """Stop timers; open series stay ``receiving`` in the DB for the next start."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)

    def open_series(self) -> dict[str, int]:
        """``{series_uid: version}`` of versions still receiving."""
        with self._lock:
            return {uid: st.version for uid, st in self._open.items()}

    # -- input ----------------------------------------------------------
    def instance_received(self, arrival: InstanceArrival) -> int:
        """Record an instance that is on disk; return the series version it joined.

        Writes the ``instances`` row and the ``series`` row in one transaction
        (the caller acknowledges the C-STORE only after this returns).
        """
        now_iso = arrival.received_at.isoformat()
        with self._lock:
            st = self._open.get(arrival.series_uid)
            if st is None:
                st = self._open_new_version(arrival, now_iso)
            st.last_arrival_s = time.monotonic()
            st.sop_uids.add(arrival.sop_instance_uid)
            st.facts[arrival.sop_instance_uid] = SliceFacts.from_header(arrival.header)
            if arrival.association_id:
                assoc = arrival.association_id
                st.associations.add(assoc)
                st.association_images[assoc] = st.association_images.get(assoc, 0) + 1
                st.association_started_s.setdefault(assoc, st.last_arrival_s)
            st.row["associations_open"] = len(st.associations)
            st.row["num_received"] = int(st.row["num_received"]) + 1
            st.row["last_received_at"] = now_iso
            instance_row = {
                "sop_instance_uid": arrival.sop_instance_uid,
                "study_uid": arrival.study_uid,
                "series_uid": arrival.series_uid,
                "series_version": st.version,
                "sop_class_uid": arrival.sop_class_uid,
                "transfer_syntax_uid": arrival.transfer_syntax_uid,
                "path": str(arrival.path),
                "size_bytes": arrival.size_bytes,
                "received_at": now_iso,
                "calling_ae": arrival.calling_ae,
                "peer_address": arrival.peer_address,
            }
            self.db.record_instance(instance_row, dict(st.row))
            if st.expected_count is not None and len(st.sop_uids) >= st.expected_count:
                self._schedule_now(st.series_uid, st.version, "expected_count")
            return st.version

    def _open_new_version(self, arrival: InstanceArrival, now_iso: str) -> _OpenSeries:
        previous = self.db.series_rows(arrival.series_uid)
        version = (int(previous[-1]["version"]) + 1) if previous else 1
        header = arrival.header
        row: dict[str, Any] = {
            "series_uid": arrival.series_uid,
            "version": version,
            "study_uid": arrival.study_uid,
            "state": "receiving",
            "handed_off": 0,
            "num_received": 0,
            "expected_count": None,
            "first_instance_path": str(arrival.path),
            "calling_ae": arrival.calling_ae,
            "called_ae": arrival.called_ae,
            "peer_address": arrival.peer_address,
            "modality": _text(header, "Modality"),
            "body_part": _text(header, "BodyPartExamined"),
            "series_description": _text(header, "SeriesDescription"),
            "first_received_at": now_iso,
            "last_received_at": now_iso,
            "completed_at": None,
            "reason": None,
            "associations_open": 0,
            "interrupted": None,
            "completeness": None,
        }
        st = _OpenSeries(
            series_uid=arrival.series_uid,
            version=version,
            header=header,
            row=row,
            last_arrival_s=time.monotonic(),
        )
        st.expected_count = self._expected_count(header, arrival.series_uid)
        row["expected_count"] = st.expected_count
        self._open[arrival.series_uid] = st
        self._arm_quiet_timer(st, self.complete_after_s)
        log.info(
            "series %s version %d opened (study %s, modality %s, from %s)",
            arrival.series_uid,
            version,
            arrival.study_uid,
            row["modality"] or "?",
            arrival.calling_ae or "spool",
        )
        return st

    def _expected_count(self, header: Dataset, series_uid: str) -> int | None:
        keyword = self.expected_count_attribute
        if not keyword:
            return None
        value = header.get(keyword)
        try:
            count = int(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            log.warning(
                "series %s: %s is %r, expected an integer instance count; "
                "completing it by quiet period instead",
                series_uid,
                keyword,
                value,
            )
            return None
        return count if count and count > 0 else None

    def association_released(self, association_id: int) -> None:
        """An association was released normally: complete its series if configured.

        It also lifts an earlier interruption of a series when this association
        sent its first image to that series after the interruption (the
        sender's retry).
        """
        with self._lock:
            for st in list(self._open.values()):
                if association_id not in st.associations:
                    continue
                st.associations.discard(association_id)
                st.row["associations_open"] = len(st.associations)
                started_s = st.association_started_s.get(association_id, 0.0)
                if st.interrupted_at_s is not None and started_s > st.interrupted_at_s:
                    log.info(
                        "series %s version %d: a later association was released normally "
                        "after %d images; the earlier interruption (%s) no longer holds it",
                        st.series_uid,
                        st.version,
                        st.association_images.get(association_id, 0),
                        st.interruption,
                    )
                    st.row["interrupted"] = None
                    st.interrupted_at_s = None
                self._save_row(st)
                if st.associations:
                    continue  # another association is still sending this series
                if self._completes_on_release(st):
                    self._schedule_now(st.series_uid, st.version, "association_release")

    def association_aborted(self, association_id: int) -> None:
        """An association ended abnormally: its series wait for the sender's retry."""
        with self._lock:
            for st in self._open.values():
                if association_id not in st.associations:
                    continue
                st.associations.discard(association_id)
                st.row["associations_open"] = len(st.associations)
                images = st.association_images.get(association_id, 0)
                st.row["interrupted"] = (
                    f"the sender's association was aborted after {images} "
                    f"image{'s' if images != 1 else ''}"
                )
                st.interrupted_at_s = time.monotonic()
                self._save_row(st)
                log.warning(
                    "series %s version %d: %s; the series waits for the rest (up to %.0f s "
                    "after its last image) and is not contoured before",
                    st.series_uid,
                    st.version,
                    st.row["interrupted"],
                    self.incomplete_wait_s,
                )

    def _save_row(self, st: _OpenSeries) -> None:
        try:
            self.db.save_series(dict(st.row))
        except Exception:  # boundary: the in-memory state still holds the series
            log.exception("cannot record the state of series %s", st.series_uid)

    def _completes_on_release(self, st: _OpenSeries) -> bool:
        if self.complete_on == "association_release":
            return True
        if self.complete_on_release is None:
            return False
        try:
            return bool(self.complete_on_release(self._attributes_so_far(st)))
        except Exception:  # boundary: a faulty hook must not stop receiving
            log.exception(
                "complete_on_release hook failed for series %s; using the quiet period",
                st.series_uid,
            )
            return False

    @staticmethod
    def _attributes_so_far(st: _OpenSeries) -> SeriesAttributes:
        """The series as routing sees it at release: the first header, the
        association's AE titles and the images received so far (the same
        facts the completion record holds, so the hook and the worker pick
        the same rule)."""
        return SeriesAttributes.from_dataset(
            st.header,
            calling_ae=str(st.row.get("calling_ae") or ""),
            called_ae=str(st.row.get("called_ae") or ""),
            num_images=max(len(st.sop_uids), 1),
        )

    # -- timers and completion -------------------------------------------
    def _arm_quiet_timer(self, st: _OpenSeries, delay_s: float) -> None:
        self._scheduler.add_job(
            self._on_quiet_timer,
            "date",
            run_date=_now_utc() + timedelta(seconds=max(delay_s, 0.0)),
            args=[st.series_uid, st.version],
            id=f"quiet:{st.series_uid}:{st.version}",
            replace_existing=True,
        )

    def _schedule_now(self, series_uid: str, version: int, reason: CompletionReason) -> None:
        self._scheduler.add_job(
            self._complete, args=[series_uid, version, reason], id=None, replace_existing=False
        )

    def _on_quiet_timer(self, series_uid: str, version: int) -> None:
        with self._lock:
            st = self._open.get(series_uid)
            if st is None or st.version != version:
                return
            quiet_s = time.monotonic() - st.last_arrival_s
            if quiet_s < self.complete_after_s:
                self._arm_quiet_timer(st, self.complete_after_s - quiet_s)
                return
        self._complete(series_uid, version, "quiet_period")

    def _assess(self, series_uid: str, version: int) -> CompletenessVerdict | None:
        """The completeness verdict of the open version (None when it is gone).

        Headers of instances not seen by this process (earlier versions, a
        restart) are read from the spool once and cached.
        """
        with self._lock:
            st = self._open.get(series_uid)
            if st is None or st.version != version:
                return None
            known = dict(st.facts)
            interruption = st.interruption
        rows = self.db.instance_rows(series_uid)
        facts = []
        for row in rows:
            uid = str(row["sop_instance_uid"])
            fact = known.get(uid)
            if fact is None:
                fact = SliceFacts.from_header(self._read_header(Path(row["path"])))
                with self._lock:
                    st.facts[uid] = fact
            facts.append(fact)
        return assess(facts, interruption=interruption)

    def _digest(self, series_uid: str) -> ContentDigest | None:
        paths = {
            str(r["sop_instance_uid"]): Path(r["path"])
            for r in self.db.instance_rows(series_uid)
            if Path(r["path"]).exists()
        }
        try:
            return content_digest(paths)
        except OSError as err:  # boundary: a file vanished; re-push detection is skipped
            log.warning("series %s: cannot digest its instances (%s)", series_uid, err)
            return None

    def _complete(self, series_uid: str, version: int, reason: CompletionReason) -> None:
        verdict = self._assess(series_uid, version)
        if verdict is None:
            return  # already completed by another trigger
        digest = self._digest(series_uid) if verdict.complete else None
        with self._lock:
            st = self._open.get(series_uid)
            if st is None or st.version != version:
                return
            quiet_s = time.monotonic() - st.last_arrival_s
            if not verdict.complete and quiet_s < self.incomplete_wait_s:
                self._hold(st, verdict, quiet_s)
                return
            del self._open[series_uid]
            job = self._scheduler.get_job(f"quiet:{series_uid}:{version}")
            if job is not None:
                job.remove()
            completed_at = _now_utc()
            if not verdict.complete:
                reason = "incomplete"
            st.row["completeness"] = verdict.describe()
            if digest is not None:
                st.row.update(
                    content_sha256=digest.content_sha256,
                    uids_sha256=digest.uids_sha256,
                    content_count=digest.count,
                )
            st.row.update(state="complete", completed_at=completed_at.isoformat(), reason=reason)
            self.db.save_series(dict(st.row))
            row = dict(st.row)
        log_level = logging.INFO if verdict.complete else logging.ERROR
        log.log(
            log_level,
            "series %s version %d complete (%s): %d instances received in this version; %s",
            series_uid,
            version,
            reason,
            len(st.sop_uids),
            verdict.describe(),
        )
        self._hand_off(row, reason)

    def _hold(self, st: _OpenSeries, verdict: CompletenessVerdict, quiet_s: float) -> None:
        """Keep a version that is not whole open; look again after a quiet period."""
        described = verdict.describe()
        if st.held != described:
            st.held = described
            st.row["completeness"] = described  # `contourd status` shows held series
            self._save_row(st)
            log.warning(
                "series %s version %d held back, %s; waiting up to %.0f s more for the rest",
                st.series_uid,
                st.version,
                described,
                self.incomplete_wait_s - quiet_s,
            )
        self._arm_quiet_timer(
            st, min(self.complete_after_s, max(self.incomplete_wait_s - quiet_s, 0.0))
        )

    def _hand_off(self, row: dict[str, Any], reason: CompletionReason) -> None:
        completion = self._completion_from_row(row, reason)
        started_s = time.monotonic()
        try:
            self.on_series_complete(completion)
        except Exception:  # boundary: keep the series for a retry, keep serving
            log.exception(
                "hand-off of series %s version %d failed; retrying in %.0f s",
                completion.series_uid,
                completion.version,
                self.handoff_retry_s,
            )
            self._scheduler.add_job(
                self._hand_off,
                "date",
                run_date=_now_utc() + timedelta(seconds=self.handoff_retry_s),
                args=[row, reason],
            )
            return
        self.db.mark_handed_off(completion.series_uid, completion.version)
        log.info(
            "series %s version %d handed off (%d instances on disk, %.3f s)",
            completion.series_uid,
            completion.version,
            completion.num_instances,
            time.monotonic() - started_s,
        )

    def _completion_from_row(
        self, row: dict[str, Any], reason: CompletionReason
    ) -> SeriesCompletion:
        series_uid = str(row["series_uid"])
        paths = sorted(
            Path(r["path"]) for r in self.db.instance_rows(series_uid) if Path(r["path"]).exists()
        )
        first = Path(row["first_instance_path"])
        completed_raw = row.get("completed_at")
        completed_at = datetime.fromisoformat(completed_raw) if completed_raw else _now_utc()
        return SeriesCompletion(
            study_uid=str(row["study_uid"]),
            series_uid=series_uid,
            version=int(row["version"]),
            spool_dir=first.parent,
            instance_paths=paths,
            num_instances=len(paths),
            num_received=int(row["num_received"] or 0),
            first_instance_path=first,
            calling_ae=str(row["calling_ae"] or ""),
            called_ae=str(row["called_ae"] or ""),
            peer_address=str(row["peer_address"] or ""),
            modality=str(row["modality"] or ""),
            body_part=str(row["body_part"] or ""),
            series_description=str(row["series_description"] or ""),
            completed_at=completed_at,
            reason=reason,
            completeness=str(row.get("completeness") or ""),
            incomplete=self._incomplete_message(row),
            **self._compare_with_earlier(row),
        )

    def _compare_with_earlier(self, row: dict[str, Any]) -> dict[str, Any]:
        """``same_content_as`` and ``change`` of a version against the earlier ones."""
        content = row.get("content_sha256")
        if not content:
            return {}
        earlier = [
            r
            for r in self.db.series_rows(str(row["series_uid"]))
            if int(r["version"]) < int(row["version"]) and r.get("content_sha256")
        ]
        same = [int(r["version"]) for r in earlier if r["content_sha256"] == content]
        change = None
        if earlier and not same:
            digest = ContentDigest(
                str(content), str(row.get("uids_sha256")), int(row.get("content_count") or 0)
            )
            # Name the first version that held this content (later ones were re-pushes).
            newest = earlier[-1]
            base = next(r for r in earlier if r["content_sha256"] == newest["content_sha256"])
            change = describe_change(base, digest)
        return {"same_content_as": same, "change": change}

    def _incomplete_message(self, row: dict[str, Any]) -> str | None:
        """The job's error for a version completed as ``incomplete``, else None."""
        if row.get("reason") != "incomplete":
            return None
        return (
            f"{row.get('completeness') or 'incomplete'}; nothing more arrived within "
            f"series.incomplete_wait_s = {self.incomplete_wait_s:.0f} s, so the series was "
            "not contoured. Send the whole series again from the scanner or PACS: it is "
            "received as a new version and contoured when it is whole"
        )

    # -- restart ----------------------------------------------------------
    def recover(self) -> None:
        """Reload receiving versions from the DB and queue unsent completions.

        Call before :meth:`start` and before serving. Receiving versions get a
        fresh quiet period from now; complete versions that were not handed
        off are re-emitted with reason ``restart`` once the scheduler runs.
        """
        with self._lock:
            for row in self.db.latest_versions():
                if row["state"] != "receiving":
                    continue
                header = self._read_header(Path(row["first_instance_path"]))
                st = _OpenSeries(
                    series_uid=row["series_uid"],
                    version=int(row["version"]),
                    header=header,
                    row=dict(row),
                    last_arrival_s=time.monotonic(),
                )
                st.sop_uids = {
                    r["sop_instance_uid"]
                    for r in self.db.instance_rows(row["series_uid"])
                    if r["series_version"] == st.version
                }
                st.expected_count = row["expected_count"]
                if not st.interruption and int(row.get("associations_open") or 0) > 0:
                    st.row["interrupted"] = (
                        f"the node stopped while an association was still sending this "
                        f"series ({len(st.sop_uids)} images had arrived)"
                    )
                if st.interruption:
                    st.interrupted_at_s = time.monotonic()
                st.row["associations_open"] = 0
                self._open[st.series_uid] = st
                self._arm_quiet_timer(st, self.complete_after_s)
                log.info(
                    "series %s version %d still receiving after restart (%d instances); "
                    "quiet period restarted%s",
                    st.series_uid,
                    st.version,
                    len(st.sop_uids),
                    f"; held until the sender re-sends: {st.interruption}"
                    if st.interruption
                    else "",
                )
            for row in self.db.pending_handoffs():
                log.info(
                    "series %s version %d was complete (%s) but not handed off; re-emitting",
                    row["series_uid"],
                    row["version"],
                    row["reason"],
                )
                self._scheduler.add_job(self._hand_off, args=[row, "restart"])

    @staticmethod
    def _read_header(path: Path) -> Dataset:
        try:
            return dcmread(path, stop_before_pixels=True)
        except Exception as err:  # boundary: unreadable file, keep the series going
            log.warning("cannot read header of %s (%s); hooks see an empty header", path, err)
            return Dataset()
