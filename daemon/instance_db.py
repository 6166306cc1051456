"""The ``instances`` and ``series`` tables of ``<data_dir>/contourd.db``.

Owned by the receive side (daemon/spool.py + daemon/series_assembler.py); other
modules read these tables but never write them.

``instances``: one row per SOP instance on disk (a re-sent instance replaces
its row). ``series``: one row per series *version*: version 1 is the first
batch; images that arrive after a version was completed open version 2, and so
on. ``state`` is ``receiving`` or ``complete``; ``handed_off`` is 1 once the
completion callback returned normally. Times are ISO 8601 UTC strings.

The spool folder is the source of truth: rows lost in a crash (the database
runs in WAL mode with ``synchronous=NORMAL``) are rebuilt from the files at
start by the node.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

DB_FILENAME = "contourd.db"

INSTANCE_COLUMNS: dict[str, Any] = {
    "sop_instance_uid": str,
    "study_uid": str,
    "series_uid": str,
    "series_version": int,
    "sop_class_uid": str,
    "transfer_syntax_uid": str,
    "path": str,
    "size_bytes": int,
    "received_at": str,
    "calling_ae": str,
    "peer_address": str,
}

SERIES_COLUMNS: dict[str, Any] = {
    "series_uid": str,
    "version": int,
    "study_uid": str,
    "state": str,
    "handed_off": int,
    "num_received": int,
    "expected_count": int,
    "first_instance_path": str,
    "calling_ae": str,
    "called_ae": str,
    "peer_address": str,
    "modality": str,
    "body_part": str,
    "series_description": str,
    "first_received_at": str,
    "last_received_at": str,
    "completed_at": str,
    "reason": str,
    "associations_open": int,
    "interrupted": str,
    "completeness": str,
    "content_sha256": str,
    "uids_sha256": str,
    "content_count": int,
}
"""``associations_open``: associations sending this version that had not ended
(a non-zero value at start means the node stopped mid-push);
``interrupted``: why an association of this version ended abnormally;
``completeness``: the completeness verdict at completion and its signal
(see daemon/series_completeness.py); ``content_sha256``, ``uids_sha256``,
``content_count``: what the series held at completion (daemon/series_content.py)."""


IGNORED_COLUMNS: dict[str, Any] = {
    "sop_class_uid": str,
    "count": int,
    "last_received_at": str,
    "last_calling_ae": str,
}
"""``ignored_instances``: per SOP class the node does not contour, how many
instances were received, answered with success and not stored."""


def _replace_sql(table: str, columns: dict[str, Any]) -> str:
    names = ", ".join(columns)
    marks = ", ".join("?" for _ in columns)
    return f"INSERT OR REPLACE INTO {table} ({names}) VALUES ({marks})"


_INSERT_INSTANCE = _replace_sql("instances", INSTANCE_COLUMNS)
_INSERT_SERIES = _replace_sql("series", SERIES_COLUMNS)


class InstanceDB:
    """Thread-safe access to the receive tables (one connection, one lock).

    Parameters
    ----------
    path
        The SQLite file (normally ``<data_dir>/contourd.db``); created if missing.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30.0)
        self._lock = threading.RLock()
        self.db = sqlite_utils.Database(conn)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=30000")
        self._create_tables()

    def _create_tables(self) -> None:
        with self._lock:
            instances = self.db.table("instances")
            if not instances.exists():
                instances.create(INSTANCE_COLUMNS, pk="sop_instance_uid", not_null={"path"})
                instances.create_index(["series_uid"])
            series = self.db.table("series")
            if not series.exists():
                series.create(SERIES_COLUMNS, pk=("series_uid", "version"))
                series.create_index(["state", "handed_off"])
            else:  # a data folder from an older release: add the newer columns
                present = set(series.columns_dict)
                for name, kind in SERIES_COLUMNS.items():
                    if name not in present:
                        series.add_column(name, kind)
            ignored = self.db.table("ignored_instances")
            if not ignored.exists():
                ignored.create(IGNORED_COLUMNS, pk="sop_class_uid")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Hold the lock and run the body in one SQLite transaction."""
        with self._lock, self.db.conn:
            yield

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self.db.conn.close()

    # -- writes ---------------------------------------------------------
    def record_instance(self, instance: dict[str, Any], series: dict[str, Any]) -> None:
        """Upsert one instance row and its series-version row in one transaction.

        Plain prepared SQL (not ``Table.upsert``): this runs once per C-STORE
        and sqlite-utils' introspection per call costs more than the insert.
        """
        with self.transaction():
            self.db.conn.execute(_INSERT_INSTANCE, [instance.get(c) for c in INSTANCE_COLUMNS])
            self.db.conn.execute(_INSERT_SERIES, [series.get(c) for c in SERIES_COLUMNS])

    def record_ignored(self, sop_class_uid: str, calling_ae: str, received_at: str) -> None:
        """Count one instance of a SOP class the node does not contour."""
        with self.transaction():
            self.db.conn.execute(
                "INSERT INTO ignored_instances (sop_class_uid, count, last_received_at, "
                "last_calling_ae) VALUES (?, 1, ?, ?) ON CONFLICT(sop_class_uid) DO UPDATE "
                "SET count = count + 1, last_received_at = excluded.last_received_at, "
                "last_calling_ae = excluded.last_calling_ae",
                (sop_class_uid, received_at, calling_ae),
            )

    def ignored_counts(self) -> dict[str, int]:
        """``{SOP Class UID: instances received and ignored}``."""
        rows = self._rows("SELECT sop_class_uid, count FROM ignored_instances")
        return {str(r["sop_class_uid"]): int(r["count"]) for r in rows}

    def save_series(self, series: dict[str, Any]) -> None:
        """Upsert one series-version row (every column)."""
        with self.transaction():
            self.db.conn.execute(_INSERT_SERIES, [series.get(c) for c in SERIES_COLUMNS])

    def mark_complete(
        self, series_uid: str, version: int, *, completed_at: str, reason: str
    ) -> None:
        """Set a series version ``complete`` (not yet handed off)."""
        with self.transaction():
            self.db.table("series").update(
                (series_uid, version),
                {"state": "complete", "completed_at": completed_at, "reason": reason},
            )

    def mark_handed_off(self, series_uid: str, version: int) -> None:
        """Record that the completion callback returned normally."""
        with self.transaction():
            self.db.table("series").update((series_uid, version), {"handed_off": 1})

    # -- reads ----------------------------------------------------------
    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            cursor = self.db.execute(sql, params)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def series_rows(self, series_uid: str | None = None) -> list[dict[str, Any]]:
        """Every series-version row (of one series when given), oldest first."""
        if series_uid is None:
            return self._rows("SELECT * FROM series ORDER BY series_uid, version")
        return self._rows(
            "SELECT * FROM series WHERE series_uid = ? ORDER BY version", (series_uid,)
        )

    def latest_versions(self) -> list[dict[str, Any]]:
        """The newest version row of every series."""
        return self._rows(
            "SELECT s.* FROM series s JOIN (SELECT series_uid, MAX(version) AS v "
            "FROM series GROUP BY series_uid) m ON s.series_uid = m.series_uid "
            "AND s.version = m.v"
        )

    def pending_handoffs(self) -> list[dict[str, Any]]:
        """Complete series versions whose completion was not handed off yet."""
        return self._rows(
            "SELECT * FROM series WHERE state = 'complete' AND handed_off = 0 ORDER BY completed_at"
        )

    def instance_rows(self, series_uid: str | None = None) -> list[dict[str, Any]]:
        """Instance rows (of one series when given), ordered by path."""
        if series_uid is None:
            return self._rows("SELECT * FROM instances ORDER BY path")
        return self._rows(
            "SELECT * FROM instances WHERE series_uid = ? ORDER BY path", (series_uid,)
        )

    def count_instances(self, series_uid: str, version: int) -> int:
        """Number of instance rows whose latest arrival was in this version."""
        rows = self._rows(
            "SELECT COUNT(*) AS n FROM instances WHERE series_uid = ? AND series_version = ?",
            (series_uid, version),
        )
        return int(rows[0]["n"])
