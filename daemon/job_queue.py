"""Durable job rows: one job per (series UID, version), leased by workers.

A job moves through these states (each transition is a row in ``job_events``
with its UTC time, the worker and a message)::

    complete -> routed -> running -> written -> sending -> sent
                   |          |          |          `-> failed (after N attempts)
                   |          |          `-> shadow (run and recorded, never sent)
                   |          `-> failed (error message kept)
                   |-> not_routed (no rule matched; reason kept)
                   `-> scheduled (rule window closed; claimable again at not_before)

A job is created when the assembler reports its series complete. Workers
take jobs with :meth:`DatabaseJobQueue.claim`, which sets a lease (worker id
and expiry, Unix seconds). A worker renews the lease while it works; when it
dies, the lease runs out and the next claim takes the job again (up to
``max_attempts`` claims, so a series that crashes every worker ends
``failed`` instead of looping). Every change made on behalf of a worker names
it, and is refused with :class:`LeaseLostError` when the lease has passed to
someone else (fencing).

Sending is tracked per destination in ``job_deliveries`` (pending -> sending
-> sent | failed) with its own attempts, next attempt time and lease, so the
dispatcher can retry one destination without resending to the others.

:class:`DatabaseJobQueue` is the queue on the node's database (tables ``jobs``, ``job_events``,
``job_deliveries``, ``workers``): SQLite ``<data_dir>/contourd.db`` by default,
or PostgreSQL shared by several receivers and workers (``database:`` setting,
:mod:`contourd.database`).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contourd.database import DB_FILENAME as DB_FILENAME  # re-exported for older callers
from contourd.database import Database, DbConnection, JobListener, load_path, store_path
from contourd.errors import JobError, LeaseLostError
from contourd.schema import jobs as schema_jobs

if TYPE_CHECKING:
    from daemon.series_assembler import SeriesCompletion


class JobState(StrEnum):
    """States of a job row (see the module docstring for the graph)."""

    COMPLETE = "complete"
    ROUTED = "routed"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    WRITTEN = "written"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    NOT_ROUTED = "not_routed"
    SHADOW = "shadow"


class DeliveryState(StrEnum):
    """States of one result's delivery to one destination."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


FINISHED_STATES = frozenset({JobState.SENT, JobState.FAILED, JobState.NOT_ROUTED, JobState.SHADOW})
"""Nothing more will happen to a job in these states (unless resent)."""

UNSENT_RESULT_STATES = frozenset({JobState.WRITTEN, JobState.SENDING})
"""Results exist but have not reached every destination yet."""

_ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.COMPLETE: frozenset(
        {JobState.ROUTED, JobState.NOT_ROUTED, JobState.SCHEDULED, JobState.FAILED}
    ),
    JobState.SCHEDULED: frozenset(
        {JobState.ROUTED, JobState.NOT_ROUTED, JobState.SCHEDULED, JobState.FAILED}
    ),
    # routed -> routed / not_routed: a worker that takes over a job whose first
    # worker died after routing it routes it again, with the config of now.
    JobState.ROUTED: frozenset(
        {
            JobState.ROUTED,
            JobState.NOT_ROUTED,
            JobState.RUNNING,
            JobState.SCHEDULED,
            JobState.FAILED,
        }
    ),
    JobState.RUNNING: frozenset({JobState.WRITTEN, JobState.SHADOW, JobState.FAILED}),
    JobState.WRITTEN: frozenset({JobState.SENDING, JobState.SENT, JobState.FAILED}),
    JobState.SENDING: frozenset({JobState.SENDING, JobState.SENT, JobState.FAILED}),
    JobState.SENT: frozenset({JobState.WRITTEN, JobState.COMPLETE}),
    JobState.FAILED: frozenset({JobState.WRITTEN, JobState.COMPLETE}),
    JobState.NOT_ROUTED: frozenset({JobState.COMPLETE}),
    JobState.SHADOW: frozenset({JobState.WRITTEN, JobState.COMPLETE}),
}
"""Legal transitions; finished states go back to ``written`` only by a resend, and
any finished state back to ``complete`` only by a retry (:meth:`SqliteJobQueue.retry`)."""

RETRYABLE_STATES = frozenset({JobState.FAILED, JobState.NOT_ROUTED})
"""States a job can be run again from once its cause is fixed."""


def utc_iso(epoch_s: float) -> str:
    """ISO 8601 UTC text (millisecond precision) for Unix seconds."""
    return datetime.fromtimestamp(epoch_s, tz=UTC).isoformat(timespec="milliseconds")


_SINCE_UNITS_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_since(text: str, now_s: float | None = None) -> float:
    """Unix seconds of ``text``: an age (``30m``, ``12h``, ``2d``) or an ISO 8601 time (UTC if
    no zone is given).

    Raises
    ------
    JobError
        When ``text`` is neither.
    """
    value = text.strip()
    now = time.time() if now_s is None else now_s
    if value[-1:].lower() in _SINCE_UNITS_S:
        try:
            return now - float(value[:-1]) * _SINCE_UNITS_S[value[-1].lower()]
        except ValueError:
            pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as err:
        raise JobError(
            f"--since {text!r} is neither an age (30m, 12h, 2d) nor an ISO 8601 time "
            f"(2026-12-03 or 2026-12-03T08:00); give one of those"
        ) from err
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass(frozen=True)
class Job:
    """One job row, decoded. Times are Unix seconds (UTC)."""

    id: int
    study_uid: str
    series_uid: str
    version: int
    state: JobState
    spool_dir: Path
    instance_paths: list[Path]
    num_instances: int
    calling_ae: str
    called_ae: str
    modality: str
    series_description: str
    priority: int
    rule: str | None
    models: list[str]
    destinations: list[str]
    outputs: list[str]
    label: str | None
    shadow: bool
    not_before: float | None
    attempts: int
    error: str | None
    warnings: list[str]
    timings_s: dict[str, float]
    result_files: list[Path]
    preview_file: Path | None
    lease_owner: str | None
    lease_expires_at: float | None
    created_at: float
    updated_at: float
    finished_at: float | None
    images_deleted_at: float | None
    rule_slot: int = 0
    pinned_rule: str | None = None
    supersedes: dict[str, Any] | None = None
    """For a changed series: the earlier job whose structure set this one
    replaces (``job_id``, ``version``, ``sop_instance_uids``, ``change``)."""
    series_attributes: dict[str, Any] | None = None
    """What routing matches on, recorded once when the series completed
    (``routing.series_attributes.SeriesAttributes.to_record``); ``None`` for a
    job submitted without it (the worker then reads the spooled headers)."""

    @property
    def finished(self) -> bool:
        """True when the job is in a final state."""
        return self.state in FINISHED_STATES


