"""Off-hours windows: inside/outside, across midnight, next opening."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from routing.rules import Schedule
from routing.schedule import is_within_window, next_window_start

NIGHT = Schedule(start="20:00", end="06:00")
LUNCH = Schedule(start="12:00", end="13:30")


@pytest.mark.parametrize(
    ("hh_mm", "inside"),
    [("19:59", False), ("20:00", True), ("23:59", True), ("00:00", True), ("05:59", True),
     ("06:00", False), ("12:00", False)],
)  # fmt: skip
def test_window_across_midnight(hh_mm: str, inside: bool) -> None:
    hour, minute = map(int, hh_mm.split(":"))
    assert is_within_window(datetime(2024, 3, 1, hour, minute), NIGHT) is inside


@pytest.mark.parametrize(
    ("hh_mm", "inside"), [("11:59", False), ("12:00", True), ("13:29", True), ("13:30", False)]
)
def test_window_within_one_day(hh_mm: str, inside: bool) -> None:
    hour, minute = map(int, hh_mm.split(":"))
    assert is_within_window(datetime(2024, 3, 1, hour, minute), LUNCH) is inside


def test_no_schedule_means_always() -> None:
    now = datetime(2024, 3, 1, 9, 15)
    assert is_within_window(now, None)
    assert next_window_start(now, None) == now


def test_next_window_start_is_now_inside_and_next_opening_outside() -> None:
    inside = datetime(2024, 3, 1, 22, 5)
    assert next_window_start(inside, NIGHT) == inside
    assert next_window_start(datetime(2024, 3, 1, 9, 15), NIGHT) == datetime(2024, 3, 1, 20, 0)
    assert next_window_start(datetime(2024, 3, 1, 14, 0), LUNCH) == datetime(2024, 3, 2, 12, 0)


def test_next_window_start_keeps_local_wall_clock_across_dst() -> None:
    zone = ZoneInfo("Europe/Berlin")
    # 2024-03-31 02:00 -> 03:00 (spring forward); a job queued the afternoon before
    now = datetime(2024, 3, 30, 14, 0, tzinfo=zone)
    assert next_window_start(now, NIGHT) == datetime(2024, 3, 30, 20, 0, tzinfo=zone)
    after_close = datetime(2024, 3, 31, 7, 0, tzinfo=zone)
    start = next_window_start(after_close, NIGHT)
    assert (start.day, start.hour, start.minute) == (31, 20, 0)


@pytest.mark.parametrize(
    ("start", "end", "fragment"),
    [("8:00", "06:00", "HH:MM"), ("20:00", "24:00", "HH:MM"), ("06:00", "06:00", "both 06:00")],
)
def test_bad_schedules_are_rejected(start: str, end: str, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        Schedule(start=start, end=end)
