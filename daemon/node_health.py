"""Why the node cannot do its job: the reasons ``/healthz`` answers 503 with.

:func:`node_problems` turns facts the running node gathers (config state,
free disk, live workers, failing destinations) into sentences for people;
an empty list means healthy. ``contourd serve`` computes them for
``/healthz`` and writes them into its heartbeat, where ``contourd status``
reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from daemon.job_queue import utc_iso

WORKER_CRASH_LOOP_WINDOW_S = 60.0
"""Window in which worker restarts are counted to recognise a crash loop."""

WORKER_CRASH_LOOP_RESTARTS = 3
"""Restarts per configured worker within the window that count as a crash loop."""

MAX_CONFIG_ERROR_CHARS = 600
"""Longest config error quoted in a problem (the full text: ``contourd check``)."""


@dataclass(frozen=True)
class NodeFacts:
    """What the running node knows about itself at one moment.

    Attributes
    ----------
    config_path
        The operator's config file (``None``: embedded defaults).
    config_error
        The error of the file's current content, ``None`` when it is valid.
    data_dir
        The data folder.
    free_disk_mb, min_free_disk_mb
        Free space on the data folder's disk and the floor under which images
        are refused (MiB).
    workers_alive, workers_total, worker_restarts
        Worker processes running now, configured, and restarted so far.
    worker_restarts_recent
        Restarts within the last :data:`WORKER_CRASH_LOOP_WINDOW_S` seconds.
    failing_destinations
        ``(name, failing since (Unix s), last error)`` per destination whose
        deliveries keep failing (:meth:`SqliteJobQueue.failing_destinations`).
    dispatch_failing_unhealthy_s
        How long a destination may fail before the node counts as unhealthy.
    now
        Unix seconds.
    """

    config_path: Path | None
    config_error: str | None
    data_dir: Path
    free_disk_mb: float
    min_free_disk_mb: int
    workers_alive: int
    workers_total: int
    worker_restarts: int
    dispatch_failing_unhealthy_s: float
    now: float
    worker_restarts_recent: int = 0
    failing_destinations: Sequence[tuple[str, float, str | None]] = field(default_factory=list)


def node_problems(facts: NodeFacts) -> list[str]:
    """Sentences naming each reason the node cannot do its job (empty: healthy)."""
    problems: list[str] = []
    if facts.config_error is not None:
        details = " ".join(line.strip() for line in facts.config_error.splitlines())
        if len(details) > MAX_CONFIG_ERROR_CHARS:
            details = details[: MAX_CONFIG_ERROR_CHARS - 3] + "..."
        problems.append(
            f"config file {facts.config_path} is invalid ({details}); the node keeps "
            f"using the last valid config. Fix the file (`contourd check -c "
            f"{facts.config_path}` lists every error)"
        )
    if facts.min_free_disk_mb > 0 and facts.free_disk_mb < facts.min_free_disk_mb:
        problems.append(
            f"free disk {facts.free_disk_mb:.0f} MiB is under node.min_free_disk_mb "
            f"{facts.min_free_disk_mb} MiB: images are refused (0xA700) and no job runs; "
            f"free space in {facts.data_dir}"
        )
    if facts.workers_total > 0 and facts.workers_alive == 0:
        problems.append(
            f"no worker process is running (0 of {facts.workers_total}; "
            f"{facts.worker_restarts} restart(s) so far): jobs wait in the queue; "
            f"see the log for why the workers exit"
        )
    elif facts.worker_restarts_recent >= WORKER_CRASH_LOOP_RESTARTS * max(facts.workers_total, 1):
        problems.append(
            f"worker processes keep exiting: {facts.worker_restarts_recent} restart(s) in the "
            f"last {WORKER_CRASH_LOOP_WINDOW_S:g} s; jobs wait in the queue; see the log for "
            f"why the workers exit"
        )
    problems.extend(
        destination_problems(
            facts.failing_destinations, facts.dispatch_failing_unhealthy_s, facts.now
        )
    )
    return problems


DESTINATION_PROBLEM_PREFIX = "sending to "
"""How every destination problem begins (``contourd status`` replaces the
heartbeat's copies, up to 5 s old, with ones read from the database now)."""


def destination_problems(
    failing_destinations: Sequence[tuple[str, float, str | None]],
    dispatch_failing_unhealthy_s: float,
    now: float,
) -> list[str]:
    """Sentences for the destinations that have failed for too long.

    Parameters
    ----------
    failing_destinations
        ``(name, failing since (Unix s), last error)`` per destination.
    dispatch_failing_unhealthy_s
        How long a destination may fail before it counts as a problem (s).
    now
        Unix seconds.
    """
    problems = []
    for name, since_s, error in failing_destinations:
        failing_s = now - since_s
        if failing_s >= dispatch_failing_unhealthy_s:
            problems.append(
                f"{DESTINATION_PROBLEM_PREFIX}{name!r} has failed since {utc_iso(since_s)} "
                f"({failing_s:.0f} s, over http.dispatch_failing_unhealthy_s "
                f"{dispatch_failing_unhealthy_s:g} s): {error or 'no error recorded'}"
            )
    return problems