@dataclass(frozen=True)
class JobEvent:
    """One state transition of a job."""

    job_id: int
    state: str
    at: float
    worker: str | None
    message: str | None


@dataclass(frozen=True)
class Delivery:
    """Delivery of one job's result files to one named destination."""

    job_id: int
    destination: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float | None
    last_error: str | None
    sent_at: float | None
    sent_sop_instance_uids: list[str] = field(default_factory=list)
    accepted_sop_instance_uids: list[str] = field(default_factory=list)
    """Files the peer acknowledged during an attempt that did not finish (its
    sender died); they are not sent again."""
    failing_since: float | None = None
    """Unix time of the first failed attempt since the last success."""


_CLAIMABLE_STATES = frozenset({JobState.COMPLETE, JobState.ROUTED, JobState.SCHEDULED})
"""A worker may claim a job in these states (see :meth:`DatabaseJobQueue.claim`)."""

_JOB_COLUMNS = frozenset(c.name for c in schema_jobs.columns)
"""Columns of ``jobs`` (defined in :mod:`contourd.schema`)."""
_JSON_COLUMNS = frozenset(
    {
        "supersedes",
        "series_attributes",
        "instance_paths",
        "models",
        "destinations",
        "outputs",
        "warnings",
        "timings_s",
        "result_files",
    }
)


@contextmanager
def immediate_transaction(
    conn: sqlite3.Connection, lock: threading.RLock
) -> Iterator[sqlite3.Connection]:
    """One ``BEGIN IMMEDIATE`` transaction under ``lock``, committed unless it raises."""
    with lock:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


#: Priority of a new job for a structure set (an RTSTRUCT coming back reviewed,
#: for the feedback loop): below image series (0), so comparing a reviewed set,
#: which takes seconds, never delays a series waiting to be contoured.
STRUCTURE_SET_PRIORITY = -1


def arrival_priority(modality: str | None) -> int:
    """Priority of a job when its series completes, before routing sets the rule's:
    :data:`STRUCTURE_SET_PRIORITY` for ``RTSTRUCT``, 0 for everything else."""
    return STRUCTURE_SET_PRIORITY if (modality or "").upper() == "RTSTRUCT" else 0


