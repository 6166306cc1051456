"""The feedback tables: recording, replacing, summaries and filters (no peers needed)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from contourd.errors import ConfigError
from daemon.cli.feedback import parse_since
from daemon.feedback_store import FeedbackStore, ReviewedSet, RoiFigures
from training.edit_metrics import RoiEdit


def _edit(roi: str, classification: str, dice: float, apl_mm: float) -> RoiEdit:
    return RoiEdit(
        roi=roi,
        approved_name=roi,
        classification=classification,  # type: ignore[arg-type]
        dice=dice,
        surface_dice=dice,
        hd95_mm=None if dice == 0 else 1.0,
        tolerance_mm=2.0,
        volume_sent_cc=10.0,
        volume_approved_cc=10.0,
        volume_change_cc=0.0,
        volume_change_pct=0.0,
        added_path_length_mm=apl_mm,
        sent_path_length_mm=100.0,
    )


def _set(received_job_id: int, job_id: int | None, status: str = "paired") -> ReviewedSet:
    return ReviewedSet(
        received_job_id=received_job_id,
        reviewed_sop_uid=f"1.2.3.{received_job_id}",
        referenced_series_uid="1.2.4",
        frame_of_reference_uid="1.2.5",
        sender_ae="TPS",
        approval_status="APPROVED",
        status=status,
        job_id=job_id,
        models=["hn-oar 1.0.0"],
    )


def test_medians_counts_filters_and_re_recording(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path)
    try:
        store.record(
            10, [(_set(10, 1), [RoiFigures("hn-oar", "1.0.0", _edit("P", "unchanged", 1.0, 0.0))])]
        )
        store.record(
            11, [(_set(11, 2), [RoiFigures("hn-oar", "1.0.0", _edit("P", "edited", 0.8, 30.0))])]
        )
        store.record(
            12, [(_set(12, 3), [RoiFigures("hn-oar", "1.1.0", _edit("P", "edited", 0.6, 50.0))])]
        )
        store.record(13, [(_set(13, None, "unpaired"), [])])
        [v100, v110] = store.summary()
        assert (v100.model_version, v100.sets, v100.counts["unchanged"]) == ("1.0.0", 2, 1)
        assert v100.medians["dice"] == pytest.approx(0.9)
        assert v100.medians["added_path_length_mm"] == pytest.approx(15.0)
        assert v110.medians["dice"] == pytest.approx(0.6)
        assert [s.model_version for s in store.summary(model="hn-oar 1.1.0")] == ["1.1.0"]
        assert len(store.summary(model="hn-oar")) == 2 and store.summary(model="body") == []
        assert store.summary(since=time.time() + 60) == []
        assert [r["status"] for r in store.sets(status="unpaired")] == ["unpaired"]
        # A re-claimed job records again: its rows are replaced, not doubled.
        store.record(
            11, [(_set(11, 2), [RoiFigures("hn-oar", "1.0.0", _edit("P", "unchanged", 1.0, 0.0))])]
        )
        [v100, _] = store.summary()
        assert v100.sets == 2 and v100.counts["unchanged"] == 2
    finally:
        store.close()


def test_since_takes_a_date_and_refuses_anything_else() -> None:
    assert parse_since("2026-01-31") == pytest.approx(1769817600.0)
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        parse_since("last week")
