"""The receive tables (``instances``, ``series``) on both backends."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from contourd.database import Database
from contourd.errors import DatabaseError
from contourd.schema import LATEST_VERSION
from daemon.instance_db import InstanceDB


def _instance(uid: str, series_uid: str, version: int, path: str) -> dict[str, object]:
    return {
        "sop_instance_uid": uid,
        "study_uid": "1.2.3",
        "series_uid": series_uid,
        "series_version": version,
        "path": path,
        "size_bytes": 10,
        "received_at": "2026-01-01T00:00:00+00:00",
    }


def _series(series_uid: str, version: int, received: int) -> dict[str, object]:
    return {
        "series_uid": series_uid,
        "version": version,
        "study_uid": "1.2.3",
        "state": "receiving",
        "handed_off": 0,
        "num_received": received,
        "modality": "CT",
    }


def test_instances_and_series_versions_are_upserted_and_completed(
    tmp_path: Path, make_database: Callable[[Path], Database]
) -> None:
    db = InstanceDB(make_database(tmp_path))
    try:
        db.record_instance(_instance("1.1", "9.9", 1, "a.dcm"), _series("9.9", 1, 1))
        db.record_instance(_instance("1.2", "9.9", 1, "b.dcm"), _series("9.9", 1, 2))
        # A re-sent instance replaces its row (and its path), it does not add one.
        db.record_instance(_instance("1.2", "9.9", 1, "b2.dcm"), _series("9.9", 1, 2))
        assert [r["path"] for r in db.instance_rows("9.9")] == ["a.dcm", "b2.dcm"]
        assert db.count_instances("9.9", 1) == 2
        db.mark_complete("9.9", 1, completed_at="2026-01-01T00:00:05+00:00", reason="quiet")
        assert [r["series_uid"] for r in db.pending_handoffs()] == ["9.9"]
        db.mark_handed_off("9.9", 1)
        assert db.pending_handoffs() == []
        db.record_instance(_instance("1.3", "9.9", 2, "c.dcm"), _series("9.9", 2, 1))
        assert [(r["version"], r["state"]) for r in db.series_rows("9.9")] == [
            (1, "complete"),
            (2, "receiving"),
        ]
        assert [r["version"] for r in db.latest_versions()] == [2]
    finally:
        db.close()


def test_a_database_with_a_newer_schema_is_refused(
    tmp_path: Path, make_database: Callable[[Path], Database]
) -> None:
    database = make_database(tmp_path)
    conn = database.connect()
    conn.execute(
        "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
        (LATEST_VERSION + 1, "2099-01-01T00:00:00+00:00"),
    )
    conn.close()
    with pytest.raises(DatabaseError, match=f"schema version {LATEST_VERSION + 1}, newer"):
        InstanceDB(make_database(tmp_path))


def test_a_data_folder_from_before_versioning_is_migrated_in_place(tmp_path: Path) -> None:
    """An older contourd's contourd.db (tables, no schema_version) keeps its rows."""
    import sqlite3

    path = tmp_path / "contourd.db"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE series (series_uid TEXT, version INTEGER, study_uid TEXT, "
            "state TEXT, handed_off INTEGER, num_received INTEGER, expected_count INTEGER, "
            "first_instance_path TEXT, calling_ae TEXT, called_ae TEXT, "
            "peer_address TEXT, modality TEXT, body_part TEXT, series_description TEXT, "
            "first_received_at TEXT, last_received_at TEXT, completed_at TEXT, "
            "reason TEXT, PRIMARY KEY (series_uid, version))"
        )
        old.execute("INSERT INTO series (series_uid, version, state) VALUES ('7.7', 1, 'complete')")
    db = InstanceDB(path)
    try:
        assert [r["series_uid"] for r in db.series_rows()] == ["7.7"]
        assert db.series_rows()[0]["completeness"] is None  # column added by migration 3
        version = db.conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        assert version == LATEST_VERSION
    finally:
        db.close()


def test_spool_paths_are_stored_relative_to_the_data_folder(
    tmp_path: Path, make_database: Callable[[Path], Database]
) -> None:
    database = make_database(tmp_path)
    db = InstanceDB(database)
    try:
        inside = tmp_path / "spool" / "1.2.3" / "9.9" / "1.1.dcm"
        db.record_instance(
            _instance("1.1", "9.9", 1, str(inside)),
            {**_series("9.9", 1, 1), "first_instance_path": str(inside)},
        )
        stored = db.conn.rows("SELECT path FROM instances")[0]["path"]
        assert stored == "./spool/1.2.3/9.9/1.1.dcm"
        assert db.instance_rows("9.9")[0]["path"] == str(inside)
        assert db.series_rows("9.9")[0]["first_instance_path"] == str(inside)
    finally:
        db.close()


def test_ignored_sop_classes_are_counted(
    tmp_path: Path, make_database: Callable[[Path], Database]
) -> None:
    db = InstanceDB(make_database(tmp_path))
    try:
        for _ in range(3):
            db.record_ignored("1.2.840.10008.5.1.4.1.1.481.5", "TPS", "2026-01-01T00:00:00+00:00")
        db.record_ignored("1.2.840.10008.5.1.4.1.1.7", "PACS", "2026-01-01T00:00:01+00:00")
        assert db.ignored_counts() == {
            "1.2.840.10008.5.1.4.1.1.481.5": 3,
            "1.2.840.10008.5.1.4.1.1.7": 1,
        }
    finally:
        db.close()


def test_series_held_as_incomplete_are_listed(
    tmp_path: Path, make_database: Callable[[Path], Database]
) -> None:
    from daemon.health_http import series_held

    db = InstanceDB(make_database(tmp_path))
    try:
        db.save_series({**_series("9.9", 1, 10), "completeness": "incomplete: 10 of 40"})
        db.save_series({**_series("8.8", 1, 5), "completeness": "complete: count"})
        assert series_held(db) == ["series 9.9 version 1: incomplete: 10 of 40"]
    finally:
        db.close()