class DatabaseJobQueue:
    """The job queue on the node's database (SQLite in the data folder or PostgreSQL).

    Safe to share between threads of one process (one connection behind a
    lock) and between processes and hosts: every read-modify-write runs in one
    transaction (SQLite ``BEGIN IMMEDIATE``; PostgreSQL row locks, claims with
    ``FOR UPDATE SKIP LOCKED``). On PostgreSQL a change that makes a job
    claimable sends ``NOTIFY contourd_jobs`` so idle workers wake at once
    (:meth:`listener`).

    Paths under the data folder (spool, instances, results) are stored
    relative to it (``./spool/...``), so hosts that mount the data folder at
    different places share the rows; other paths are stored as they are.

    Parameters
    ----------
    data_dir
        The node's data folder (files; and ``contourd.db`` without ``database``).
    max_attempts
        Claims of one job before it is failed (a series that kills workers).
    busy_timeout_s
        How long a write waits for another process's lock before failing.
    database
        Where the rows live; default SQLite ``data_dir / "contourd.db"``.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        max_attempts: int = 3,
        busy_timeout_s: float = 30.0,
        database: Database | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.database = database or Database(self.data_dir, busy_timeout_s=busy_timeout_s)
        self.db_path = self.database.sqlite_path
        self.max_attempts = max_attempts
        self._conn = self.database.connect()
        self._lock = self._conn.lock

    @property
    def conn(self) -> DbConnection:
        """The queue's connection (read-only use by status and metrics)."""
        return self._conn

    def listener(self) -> JobListener:
        """Something to wait on for new claimable jobs (NOTIFY on PostgreSQL)."""
        return self.database.listener()

    @contextmanager
    def _write(self) -> Iterator[DbConnection]:
        """One write transaction, committed unless it raises."""
        with self._conn.transaction() as conn:
            yield conn

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    # -- paths relative to the data folder -------------------------------------
    def _store_path(self, path: Path | str) -> str:
        return store_path(path, self.data_dir)

    def _load_path(self, text: str) -> Path:
        return load_path(text, self.data_dir)

    # -- decoding ---------------------------------------------------------------
    def _row(self, job_id: int, *, lock: bool = False) -> dict[str, Any]:
        for_update = self._conn.for_update if lock else ""
        cursor = self._conn.execute("SELECT * FROM jobs WHERE id = ?" + for_update, (job_id,))
        row = cursor.fetchone()
        if row is None:
            raise JobError(
                f"no job with id {job_id} in {self.database.label}; list jobs with `contourd jobs`"
            )
        return dict(zip([c[0] for c in cursor.description], row, strict=True))

    def _decode(self, row: dict[str, Any]) -> Job:
        def js(name: str, default: Any) -> Any:
            text = row.get(name)
            return json.loads(text) if text else default

        return Job(
            id=int(row["id"]),
            study_uid=row["study_uid"],
            series_uid=row["series_uid"],
            version=int(row["version"]),
            state=JobState(row["state"]),
            spool_dir=self._load_path(row["spool_dir"] or ""),
            instance_paths=[self._load_path(p) for p in js("instance_paths", [])],
            num_instances=int(row["num_instances"] or 0),
            calling_ae=row["calling_ae"] or "",
            called_ae=row["called_ae"] or "",
            modality=row["modality"] or "",
            series_description=row["series_description"] or "",
            priority=int(row["priority"] or 0),
            rule=row["rule"],
            models=list(js("models", [])),
            destinations=list(js("destinations", [])),
            outputs=list(js("outputs", [])),
            label=row["label"],
            shadow=bool(row["shadow"]),
            not_before=row["not_before"],
            attempts=int(row["attempts"] or 0),
            error=row["error"],
            warnings=list(js("warnings", [])),
            timings_s=dict(js("timings_s", {})),
            result_files=[self._load_path(p) for p in js("result_files", [])],
            preview_file=self._load_path(row["preview_file"]) if row["preview_file"] else None,
            lease_owner=row["lease_owner"],
            lease_expires_at=row["lease_expires_at"],
            created_at=float(row["created_at"]),
            updated_at=float(row["updated_at"]),
            finished_at=row["finished_at"],
            images_deleted_at=row["images_deleted_at"],
            rule_slot=int(row.get("rule_slot") or 0),
            pinned_rule=row.get("pinned_rule"),
            supersedes=js("supersedes", None),
            series_attributes=js("series_attributes", None),
        )

    def _encode(self, fields: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in fields.items():
            if key not in _JOB_COLUMNS or key == "id":
                raise JobError(
                    f"unknown job field {key!r}; expected one of "
                    f"{', '.join(sorted(k for k in _JOB_COLUMNS if k != 'id'))}"
                )
            if key in _JSON_COLUMNS:
                if key in ("instance_paths", "result_files"):
                    value = [self._store_path(p) for p in value]
                value = json.dumps(value)
            elif isinstance(value, Path):
                value = self._store_path(value)
            elif isinstance(value, bool):
                value = int(value)
            out[key] = value
        return out

    def _event(
        self,
        conn: DbConnection,
        job_id: int,
        state: str,
        now: float,
        worker: str | None,
        message: str | None,
    ) -> None:
        conn.execute(
            "INSERT INTO job_events (job_id, state, at, at_utc, worker, message) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (job_id, state, now, utc_iso(now), worker, message),
        )

    # -- submission -------------------------------------------------------------
    def _insert_complete_job(
        self, conn: DbConnection, fields: dict[str, Any], now: float, message: str
    ) -> int:
        """Insert a job row in state ``complete`` with its first event; return its id."""
        row = self._encode(
            {
                "priority": 0,
                **fields,
                "state": JobState.COMPLETE.value,
                "shadow": False,
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
            }
        )
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        cursor = conn.execute(
            f"INSERT INTO jobs ({names}) VALUES ({marks}) RETURNING id", tuple(row.values())
        )
        job_id = int(cursor.fetchone()[0])
        self._event(conn, job_id, JobState.COMPLETE.value, now, None, message)
        conn.notify()
        return job_id

    def submit_series(
        self,
        completion: SeriesCompletion,
        *,
        supersedes: dict[str, Any] | None = None,
        series_attributes: dict[str, Any] | None = None,
    ) -> int:
        """Create the job for a completed series, state ``complete``.

        Idempotent: submitting the same (series UID, version) again returns the
        existing job's id and changes nothing. A completion whose
        ``incomplete`` is set becomes a ``failed`` job with that message at
        once (never contoured). ``supersedes`` names the earlier job whose
        structure set the new one replaces (a changed series).
        ``series_attributes`` is what routing matches on, recorded once at
        completion (see :func:`daemon.series_intake.submit_completion`).
        """
        now = time.time()
        with self._write() as conn:
            existing = conn.execute(
                "SELECT id FROM jobs WHERE series_uid = ? AND version = ? AND rule_slot = 0",
                (completion.series_uid, int(completion.version)),
            ).fetchone()
            if existing is not None:
                return int(existing[0])
            reason = getattr(completion, "reason", None)
            job_id = self._insert_complete_job(
                conn,
                {
                    "study_uid": completion.study_uid,
                    "series_uid": completion.series_uid,
                    "version": int(completion.version),
                    "rule_slot": 0,
                    "spool_dir": completion.spool_dir,
                    "instance_paths": list(completion.instance_paths),
                    "num_instances": int(completion.num_instances),
                    "calling_ae": completion.calling_ae,
                    "called_ae": completion.called_ae,
                    "modality": completion.modality or "",
                    "priority": arrival_priority(completion.modality),
                    "series_description": "",
                    "supersedes": supersedes,
                    "series_attributes": series_attributes,
                },
                now,
                f"series complete ({completion.num_instances} instances"
                + (f", {reason}" if reason else "")
                + ")",
            )
            incomplete = getattr(completion, "incomplete", None)
            if incomplete:
                # Never contoured: half a series must not reach the planning system.
                conn.execute(
                    "UPDATE jobs SET state = 'failed', error = ?, finished_at = ?, "
                    "updated_at = ? WHERE id = ?",
                    (incomplete, now, now, job_id),
                )
                self._event(conn, job_id, JobState.FAILED.value, now, None, incomplete)
            return job_id

    def note(self, job_id: int, what: str, message: str) -> None:
        """Record an event on a job without changing its state (e.g. a re-push)."""
        now = time.time()
        with self._write() as conn:
            self._row(job_id)
            self._event(conn, job_id, what, now, None, message)

    def spawn_rule_job(self, job_id: int, rule_slot: int, rule_name: str) -> int:
        """A sibling job for the same series that runs only rule ``rule_name``.

        Used when several rules match a series (``continue: true``): job
        ``rule_slot`` 0 runs the first matching rule, and each further match
        gets its own job (own outputs, destinations, schedule and retries).
        Idempotent per (series UID, version, slot).
        """
        parent = self.get(job_id)
        now = time.time()
        with self._write() as conn:
            existing = conn.execute(
                "SELECT id FROM jobs WHERE series_uid = ? AND version = ? AND rule_slot = ?",
                (parent.series_uid, parent.version, int(rule_slot)),
            ).fetchone()
            if existing is not None:
                return int(existing[0])
            return self._insert_complete_job(
                conn,
                {
                    "study_uid": parent.study_uid,
                    "series_uid": parent.series_uid,
                    "version": parent.version,
                    "rule_slot": int(rule_slot),
                    "pinned_rule": rule_name,
                    "spool_dir": parent.spool_dir,
                    "instance_paths": list(parent.instance_paths),
                    "num_instances": parent.num_instances,
                    "calling_ae": parent.calling_ae,
                    "called_ae": parent.called_ae,
                    "modality": parent.modality,
                    "series_description": parent.series_description,
                    "series_attributes": parent.series_attributes,
                },
                now,
                f"rule {rule_name!r} also matched the series of job {job_id} (continue: true)",
            )

    # -- leases -------------------------------------------------------------------
    def claim(self, worker_id: str, lease_s: float, *, now: float | None = None) -> Job | None:
        """Lease the most urgent claimable job to ``worker_id``.

        Claimable: ``complete`` or ``routed``; ``scheduled`` whose ``not_before``
        has passed; ``running`` whose lease expired (its worker died). Order:
        priority (high first), then age. Each claim counts an attempt; a job
        claimed ``max_attempts`` times without finishing is failed instead.
        ``now`` (epoch s, default the clock) is the moment leases and
        ``not_before`` are judged at; tests pass it instead of sleeping.
        """
        now = time.time() if now is None else now
        with self._write() as conn:
            while True:
                row = conn.execute(
                    "SELECT id, state, attempts, lease_owner FROM jobs WHERE "
                    "(state IN ('complete', 'routed') AND "
                    "  (lease_expires_at IS NULL OR lease_expires_at < ?)) "
                    "OR (state = 'scheduled' AND (not_before IS NULL OR not_before <= ?) AND "
                    "  (lease_expires_at IS NULL OR lease_expires_at < ?)) "
                    "OR (state = 'running' AND lease_expires_at < ?) "
                    "ORDER BY priority DESC, id ASC LIMIT 1" + conn.skip_locked(),
                    (now, now, now, now),
                ).fetchone()
                if row is None:
                    return None
                job_id, state, attempts, old_owner = int(row[0]), row[1], int(row[2] or 0), row[3]
                if state == JobState.RUNNING.value:
                    # Its worker died mid-job: start it again from routing.
                    conn.execute(
                        "UPDATE jobs SET state = 'complete', updated_at = ? WHERE id = ?",
                        (now, job_id),
                    )
                    self._event(
                        conn,
                        job_id,
                        JobState.COMPLETE.value,
                        now,
                        worker_id,
                        f"lease of worker {old_owner!r} expired while running; job taken over",
                    )
                if attempts >= self.max_attempts:
                    message = (
                        f"job {job_id} was claimed {attempts} times without finishing "
                        f"(workers died or timed out); giving up. Look at the worker log, "
                        f"then run it again with `contourd segment`"
                    )
                    conn.execute(
                        "UPDATE jobs SET state = 'failed', error = ?, lease_owner = NULL, "
                        "lease_expires_at = NULL, updated_at = ?, finished_at = ? WHERE id = ?",
                        (message, now, now, job_id),
                    )
                    self._event(conn, job_id, JobState.FAILED.value, now, worker_id, message)
                    continue
                conn.execute(
                    "UPDATE jobs SET lease_owner = ?, lease_expires_at = ?, "
                    "attempts = attempts + 1, updated_at = ? WHERE id = ?",
                    (worker_id, now + lease_s, now, job_id),
                )
                return self._decode(self._row(job_id))

    def renew_lease(self, job_id: int, worker_id: str, lease_s: float) -> None:
        """Extend the lease ``worker_id`` holds on ``job_id`` to now + ``lease_s``."""
        now = time.time()
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND lease_owner = ?",
                (now + lease_s, job_id, worker_id),
            )
            if cursor.rowcount != 1:
                raise LeaseLostError(
                    f"worker {worker_id!r} no longer holds the lease on job {job_id}; "
                    f"another worker took it over after the lease expired"
                )

    def transition(
        self,
        job_id: int,
        state: JobState,
        *,
        worker_id: str | None = None,
        message: str | None = None,
        release_lease: bool = False,
        **fields: Any,
    ) -> Job:
        """Move ``job_id`` to ``state``, set ``fields``, record the event.

        Parameters
        ----------
        worker_id
            When given, the change is refused with :class:`LeaseLostError`
            unless this worker holds the job's lease.
        message
            Kept with the event; for ``failed`` it is also the job's ``error``.
        release_lease
            Clear the lease (the job is free for any worker again or finished).
            Final states always clear it.
        fields
            Other job columns to set (``rule``, ``models``, ``warnings``, ...).
        """
        state = JobState(state)
        now = time.time()
        with self._write() as conn:
            row = self._row(job_id, lock=True)
            current = JobState(row["state"])
            if worker_id is not None and row["lease_owner"] != worker_id:
                raise LeaseLostError(
                    f"worker {worker_id!r} cannot move job {job_id} to {state.value}: "
                    f"the lease is held by {row['lease_owner']!r}"
                )
            if state not in _ALLOWED[current]:
                raise JobError(
                    f"job {job_id} cannot go from {current.value} to {state.value}; "
                    f"allowed: {', '.join(sorted(s.value for s in _ALLOWED[current])) or 'none'}"
                )
            update = self._encode(fields)
            update["state"] = state.value
            update["updated_at"] = now
            if state == JobState.FAILED and message:
                update["error"] = message
            if state in FINISHED_STATES:
                update["finished_at"] = now
            elif current in FINISHED_STATES:
                update["finished_at"] = None
            if release_lease or state in FINISHED_STATES:
                update["lease_owner"] = None
                update["lease_expires_at"] = None
            assignments = ", ".join(f"{k} = ?" for k in update)
            conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*update.values(), job_id))
            self._event(conn, job_id, state.value, now, worker_id, message)
            if state in _CLAIMABLE_STATES or (release_lease and state not in FINISHED_STATES):
                conn.notify()
            return self._decode(self._row(job_id))

    def update_fields(self, job_id: int, *, worker_id: str | None = None, **fields: Any) -> Job:
        """Set job columns without a state change (e.g. ``images_deleted_at``)."""
        now = time.time()
        with self._write() as conn:
            row = self._row(job_id, lock=True)
            if worker_id is not None and row["lease_owner"] != worker_id:
                raise LeaseLostError(
                    f"worker {worker_id!r} cannot update job {job_id}: "
                    f"the lease is held by {row['lease_owner']!r}"
                )
            update = self._encode(fields)
            update["updated_at"] = now
            assignments = ", ".join(f"{k} = ?" for k in update)
            conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*update.values(), job_id))
            return self._decode(self._row(job_id))

    # -- reading -------------------------------------------------------------------
    def get(self, job_id: int) -> Job:
        """The job with id ``job_id``; raises :class:`JobError` when unknown."""
        with self._lock:
            return self._decode(self._row(job_id))

    def _select(self, where: str, params: Sequence[Any], order: str, limit: int) -> list[Job]:
        with self._lock:
            cursor = self._conn.execute(
                f"SELECT * FROM jobs WHERE {where} ORDER BY {order} LIMIT ?",
                (*params, limit),
            )
            names = [c[0] for c in cursor.description]
            return [self._decode(dict(zip(names, r, strict=True))) for r in cursor.fetchall()]

    def recent(self, limit: int = 20) -> list[Job]:
        """The ``limit`` newest jobs, newest first."""
        return self._select("1 = 1", (), "id DESC", limit)

    def jobs_for_series(self, series_uid: str) -> list[Job]:
        """Every job (all versions) of one series, oldest first."""
        return self._select("series_uid = ?", (series_uid,), "id ASC", 1_000_000)

    def finished_jobs_with_images(self, limit: int = 1000) -> list[Job]:
        """Finished jobs whose images have not been deleted, oldest finish first."""
        return self._select(
            "state IN ('sent', 'failed', 'not_routed', 'shadow') AND images_deleted_at IS NULL",
            (),
            "finished_at ASC, id ASC",
            limit,
        )

    def events(self, job_id: int) -> list[JobEvent]:
        """Transitions of ``job_id`` in time order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT job_id, state, at, worker, message FROM job_events "
                "WHERE job_id = ? ORDER BY id ASC",
                (job_id,),
            ).fetchall()
        return [JobEvent(int(r[0]), r[1], float(r[2]), r[3], r[4]) for r in rows]

    def counts_by_state(self) -> dict[str, int]:
        """Number of jobs per state (every state present, zeros included)."""
        counts = {s.value: 0 for s in JobState}
        with self._lock:
            for state, n in self._conn.execute(
                "SELECT state, COUNT(*) FROM jobs GROUP BY state"
            ).fetchall():
                counts[state] = int(n)
        return counts

    def last_error(self) -> tuple[int, str, float] | None:
        """(job id, error, time) of the most recent failure, or ``None``."""
        with self._lock:
            row = self._conn.execute(
                "SELECT id, error, updated_at FROM jobs WHERE state = 'failed' "
                "AND error IS NOT NULL ORDER BY updated_at DESC LIMIT 1"
            ).fetchone()
        return (int(row[0]), row[1], float(row[2])) if row else None

    # -- deliveries ------------------------------------------------------------------
    def add_deliveries(self, job_id: int, destinations: Sequence[str]) -> None:
        """Create pending delivery rows (existing ones are left as they are)."""
        now = time.time()
        with self._write() as conn:
            for name in destinations:
                conn.execute(
                    "INSERT INTO job_deliveries (job_id, destination, state, "
                    "attempts, next_attempt_at) VALUES (?, ?, 'pending', 0, ?) "
                    "ON CONFLICT (job_id, destination) DO NOTHING",
                    (job_id, name, now),
                )

    def deliveries(self, job_id: int) -> list[Delivery]:
        """The job's deliveries, by destination name."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT job_id, destination, state, attempts, next_attempt_at, last_error, "
                "sent_at, sent_sop_instance_uids, accepted_sop_instance_uids, failing_since "
                "FROM job_deliveries WHERE job_id = ? ORDER BY destination",
                (job_id,),
            ).fetchall()
        return [
            Delivery(
                job_id=int(r[0]),
                destination=r[1],
                state=DeliveryState(r[2]),
                attempts=int(r[3] or 0),
                next_attempt_at=r[4],
                last_error=r[5],
                sent_at=r[6],
                sent_sop_instance_uids=json.loads(r[7]) if r[7] else [],
                accepted_sop_instance_uids=json.loads(r[8]) if r[8] else [],
                failing_since=r[9],
            )
            for r in rows
        ]

    def next_delivery_due_at(self) -> float | None:
        """Earliest ``next_attempt_at`` of any pending delivery, or ``None``."""
        with self._lock:
            row = self._conn.execute(
                "SELECT MIN(next_attempt_at) FROM job_deliveries WHERE state = 'pending'"
            ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def claim_delivery(
        self, owner: str, lease_s: float, *, job_id: int | None = None, now: float | None = None
    ) -> tuple[Job, Delivery] | None:
        """Lease the oldest due pending delivery (or one whose sender died).

        With ``job_id``, only that job's deliveries are considered. The job
        moves to ``sending``. ``now`` (epoch s, default the clock) is the
        moment retry times and leases are judged at.
        """
        now = time.time() if now is None else now
        only = "" if job_id is None else " AND j.id = ?"
        params: tuple[Any, ...] = (now, now) if job_id is None else (now, now, job_id)
        with self._write() as conn:
            row = conn.execute(
                "SELECT d.job_id, d.destination FROM job_deliveries d JOIN jobs j "
                "ON j.id = d.job_id WHERE j.state IN ('written', 'sending') AND ("
                "(d.state = 'pending' AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= ?))"
                " OR (d.state = 'sending' AND d.lease_expires_at < ?))" + only + " "
                "ORDER BY j.priority DESC, d.next_attempt_at ASC LIMIT 1" + conn.skip_locked("d"),
                params,
            ).fetchone()
            if row is None:
                return None
            job_id, destination = int(row[0]), row[1]
            conn.execute(
                "UPDATE job_deliveries SET state = 'sending', lease_owner = ?, "
                "lease_expires_at = ?, attempts = attempts + 1 "
                "WHERE job_id = ? AND destination = ?",
                (owner, now + lease_s, job_id, destination),
            )
            job_row = self._row(job_id)
            if job_row["state"] != JobState.SENDING.value:
                conn.execute(
                    "UPDATE jobs SET state = 'sending', updated_at = ? WHERE id = ?",
                    (now, job_id),
                )
                self._event(conn, job_id, JobState.SENDING.value, now, owner, destination)
            job = self._decode(self._row(job_id))
        delivery = next(d for d in self.deliveries(job_id) if d.destination == destination)
        return job, delivery

    def record_acceptance(
        self, job_id: int, destination: str, owner: str, sop_instance_uid: str
    ) -> None:
        """Note that the peer acknowledged one file (called before anything else).

        Raises :class:`LeaseLostError` when ``owner`` no longer holds the
        delivery (another sender took it over): stop sending then.
        """
        with self._write() as conn:
            row = conn.execute(
                "SELECT lease_owner, accepted_sop_instance_uids FROM job_deliveries "
                "WHERE job_id = ? AND destination = ?",
                (job_id, destination),
            ).fetchone()
            if row is None or row[0] != owner:
                raise LeaseLostError(
                    f"{owner!r} does not hold the delivery of job {job_id} to {destination!r}"
                )
            accepted = json.loads(row[1]) if row[1] else []
            if sop_instance_uid not in accepted:
                accepted.append(sop_instance_uid)
            conn.execute(
                "UPDATE job_deliveries SET accepted_sop_instance_uids = ? "
                "WHERE job_id = ? AND destination = ?",
                (json.dumps(accepted), job_id, destination),
            )

    def release_leases(self, owners: Sequence[str], reason: str) -> list[int]:
        """Free every job and delivery lease ``owners`` hold (they are known dead).

        The supervisor calls this when it has seen a worker process exit, so
        its job is claimed again at once instead of when the lease runs out.
        Returns the ids of the jobs concerned (an event with ``reason`` is
        added to each).
        """
        if not owners:
            return []
        now = time.time()
        marks = ", ".join("?" * len(owners))
        held_jobs = f"FROM jobs WHERE lease_owner IN ({marks}) AND lease_expires_at IS NOT NULL"
        held_sends = f"FROM job_deliveries WHERE state = 'sending' AND lease_owner IN ({marks})"
        with self._write() as conn:
            jobs = [int(r[0]) for r in conn.execute(f"SELECT id {held_jobs}", tuple(owners))]
            sends = [
                (int(r[0]), r[1])
                for r in conn.execute(f"SELECT job_id, destination {held_sends}", tuple(owners))
            ]
            conn.execute(
                f"UPDATE jobs SET lease_expires_at = 0 WHERE id IN (SELECT id {held_jobs})",
                tuple(owners),
            )
            conn.execute(
                f"UPDATE job_deliveries SET lease_expires_at = 0 WHERE state = 'sending' "
                f"AND lease_owner IN ({marks})",
                tuple(owners),
            )
            for job_id in jobs:
                self._event(conn, job_id, "lease_released", now, None, reason)
            for job_id, destination in sends:
                self._event(
                    conn,
                    job_id,
                    "lease_released",
                    now,
                    None,
                    f"{reason} (sending to {destination})",
                )
        return sorted(set(jobs) | {job_id for job_id, _ in sends})

    def failing_destinations(self) -> list[tuple[str, float, str | None]]:
        """Destinations that keep refusing results: ``(name, failing since, last error)``.

        Only unfinished deliveries count (``pending`` or ``sending`` with a
        failed attempt since their last success); longest failing first,
        times in Unix seconds.
        """
        with self._lock:
            rows = self._conn.execute(
                "SELECT destination, MIN(failing_since), MAX(last_error) FROM job_deliveries "
                "WHERE state IN ('pending', 'sending') AND failing_since IS NOT NULL "
                "GROUP BY destination ORDER BY MIN(failing_since)"
            ).fetchall()
        return [(r[0], float(r[1]), r[2]) for r in rows]

    def finish_delivery(
        self,
        job_id: int,
        destination: str,
        owner: str,
        *,
        ok: bool,
        error: str | None = None,
        retry_at: float | None = None,
        sop_instance_uids: Sequence[str] = (),
    ) -> Job:
        """Record the outcome of one send attempt.

        ``ok`` marks the delivery sent. Otherwise ``retry_at`` (Unix seconds)
        leaves it pending for another attempt, and ``retry_at=None`` fails it
        for good. The job becomes ``sent`` when every delivery is sent,
        ``failed`` when none is left to try and one failed, and stays
        ``sending`` otherwise.
        """
        now = time.time()
        with self._write() as conn:
            held = conn.execute(
                "SELECT lease_owner FROM job_deliveries WHERE job_id = ? AND destination = ?"
                + conn.for_update,
                (job_id, destination),
            ).fetchone()
            if held is None or held[0] != owner:
                raise LeaseLostError(
                    f"{owner!r} does not hold the delivery of job {job_id} to {destination!r}"
                )
            if ok:
                conn.execute(
                    "UPDATE job_deliveries SET state = 'sent', sent_at = ?, last_error = NULL, "
                    "sent_sop_instance_uids = ?, lease_owner = NULL, lease_expires_at = NULL, "
                    "accepted_sop_instance_uids = NULL, failing_since = NULL "
                    "WHERE job_id = ? AND destination = ?",
                    (now, json.dumps(list(sop_instance_uids)), job_id, destination),
                )
                self._event(conn, job_id, "delivered", now, owner, f"sent to {destination}")
            else:
                state = "pending" if retry_at is not None else "failed"
                conn.execute(
                    "UPDATE job_deliveries SET state = ?, last_error = ?, next_attempt_at = ?, "
                    "lease_owner = NULL, lease_expires_at = NULL, "
                    "failing_since = COALESCE(failing_since, ?) "
                    "WHERE job_id = ? AND destination = ?",
                    (state, error, retry_at, now, job_id, destination),
                )
                note = (
                    f"{destination}: {error}; retry at {utc_iso(retry_at)}"
                    if retry_at is not None
                    else f"{destination}: {error}; no attempts left"
                )
                self._event(conn, job_id, "send_attempt_failed", now, owner, note)
            states = [
                r[0]
                for r in conn.execute(
                    "SELECT state FROM job_deliveries WHERE job_id = ?", (job_id,)
                ).fetchall()
            ]
            new_state: JobState | None = None
            message: str | None = None
            if all(s == "sent" for s in states):
                new_state = JobState.SENT
            elif all(s in ("sent", "failed") for s in states):
                new_state = JobState.FAILED
                failed = conn.execute(
                    "SELECT destination, attempts, last_error FROM job_deliveries "
                    "WHERE job_id = ? AND state = 'failed'",
                    (job_id,),
                ).fetchall()
                message = (
                    "; ".join(
                        f"sending to {d!r} failed after {n} attempts: {e}" for d, n, e in failed
                    )
                    + ". Check the destination, then `contourd resend JOB_ID`"
                )
            if new_state is not None:
                conn.execute(
                    "UPDATE jobs SET state = ?, error = COALESCE(?, error), updated_at = ?, "
                    "finished_at = ?, lease_owner = NULL, lease_expires_at = NULL WHERE id = ?",
                    (new_state.value, message, now, now, job_id),
                )
                self._event(conn, job_id, new_state.value, now, owner, message)
            return self._decode(self._row(job_id))

    def retry(self, job_id: int, by: str, *, any_finished: bool = False) -> Job:
        """Run a failed (or not routed) job again from routing, once its cause is fixed.

        The job goes back to ``complete`` with its attempts, error, lease and
        earlier results cleared, so the next worker routes it with the rules
        and models in force now (a model approved since, a config mended).
        The earlier deliveries are dropped (their outcome is kept in the
        event's message): the new result has new UIDs and goes to the
        destinations of the rule that matches now. ``by`` names who asked
        (kept in the job's history). ``any_finished``: a sent or shadow job
        too (segment a received series again).

        Raises
        ------
        JobError
            When the job is not failed or not routed, or its images are gone.
        """
        now = time.time()
        with self._write() as conn:
            row = self._row(job_id)
            refusal = _retry_refusal(job_id, row, any_finished)
            if refusal is not None:
                raise JobError(refusal)
            previous = row["error"] or row["state"]
            conn.execute(
                "UPDATE jobs SET state = 'complete', attempts = 0, error = NULL, "
                "warnings = '[]', result_files = '[]', preview_file = NULL, timings_s = '{}', "
                "not_before = NULL, lease_owner = NULL, lease_expires_at = NULL, "
                "finished_at = NULL, updated_at = ? WHERE id = ?",
                (now, job_id),
            )
            earlier = conn.execute(
                "SELECT destination, state FROM job_deliveries WHERE job_id = ? "
                "ORDER BY destination",
                (job_id,),
            ).fetchall()
            conn.execute("DELETE FROM job_deliveries WHERE job_id = ?", (job_id,))
            delivered = ", ".join(f"{d} {s}" for d, s in earlier)
            self._event(
                conn,
                job_id,
                JobState.COMPLETE.value,
                now,
                None,
                f"retry requested by {by} (was: {str(previous)[:300]}"
                + (f"; earlier deliveries: {delivered}" if delivered else "")
                + ")",
            )
            return self._decode(self._row(job_id))

    def retryable_since(self, since_s: float) -> list[Job]:
        """Failed jobs whose failure is at or after ``since_s`` (Unix seconds), oldest first."""
        return self._select(
            "state = 'failed' AND images_deleted_at IS NULL AND finished_at >= ?",
            (since_s,),
            "id ASC",
            1_000_000,
        )

    def requeue_delivery(self, job_id: int, destinations: Sequence[str]) -> Job:
        """Queue the job's existing result files for sending again.

        The same files are sent, so the receiver gets the same SOP Instance
        UIDs as the first time. Destinations not yet known for this job are
        added. The job goes back to ``written``.
        """
        now = time.time()
        with self._write() as conn:
            row = self._row(job_id, lock=True)
            state = JobState(row["state"])
            if not json.loads(row["result_files"] or "[]"):
                raise JobError(
                    f"job {job_id} is {state.value} and has no result files to send; "
                    f"only jobs that wrote a result can be resent"
                )
            if state in (JobState.WRITTEN, JobState.SENDING):
                pass
            elif JobState.WRITTEN not in _ALLOWED[state]:
                raise JobError(f"job {job_id} is {state.value}; it cannot be resent")
            for name in destinations:
                conn.execute(
                    "INSERT INTO job_deliveries (job_id, destination, state, attempts, "
                    "next_attempt_at) VALUES (?, ?, 'pending', 0, ?) "
                    "ON CONFLICT(job_id, destination) DO UPDATE SET state = 'pending', "
                    "attempts = 0, next_attempt_at = excluded.next_attempt_at, "
                    "last_error = NULL, lease_owner = NULL, lease_expires_at = NULL, "
                    "accepted_sop_instance_uids = NULL, failing_since = NULL",
                    (job_id, name, now),
                )
            conn.execute(
                "UPDATE jobs SET state = 'written', finished_at = NULL, updated_at = ? "
                "WHERE id = ?",
                (now, job_id),
            )
            self._event(
                conn,
                job_id,
                JobState.WRITTEN.value,
                now,
                None,
                f"resend requested to {', '.join(destinations)}",
            )
            return self._decode(self._row(job_id))

    # -- workers ---------------------------------------------------------------------
    def heartbeat(
        self,
        worker_id: str,
        *,
        current_job: int | None,
        state: str = "idle",
        host: str | None = None,
        pid: int | None = None,
    ) -> None:
        """Record that ``worker_id`` is alive (``workers`` table), and its current job."""
        now = time.time()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO workers (worker_id, host, pid, current_job, started_at, "
                "last_heartbeat, state) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (worker_id) DO UPDATE SET host = excluded.host, "
                "pid = excluded.pid, current_job = excluded.current_job, "
                "last_heartbeat = excluded.last_heartbeat, state = excluded.state",
                (
                    worker_id,
                    host or socket.gethostname(),
                    os.getpid() if pid is None else pid,
                    current_job,
                    now,
                    now,
                    state,
                ),
            )

    def remove_worker(self, worker_id: str) -> None:
        """Drop a worker's row (it stopped cleanly)."""
        with self._write() as conn:
            conn.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))

    def workers(self) -> list[WorkerInfo]:
        """Every worker that has reported, most recent heartbeat first."""
        rows = self._conn.rows(
            "SELECT worker_id, host, pid, current_job, started_at, last_heartbeat, state "
            "FROM workers ORDER BY last_heartbeat DESC"
        )
        return [
            WorkerInfo(
                worker_id=r["worker_id"],
                host=r["host"] or "",
                pid=int(r["pid"] or 0),
                current_job=None if r["current_job"] is None else int(r["current_job"]),
                started_at=float(r["started_at"] or 0.0),
                last_heartbeat=float(r["last_heartbeat"] or 0.0),
                state=r["state"] or "",
            )
            for r in rows
        ]

    def waiting_by_priority(self) -> dict[int, int]:
        """Jobs waiting for a worker (complete, routed, scheduled; no live lease) per priority."""
        rows = self._conn.rows(
            "SELECT priority, COUNT(*) AS n FROM jobs WHERE state IN "
            "('complete', 'routed', 'scheduled') AND "
            "(lease_expires_at IS NULL OR lease_expires_at < ?) "
            "GROUP BY priority ORDER BY priority DESC",
            (time.time(),),
        )
        return {int(r["priority"] or 0): int(r["n"]) for r in rows}

    def count_rows(self, sql: str) -> int:
        """The single integer a ``SELECT COUNT(*) ...`` query returns (0 when none)."""
        rows = self._conn.rows(sql)
        return int(next(iter(rows[0].values())) or 0) if rows else 0


