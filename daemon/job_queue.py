"""Durable job rows: one job per (series UID, version), leased by workers.

A job moves through these states (each transition is a row in ``job_events``
with its UTC time, the worker and a message)::

    complete -> routed -> running -> written -> sending -> sent
                   |          |          |          `-> failed (after N attempts)
                   |          |          `-> shadow (run and recorded, never sent)
                   |          `-> failed (error message kept)
                   |-> not_routed (no rule matched; reason kept)
                   `-> scheduled (rule window closed; claimable again at not_before)

``received`` exists for backends that create the job at the first image; the
SQLite queue creates jobs when the assembler reports the series complete.

Workers take jobs with :meth:`JobQueue.claim`, which sets a lease (worker id
and expiry, Unix seconds). A worker renews the lease while it works; when it
dies, the lease runs out and the next claim takes the job again (up to
``max_attempts`` claims, so a series that crashes every worker ends
``failed`` instead of looping). Every change made on behalf of a worker names
it, and is refused with :class:`LeaseLostError` when the lease has passed to
someone else (fencing).

Sending is tracked per destination in ``job_deliveries`` (pending -> sending
-> sent | failed) with its own attempts, next attempt time and lease, so the
dispatcher can retry one destination without resending to the others.

:class:`JobQueue` is the protocol the daemon codes against; :class:`SqliteJobQueue`
implements it on ``<data_dir>/contourd.db`` (tables ``jobs``, ``job_events``,
``job_deliveries``) so that another backend (a server database shared by
several machines) can be added without touching the workers.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import sqlite_utils

from contourd.errors import JobError

DB_FILENAME = "contourd.db"


class LeaseLostError(JobError):
    """A worker tried to change a job whose lease it no longer holds."""


class JobState(StrEnum):
    """States of a job row (see the module docstring for the graph)."""

    RECEIVED = "received"
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
    JobState.RECEIVED: frozenset({JobState.COMPLETE, JobState.FAILED}),
    JobState.COMPLETE: frozenset(
        {JobState.ROUTED, JobState.NOT_ROUTED, JobState.SCHEDULED, JobState.FAILED}
    ),
    JobState.SCHEDULED: frozenset(
        {JobState.ROUTED, JobState.NOT_ROUTED, JobState.SCHEDULED, JobState.FAILED}
    ),
    JobState.ROUTED: frozenset({JobState.RUNNING, JobState.SCHEDULED, JobState.FAILED}),
    JobState.RUNNING: frozenset({JobState.WRITTEN, JobState.SHADOW, JobState.FAILED}),
    JobState.WRITTEN: frozenset({JobState.SENDING, JobState.SENT, JobState.FAILED}),
    JobState.SENDING: frozenset({JobState.SENDING, JobState.SENT, JobState.FAILED}),
    JobState.SENT: frozenset({JobState.WRITTEN}),
    JobState.FAILED: frozenset({JobState.WRITTEN}),
    JobState.NOT_ROUTED: frozenset(),
    JobState.SHADOW: frozenset({JobState.WRITTEN}),
}
"""Legal transitions; finished states go back to ``written`` only by a resend."""


def utc_iso(epoch_s: float) -> str:
    """ISO 8601 UTC text (millisecond precision) for Unix seconds."""
    return datetime.fromtimestamp(epoch_s, tz=UTC).isoformat(timespec="milliseconds")


class SeriesCompletionLike(Protocol):
    """What :meth:`JobQueue.submit_series` reads from the assembler's completion."""

    @property
    def study_uid(self) -> str: ...

    @property
    def series_uid(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def spool_dir(self) -> Path: ...

    @property
    def instance_paths(self) -> Sequence[Path]: ...

    @property
    def num_instances(self) -> int: ...

    @property
    def calling_ae(self) -> str: ...

    @property
    def called_ae(self) -> str: ...

    @property
    def modality(self) -> str: ...


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


class JobQueue(Protocol):
    """The queue the daemon's stages share. See :class:`SqliteJobQueue`."""

    def submit_series(
        self, completion: SeriesCompletionLike, *, supersedes: dict[str, Any] | None = None
    ) -> int:
        """Create the job for a completed series; idempotent per (series UID, version)."""
        ...

    def claim(self, worker_id: str, lease_s: float) -> Job | None:
        """Lease the most urgent claimable job to ``worker_id``, or ``None``."""
        ...

    def renew_lease(self, job_id: int, worker_id: str, lease_s: float) -> None:
        """Extend a held lease by ``lease_s`` from now; raises LeaseLostError."""
        ...

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
        """Move a job to ``state``, updating ``fields`` and recording an event."""
        ...

    def get(self, job_id: int) -> Job:
        """The job with that id; raises JobError when there is none."""
        ...

    def recent(self, limit: int = 20) -> list[Job]:
        """The newest jobs first."""
        ...

    def events(self, job_id: int) -> list[JobEvent]:
        """The job's transitions in time order."""
        ...

    def counts_by_state(self) -> dict[str, int]:
        """Number of jobs in each state."""
        ...

    def deliveries(self, job_id: int) -> list[Delivery]:
        """The job's deliveries."""
        ...

    def claim_delivery(
        self, owner: str, lease_s: float, *, job_id: int | None = None
    ) -> tuple[Job, Delivery] | None:
        """Lease the next delivery that is due (of ``job_id`` only, if given)."""
        ...

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
        """Record a send attempt's outcome and update the job's state."""
        ...

    def requeue_delivery(self, job_id: int, destinations: Sequence[str]) -> Job:
        """Send a job's results again to ``destinations`` (the same files)."""
        ...


_JOB_COLUMNS: dict[str, type] = {
    "id": int,
    "study_uid": str,
    "series_uid": str,
    "version": int,
    "rule_slot": int,
    "pinned_rule": str,
    "state": str,
    "spool_dir": str,
    "instance_paths": str,
    "num_instances": int,
    "calling_ae": str,
    "called_ae": str,
    "modality": str,
    "series_description": str,
    "priority": int,
    "rule": str,
    "models": str,
    "destinations": str,
    "outputs": str,
    "label": str,
    "shadow": int,
    "not_before": float,
    "attempts": int,
    "error": str,
    "warnings": str,
    "timings_s": str,
    "result_files": str,
    "preview_file": str,
    "lease_owner": str,
    "lease_expires_at": float,
    "created_at": float,
    "updated_at": float,
    "finished_at": float,
    "images_deleted_at": float,
    "supersedes": str,
}
_JSON_COLUMNS = frozenset(
    {
        "supersedes",
        "instance_paths",
        "models",
        "destinations",
        "outputs",
        "warnings",
        "timings_s",
        "result_files",
    }
)


class SqliteJobQueue:
    """:class:`JobQueue` on the data folder's SQLite database (WAL mode).

    Safe to share between threads of one process (one connection behind a
    lock) and between processes (SQLite locking, ``BEGIN IMMEDIATE`` for every
    read-modify-write, busy timeout ``busy_timeout_s``).

    Parameters
    ----------
    data_dir
        The node's data folder; the database is ``data_dir / "contourd.db"``.
    max_attempts
        Claims of one job before it is failed (a series that kills workers).
    busy_timeout_s
        How long a write waits for another process's lock before failing.
    """

    def __init__(self, data_dir: Path, *, max_attempts: int = 3, busy_timeout_s: float = 30.0):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.data_dir / DB_FILENAME
        self.max_attempts = max_attempts
        conn = sqlite3.connect(
            str(self.db_path),
            timeout=busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        self._conn = conn
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()
        self._create_tables()

    # -- schema -----------------------------------------------------------------
    def _create_tables(self) -> None:
        with self._lock:
            jobs = self.db.table("jobs")
            if not jobs.exists():
                jobs.create(_JOB_COLUMNS, pk="id", if_not_exists=True)
                jobs.create_index(
                    ["series_uid", "version", "rule_slot"], unique=True, if_not_exists=True
                )
                jobs.create_index(["state"], if_not_exists=True)
            else:  # a data folder from an older release: add the newer columns
                for name, kind in _JOB_COLUMNS.items():
                    if name not in jobs.columns_dict:
                        # Another process may add it first.
                        with contextlib.suppress(sqlite3.OperationalError):
                            jobs.add_column(name, kind)
            events = self.db.table("job_events")
            if not events.exists():
                events.create(
                    {
                        "id": int,
                        "job_id": int,
                        "state": str,
                        "at": float,
                        "at_utc": str,
                        "worker": str,
                        "message": str,
                    },
                    pk="id",
                    if_not_exists=True,
                )
                events.create_index(["job_id"], if_not_exists=True)
            deliveries = self.db.table("job_deliveries")
            if not deliveries.exists():
                deliveries.create(
                    {
                        "job_id": int,
                        "destination": str,
                        "state": str,
                        "attempts": int,
                        "next_attempt_at": float,
                        "last_error": str,
                        "sent_at": float,
                        "sent_sop_instance_uids": str,
                        "lease_owner": str,
                        "lease_expires_at": float,
                    },
                    pk=("job_id", "destination"),
                    if_not_exists=True,
                )
            self._add_missing_columns(
                "job_deliveries", {"accepted_sop_instance_uids": str, "failing_since": float}
            )

    def _add_missing_columns(self, table_name: str, columns: dict[str, type]) -> None:
        """Add columns a newer version needs to a table an older version made."""
        table = self.db.table(table_name)
        for name, kind in columns.items():
            if name in table.columns_dict:
                continue
            try:
                table.add_column(name, kind)
            except sqlite3.OperationalError as err:
                if "duplicate column" not in str(err):
                    raise  # otherwise another process added it at the same moment

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction, committed unless it raises."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

    # -- decoding ---------------------------------------------------------------
    def _row(self, job_id: int) -> dict[str, Any]:
        cursor = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,))
        row = cursor.fetchone()
        if row is None:
            raise JobError(
                f"no job with id {job_id} in {self.db_path}; list jobs with `contourd jobs`"
            )
        return dict(zip([c[0] for c in cursor.description], row, strict=True))

    @staticmethod
    def _decode(row: dict[str, Any]) -> Job:
        def js(name: str, default: Any) -> Any:
            text = row.get(name)
            return json.loads(text) if text else default

        return Job(
            id=int(row["id"]),
            study_uid=row["study_uid"],
            series_uid=row["series_uid"],
            version=int(row["version"]),
            state=JobState(row["state"]),
            spool_dir=Path(row["spool_dir"] or ""),
            instance_paths=[Path(p) for p in js("instance_paths", [])],
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
            result_files=[Path(p) for p in js("result_files", [])],
            preview_file=Path(row["preview_file"]) if row["preview_file"] else None,
            lease_owner=row["lease_owner"],
            lease_expires_at=row["lease_expires_at"],
            created_at=float(row["created_at"]),
            updated_at=float(row["updated_at"]),
            finished_at=row["finished_at"],
            images_deleted_at=row["images_deleted_at"],
            rule_slot=int(row.get("rule_slot") or 0),
            pinned_rule=row.get("pinned_rule"),
            supersedes=js("supersedes", None),
        )

    @staticmethod
    def _encode(fields: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in fields.items():
            if key not in _JOB_COLUMNS or key == "id":
                raise JobError(
                    f"unknown job field {key!r}; expected one of "
                    f"{', '.join(sorted(k for k in _JOB_COLUMNS if k != 'id'))}"
                )
            if key in _JSON_COLUMNS:
                if key in ("instance_paths", "result_files"):
                    value = [str(p) for p in value]
                value = json.dumps(value)
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, bool):
                value = int(value)
            out[key] = value
        return out

    def _event(
        self,
        conn: sqlite3.Connection,
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
        self, conn: sqlite3.Connection, fields: dict[str, Any], now: float, message: str
    ) -> int:
        """Insert a job row in state ``complete`` with its first event; return its id."""
        row = self._encode(
            {
                **fields,
                "state": JobState.COMPLETE.value,
                "priority": 0,
                "shadow": False,
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
            }
        )
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        cursor = conn.execute(f"INSERT INTO jobs ({names}) VALUES ({marks})", tuple(row.values()))
        job_id = int(cursor.lastrowid or 0)
        self._event(conn, job_id, JobState.COMPLETE.value, now, None, message)
        return job_id

    def submit_series(
        self, completion: SeriesCompletionLike, *, supersedes: dict[str, Any] | None = None
    ) -> int:
        """Create the job for a completed series, state ``complete``.

        Idempotent: submitting the same (series UID, version) again returns the
        existing job's id and changes nothing. A completion whose
        ``incomplete`` is set becomes a ``failed`` job with that message at
        once (never contoured). ``supersedes`` names the earlier job whose
        structure set the new one replaces (a changed series).
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
                    "series_description": "",
                    "supersedes": supersedes,
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
                },
                now,
                f"rule {rule_name!r} also matched the series of job {job_id} (continue: true)",
            )

    # -- leases -------------------------------------------------------------------
    def claim(self, worker_id: str, lease_s: float) -> Job | None:
        """Lease the most urgent claimable job to ``worker_id``.

        Claimable: ``complete`` or ``routed``; ``scheduled`` whose ``not_before``
        has passed; ``running`` whose lease expired (its worker died). Order:
        priority (high first), then age. Each claim counts an attempt; a job
        claimed ``max_attempts`` times without finishing is failed instead.
        """
        now = time.time()
        with self._write() as conn:
            while True:
                row = conn.execute(
                    "SELECT id, state, attempts, lease_owner FROM jobs WHERE "
                    "(state IN ('complete', 'routed') AND "
                    "  (lease_expires_at IS NULL OR lease_expires_at < ?)) "
                    "OR (state = 'scheduled' AND (not_before IS NULL OR not_before <= ?) AND "
                    "  (lease_expires_at IS NULL OR lease_expires_at < ?)) "
                    "OR (state = 'running' AND lease_expires_at < ?) "
                    "ORDER BY priority DESC, id ASC LIMIT 1",
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
            row = self._row(job_id)
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
            return self._decode(self._row(job_id))

    def update_fields(self, job_id: int, *, worker_id: str | None = None, **fields: Any) -> Job:
        """Set job columns without a state change (e.g. ``images_deleted_at``)."""
        now = time.time()
        with self._write() as conn:
            row = self._row(job_id)
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
                    "INSERT OR IGNORE INTO job_deliveries (job_id, destination, state, "
                    "attempts, next_attempt_at) VALUES (?, ?, 'pending', 0, ?)",
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
        self, owner: str, lease_s: float, *, job_id: int | None = None
    ) -> tuple[Job, Delivery] | None:
        """Lease the oldest due pending delivery (or one whose sender died).

        With ``job_id``, only that job's deliveries are considered. The job
        moves to ``sending``.
        """
        now = time.time()
        only = "" if job_id is None else " AND j.id = ?"
        params: tuple[Any, ...] = (now, now) if job_id is None else (now, now, job_id)
        with self._write() as conn:
            row = conn.execute(
                "SELECT d.job_id, d.destination FROM job_deliveries d JOIN jobs j "
                "ON j.id = d.job_id WHERE j.state IN ('written', 'sending') AND ("
                "(d.state = 'pending' AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= ?))"
                " OR (d.state = 'sending' AND d.lease_expires_at < ?))" + only + " "
                "ORDER BY j.priority DESC, d.next_attempt_at ASC LIMIT 1",
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
                "UPDATE job_deliveries SET lease_expires_at = 0 WHERE rowid IN "
                f"(SELECT rowid {held_sends})",
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
                "SELECT lease_owner FROM job_deliveries WHERE job_id = ? AND destination = ?",
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

    def requeue_delivery(self, job_id: int, destinations: Sequence[str]) -> Job:
        """Queue the job's existing result files for sending again.

        The same files are sent, so the receiver gets the same SOP Instance
        UIDs as the first time. Destinations not yet known for this job are
        added. The job goes back to ``written``.
        """
        now = time.time()
        with self._write() as conn:
            row = self._row(job_id)
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
