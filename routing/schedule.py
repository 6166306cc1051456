"""Daily run windows for off-hours rules (pure functions, local wall-clock time).

A window is ``[start, end)`` on the wall clock of whatever ``now`` carries:
a naive ``datetime`` is taken as local time; an aware one is compared in its
own time zone. ``start > end`` crosses midnight (``20:00``-``06:00``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from routing.rules import Schedule


def _minute_of_day(now: datetime) -> int:
    return now.hour * 60 + now.minute


def is_within_window(now: datetime, schedule: Schedule | None) -> bool:
    """Whether a job of a rule with ``schedule`` may run at ``now``.

    Parameters
    ----------
    now
        Current time (naive = local time).
    schedule
        The rule's window; ``None`` means always.

    Returns
    -------
    bool
        ``True`` inside ``[start, end)``, ``False`` outside.
    """
    if schedule is None:
        return True
    start, end = schedule.minutes()
    minute = _minute_of_day(now)
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end


def next_window_start(now: datetime, schedule: Schedule | None) -> datetime:
    """When a job queued at ``now`` may start: ``now`` inside the window, else its next opening.

    Parameters
    ----------
    now
        Current time (naive = local time; an aware time keeps its tzinfo and the
        result is the next wall-clock ``start`` in that zone).
    schedule
        The rule's window; ``None`` means always (returns ``now``).
    """
    if is_within_window(now, schedule):
        return now
    assert schedule is not None  # is_within_window returns True for None
    start, _ = schedule.minutes()
    candidate = now.replace(hour=start // 60, minute=start % 60, second=0, microsecond=0)
    if candidate <= now:
        candidate = candidate + timedelta(days=1)
    return candidate