@dataclass(frozen=True)
class WorkerInfo:
    """One row of the ``workers`` table. Times are Unix seconds (UTC)."""

    worker_id: str
    host: str
    pid: int
    current_job: int | None
    started_at: float
    last_heartbeat: float
    state: str


SqliteJobQueue = DatabaseJobQueue
"""The name the queue had before PostgreSQL; SQLite is still what it opens by default."""


def _retry_refusal(job_id: int, row: dict[str, Any], any_finished: bool) -> str | None:
    """Why job ``row`` cannot be retried, or ``None`` when it can."""
    state = JobState(row["state"])
    if state not in (FINISHED_STATES if any_finished else RETRYABLE_STATES):
        return (
            f"job {job_id} is {state.value}; only failed or not routed jobs are retried "
            f"(a sent job is sent again with `contourd resend {job_id}`)"
        )
    if row["images_deleted_at"] is not None:
        return (
            f"job {job_id}'s images were deleted by retention at "
            f"{utc_iso(float(row['images_deleted_at']))}; push the series again from the scanner"
        )
    return None


def stage_durations_s(events: Sequence[JobEvent]) -> dict[str, float]:
    """Seconds spent reaching each stage, from a job's events.

    Keys: ``queued`` (complete -> routed), ``waiting`` (routed -> running),
    ``processing`` (running -> written), ``sending`` (written -> sent), and
    ``total`` (complete -> sent/shadow). The latest event of each state counts,
    so a re-claimed job reports its last, successful pass.
    """
    at: dict[str, float] = {}
    for event in events:
        at[event.state] = event.at
    first_complete = next((e.at for e in events if e.state == "complete"), None)
    out: dict[str, float] = {}
    pairs = [
        ("queued", "complete", "routed"),
        ("waiting", "routed", "running"),
        ("processing", "running", "written"),
        ("sending", "written", "sent"),
    ]
    for name, start, end in pairs:
        if start in at and end in at and at[end] >= at[start]:
            out[name] = at[end] - at[start]
    end_at = at.get("sent", at.get("shadow"))
    if first_complete is not None and end_at is not None:
        out["total"] = end_at - first_complete
    return out
