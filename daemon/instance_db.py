"""The ``instances`` and ``series`` tables of the node's database.

Owned by the receive side (daemon/spool.py + daemon/series_assembler.py); other
modules read these tables but never write them.

``instances``: one row per SOP instance on disk (a re-sent instance replaces
its row). ``series``: one row per series *version*: version 1 is the first
batch; images that arrive after a version was completed open version 2, and so
on. ``state`` is ``receiving`` or ``complete``; ``handed_off`` is 1 once the
completion callback returned normally. Times are ISO 8601 UTC strings. File
paths inside the data folder are stored relative to it (``./spool/...``).

The spool folder is the source of truth: rows lost in a crash (SQLite runs in
WAL mode with ``synchronous=NORMAL``) are rebuilt from the files at start by
the node. The connection comes from :class:`contourd.database.Database`
(SQLite in the data folder, or the shared PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from contourd.database import DB_FILENAME, Database, load_path, store_path
from contourd.schema import instances, series

__all__ = ["DB_FILENAME", "INSTANCE_COLUMNS", "SERIES_COLUMNS", "InstanceDB"]

INSTANCE_COLUMNS: list[str] = [c.name for c in instances.columns]
SERIES_COLUMNS: list[str] = [c.name for c in series.columns]
"""The columns are defined in :mod:`contourd.schema`. Of ``series``:
``associations_open``: associations sending this version that had not ended
(a non-zero value at start means the node stopped mid-push);
``interrupted``: why an association of this version ended abnormally;
``completeness``: the completeness verdict at completion and its signal
(see daemon/series_completeness.py); ``content_sha256``, ``uids_sha256``,
``content_count``: what the series held at completion (daemon/series_content.py).
``ignored_instances``: per SOP class the node does not contour, how many
instances were received, answered with success and not stored."""


def _upsert_sql(table: str, columns: list[str], key: tuple[str, ...]) -> str:
    names = ", ".join(columns)
    marks = ", ".join("?" for _ in columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return (
        f"INSERT INTO {table} ({names}) VALUES ({marks}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )


_PATH_COLUMNS = ("path", "first_instance_path")
"""Kept relative to the data folder (:func:`contourd.database.store_path`)."""

_INSERT_INSTANCE = _upsert_sql("instances", INSTANCE_COLUMNS, ("sop_instance_uid",))
_INSERT_SERIES = _upsert_sql("series", SERIES_COLUMNS, ("series_uid", "version"))


class InstanceDB:
    """Thread-safe access to the receive tables (one connection, one lock).

    Parameters
    ----------
    database
        The node's :class:`~contourd.database.Database`, or (as before
        PostgreSQL) the SQLite file ``<data_dir>/contourd.db``; created if missing.
    """

    def __init__(self, database: Database | Path) -> None:
        if not isinstance(database, Database):
            database = Database(Path(database).parent)
        self.database = database
        self.data_dir = database.data_dir
        self.path = database.sqlite_path
        self.conn = database.connect()
        self._lock = self.conn.lock

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Hold the lock and run the body in one transaction."""
        with self.conn.transaction():
            yield

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    # -- writes ---------------------------------------------------------
    def record_instance(self, instance: dict[str, Any], series: dict[str, Any]) -> None:
        """Upsert one instance row and its series-version row in one transaction."""
        with self.transaction():
            self.conn.execute(_INSERT_INSTANCE, self._values(instance, INSTANCE_COLUMNS))
            self.conn.execute(_INSERT_SERIES, self._values(series, SERIES_COLUMNS))

    def _values(self, row: dict[str, Any], columns: list[str]) -> list[Any]:
        return [
            store_path(row[c], self.data_dir) if c in _PATH_COLUMNS and row.get(c) else row.get(c)
            for c in columns
        ]

    def record_ignored(self, sop_class_uid: str, calling_ae: str, received_at: str) -> None:
        """Count one instance of a SOP class the node does not contour."""
        with self.transaction():
            self.conn.execute(
                "INSERT INTO ignored_instances (sop_class_uid, count, last_received_at, "
                "last_calling_ae) VALUES (?, 1, ?, ?) ON CONFLICT(sop_class_uid) DO UPDATE "
                "SET count = ignored_instances.count + 1, "
                "last_received_at = excluded.last_received_at, "
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
            self.conn.execute(_INSERT_SERIES, self._values(series, SERIES_COLUMNS))

    def mark_complete(
        self, series_uid: str, version: int, *, completed_at: str, reason: str
    ) -> None:
        """Set a series version ``complete`` (not yet handed off)."""
        with self.transaction():
            self.conn.execute(
                "UPDATE series SET state = 'complete', completed_at = ?, reason = ? "
                "WHERE series_uid = ? AND version = ?",
                (completed_at, reason, series_uid, version),
            )

    def mark_handed_off(self, series_uid: str, version: int) -> None:
        """Record that the completion callback returned normally."""
        with self.transaction():
            self.conn.execute(
                "UPDATE series SET handed_off = 1 WHERE series_uid = ? AND version = ?",
                (series_uid, version),
            )

    # -- reads ----------------------------------------------------------
    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        rows = self.conn.rows(sql, params)
        for row in rows:
            for column in _PATH_COLUMNS:
                if row.get(column):
                    row[column] = str(load_path(row[column], self.data_dir))
        return rows

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
