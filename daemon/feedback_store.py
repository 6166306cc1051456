"""The feedback tables: every reviewed structure set and its ROI-by-ROI figures.

Owned by this module, in ``<data_dir>/contourd.db``:

- ``feedback_sets``: one row per reviewed structure set and contourd job it
  was compared with (``status`` ``paired``), or one row ``unpaired`` (it
  references no series contourd contoured) or ``failed`` (the comparison
  could not be made; ``message`` says why). Holds UIDs, the sender's AE
  title, the Approval Status and the job's models; never a patient
  identifier.
- ``feedback_rois``: the figures of :class:`training.edit_metrics.RoiEdit`
  per ROI of a paired set, with the model and version that drew the ROI.

Times are Unix seconds (UTC). Re-recording the sets of one received job
replaces its rows (a worker that re-claims the job writes them again).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlite_utils

from contourd.data_folder import DataFolder
from contourd.database import connect_sqlite
from daemon.job_queue import immediate_transaction, utc_iso
from training.edit_metrics import RoiEdit

SET_COLUMNS: dict[str, type] = {
    "id": int,
    "received_job_id": int,
    "reviewed_sop_uid": str,
    "referenced_series_uid": str,
    "frame_of_reference_uid": str,
    "sender_ae": str,
    "approval_status": str,
    "status": str,
    "job_id": int,
    "shadow": int,
    "models": str,
    "message": str,
    "kept_for_training": int,
    "reviewed_file": str,
    "recorded_at": float,
    "recorded_at_utc": str,
}
ROI_COLUMNS: dict[str, type] = {
    "feedback_id": int,
    "model": str,
    "model_version": str,
    "roi": str,
    "approved_name": str,
    "classification": str,
    "dice": float,
    "surface_dice": float,
    "hd95_mm": float,
    "tolerance_mm": float,
    "volume_sent_cc": float,
    "volume_approved_cc": float,
    "volume_change_cc": float,
    "volume_change_pct": float,
    "added_path_length_mm": float,
    "sent_path_length_mm": float,
}
FIGURES = ("dice", "surface_dice", "hd95_mm", "added_path_length_mm", "volume_change_pct")
"""The figures summarised by medians."""


@dataclass(frozen=True)
class ReviewedSet:
    """One row of ``feedback_sets`` to record (the id is assigned on insert)."""

    received_job_id: int
    reviewed_sop_uid: str
    referenced_series_uid: str
    frame_of_reference_uid: str
    sender_ae: str
    approval_status: str
    status: str
    job_id: int | None = None
    shadow: bool = False
    models: list[str] = field(default_factory=list)
    message: str = ""
    kept_for_training: bool = False
    reviewed_file: str = ""


@dataclass(frozen=True)
class RoiFigures:
    """One ROI's figures with the model (name, version) that drew it."""

    model: str
    model_version: str
    edit: RoiEdit


@dataclass
class RoiSummary:
    """Medians of one (model, version, ROI, shadow) over the sets selected."""

    model: str
    model_version: str
    roi: str
    shadow: bool
    sets: int
    counts: dict[str, int]
    medians: dict[str, float | None]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "model": self.model,
            "model_version": self.model_version,
            "roi": self.roi,
            "shadow": self.shadow,
            "sets": self.sets,
            **{f"n_{k}": v for k, v in self.counts.items()},
            **{f"median_{k}": v for k, v in self.medians.items()},
        }


class FeedbackStore:
    """Reads and writes the feedback tables of one data folder.

    Parameters
    ----------
    data_dir
        The node's data folder (``contourd.db`` inside).
    busy_timeout_s
        How long a write waits for another process's lock.
    """

    def __init__(self, data_dir: Path, *, busy_timeout_s: float = 30.0) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conn = connect_sqlite(DataFolder(self.data_dir).db_file, busy_timeout_s)
        self._conn = conn
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()
        with self._lock:
            sets = self.db.table("feedback_sets")
            sets.create(SET_COLUMNS, pk="id", if_not_exists=True)
            sets.create_index(["received_job_id"], if_not_exists=True)
            rois = self.db.table("feedback_rois")
            rois.create(ROI_COLUMNS, if_not_exists=True)
            rois.create_index(["feedback_id"], if_not_exists=True)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def record(
        self, received_job_id: int, sets: Sequence[tuple[ReviewedSet, Sequence[RoiFigures]]]
    ) -> list[int]:
        """Replace the rows of ``received_job_id`` with ``sets``; return the new set ids."""
        now = time.time()
        ids: list[int] = []
        with immediate_transaction(self._conn, self._lock) as conn:
            old = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM feedback_sets WHERE received_job_id = ?", (received_job_id,)
                )
            ]
            for old_id in old:
                conn.execute("DELETE FROM feedback_rois WHERE feedback_id = ?", (old_id,))
            conn.execute("DELETE FROM feedback_sets WHERE received_job_id = ?", (received_job_id,))
            for reviewed, rois in sets:
                row = dict(reviewed.__dict__)
                row.update(
                    models=json.dumps(reviewed.models),
                    shadow=int(reviewed.shadow),
                    kept_for_training=int(reviewed.kept_for_training),
                    recorded_at=now,
                    recorded_at_utc=utc_iso(now),
                )
                names = ", ".join(row)
                marks = ", ".join("?" for _ in row)
                cursor = conn.execute(
                    f"INSERT INTO feedback_sets ({names}) VALUES ({marks})", tuple(row.values())
                )
                set_id = int(cursor.lastrowid or 0)
                ids.append(set_id)
                for figures in rois:
                    roi_row = {
                        "feedback_id": set_id,
                        "model": figures.model,
                        "model_version": figures.model_version,
                        **figures.edit.as_dict(),
                    }
                    cols = ", ".join(roi_row)
                    conn.execute(
                        f"INSERT INTO feedback_rois ({cols}) VALUES "
                        f"({', '.join('?' for _ in roi_row)})",
                        tuple(roi_row.values()),
                    )
        return ids

    # -- reading ------------------------------------------------------------
    def received_job_of(self, reviewed_sop_uid: str, *, other_than: int) -> int | None:
        """The received job that already recorded this reviewed set, other than ``other_than``."""
        row = self._conn.execute(
            "SELECT received_job_id FROM feedback_sets WHERE reviewed_sop_uid = ? "
            "AND received_job_id != ? LIMIT 1",
            (reviewed_sop_uid, other_than),
        ).fetchone()
        return None if row is None else int(row[0])

    def sets(
        self, *, since: float | None = None, status: str | None = None
    ) -> list[dict[str, Any]]:
        """Rows of ``feedback_sets`` (newest first), optionally since a time and of one status."""
        where, params = _conditions(
            ("recorded_at >= ?", since), ("status = ?", status), default="1 = 1"
        )
        rows = self.db.query(
            f"SELECT * FROM feedback_sets WHERE {where} ORDER BY recorded_at DESC, id DESC", params
        )
        out = []
        for row in rows:
            row["models"] = json.loads(row["models"] or "[]")
            row["shadow"] = bool(row["shadow"])
            row["kept_for_training"] = bool(row["kept_for_training"])
            out.append(row)
        return out

    def roi_rows(
        self, *, model: str | None = None, since: float | None = None
    ) -> list[dict[str, Any]]:
        """ROI figures with their set's ``recorded_at``, ``shadow``, ``job_id``; oldest first."""
        where, params = _conditions(
            (
                "r.model || CASE WHEN ? LIKE '% %' THEN ' ' || r.model_version ELSE '' END = ?",
                model,
            ),
            ("s.recorded_at >= ?", since),
            default="s.status = 'paired'",
        )
        return list(
            self.db.query(
                "SELECT r.*, s.recorded_at, s.recorded_at_utc, s.shadow, s.job_id, "
                "s.received_job_id, s.sender_ae FROM feedback_rois r JOIN feedback_sets s "
                f"ON s.id = r.feedback_id WHERE {where} ORDER BY s.recorded_at, s.id",
                params,
            )
        )

    def summary(self, *, model: str | None = None, since: float | None = None) -> list[RoiSummary]:
        """Per (model, version, ROI, shadow): counts by classification and medians."""
        groups: dict[tuple[str, str, str, bool], list[dict[str, Any]]] = {}
        for row in self.roi_rows(model=model, since=since):
            key = (row["model"], row["model_version"], row["roi"], bool(row["shadow"]))
            groups.setdefault(key, []).append(row)
        out = []
        for (name, version, roi, shadow), rows in sorted(groups.items()):
            counts = {c: 0 for c in ("unchanged", "edited", "deleted", "added")}
            for row in rows:
                counts[row["classification"]] = counts.get(row["classification"], 0) + 1
            out.append(RoiSummary(name, version, roi, shadow, len(rows), counts, medians(rows)))
        return out


def _conditions(*parts: tuple[str, Any], default: str) -> tuple[str, list[Any]]:
    """``default AND`` each SQL condition whose value is given, with its parameters."""
    where, params = [default], []
    for sql, value in parts:
        if value is not None:
            where.append(sql)
            params += [value] * sql.count("?")
    return " AND ".join(where), params


def medians(rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Median of each figure in :data:`FIGURES` over ``rows`` (missing values left out)."""
    out: dict[str, float | None] = {}
    for name in FIGURES:
        values = [float(r[name]) for r in rows if r.get(name) is not None]
        out[name] = statistics.median(values) if values else None
    return out
