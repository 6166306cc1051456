"""Node status for people and monitoring: heartbeat file, ``/healthz``, ``/metrics``.

- :func:`collect_status` gathers what ``contourd status`` and ``/healthz``
  show: node up (from the heartbeat file the running node rewrites every few
  seconds), queue length, jobs by state, free disk, last error.
- ``GET /healthz`` (JSON; 200 when healthy, 503 otherwise) and ``GET /metrics``
  (Prometheus text format, prometheus-client) are served by the node's web
  application (:mod:`daemon.web.app`, run by :class:`daemon.web.server.WebServer`).

Metrics are read from the database at scrape time, so figures from the
worker processes (a separate process) are included without any shared memory:

- ``contourd_instances_received_total`` instances in the spool table
- ``contourd_instances_ignored_total{sop_class}`` instances of SOP classes the
  node does not contour, answered with success and not stored
- ``contourd_series_receiving`` series still arriving (not complete yet, so
  no job exists for them)
- ``contourd_jobs`` (gauge, label ``state``) jobs by state
- ``contourd_queue_length`` jobs not finished yet
- ``contourd_stage_latency_seconds`` (histogram, label ``stage``) seconds
  from one job state to the next (``queued``, ``waiting``, ``processing``,
  ``sending``, ``total``) over the most recent jobs
- ``contourd_disk_free_bytes`` free space on the data folder's disk
- ``contourd_up`` 1 while the node serves
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from pydicom.uid import UID

from contourd.data_folder import DataFolder
from contourd.database import DbConnection
from daemon.job_queue import FINISHED_STATES, DatabaseJobQueue, stage_durations_s

log = logging.getLogger(__name__)

HEARTBEAT_STALE_S = 20.0
LATENCY_BUCKETS_S = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
LATENCY_WINDOW_JOBS = 1000


HEARTBEAT_BLOCK_BYTES = 4096
"""The heartbeat is padded to whole blocks of this size, so that on a full disk
it can still be rewritten in place (no new block is needed)."""


def write_heartbeat(data_dir: Path, info: dict[str, Any]) -> None:
    """Write the running node's heartbeat (pid, ports, problems, time).

    Atomically (temp file + rename) when the disk allows; on a full disk the
    padded file is overwritten in place instead, so ``contourd status`` still
    sees a running node. Raises ``OSError`` when neither works.
    """
    payload = dict(info, pid=os.getpid(), updated_at=time.time())
    data = json.dumps(payload).encode("utf-8")
    data += b" " * (-len(data) % HEARTBEAT_BLOCK_BYTES)
    path = DataFolder(data_dir).heartbeat
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        if not path.is_file() or path.stat().st_size < len(data):
            raise
        with open(path, "r+b") as fh:
            fh.write(data + b" " * (path.stat().st_size - len(data)))


def clear_heartbeat(data_dir: Path) -> None:
    """Remove the heartbeat at a clean stop."""
    DataFolder(data_dir).heartbeat.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_heartbeat(data_dir: Path) -> dict[str, Any] | None:
    """The heartbeat of a running node, or ``None`` when none is fresh and alive."""
    path = DataFolder(data_dir).heartbeat
    info = None
    for _attempt in range(3):  # an in-place rewrite may be read half-done: read again
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            break
        except (OSError, ValueError):
            continue
    if not isinstance(info, dict):
        return None
    if time.time() - float(info.get("updated_at", 0)) > HEARTBEAT_STALE_S:
        return None
    if not _pid_alive(int(info.get("pid", -1))):
        return None
    return dict(info)


class HasConnection(Protocol):
    """Anything holding a database connection (the job queue, the instance tables)."""

    @property
    def conn(self) -> DbConnection: ...


def instances_received(queue: DatabaseJobQueue) -> int:
    """Rows in the receive side's ``instances`` table."""
    return queue.count_rows("SELECT COUNT(*) FROM instances")


def instances_ignored(queue: HasConnection) -> dict[str, int]:
    """``{SOP class name: instances received and ignored}`` (empty before any)."""
    rows = queue.conn.rows("SELECT sop_class_uid, count FROM ignored_instances")
    return {UID(str(r["sop_class_uid"])).name: int(r["count"]) for r in rows}


def series_receiving(queue: DatabaseJobQueue) -> int:
    """Series whose newest version is still arriving (``receiving``; no job yet)."""
    return queue.count_rows(
        "SELECT COUNT(*) FROM series s WHERE s.state = 'receiving' AND s.version = "
        "(SELECT MAX(version) FROM series m WHERE m.series_uid = s.series_uid)"
    )


def series_held(queue: HasConnection) -> list[str]:
    """Why each series still receiving is held back as incomplete (newest first)."""
    rows = queue.conn.rows(
        "SELECT series_uid, version, completeness FROM series WHERE state = 'receiving' "
        "AND completeness LIKE 'incomplete%' ORDER BY last_received_at DESC"
    )
    return [f"series {r['series_uid']} version {r['version']}: {r['completeness']}" for r in rows]


def worker_rows(queue: DatabaseJobQueue, now: float | None = None) -> list[dict[str, Any]]:
    """Every worker in the ``workers`` table with the age of its heartbeat (s)."""
    now = time.time() if now is None else now
    return [
        {
            "worker_id": w.worker_id,
            "host": w.host,
            "pid": w.pid,
            "state": w.state,
            "current_job": w.current_job,
            "last_heartbeat": w.last_heartbeat,
            "heartbeat_age_s": round(max(0.0, now - w.last_heartbeat), 1),
        }
        for w in queue.workers()
    ]


def collect_status(queue: DatabaseJobQueue) -> dict[str, Any]:
    """What ``contourd status`` and ``/healthz`` report (no patient data)."""
    data_dir = queue.data_dir
    counts = queue.counts_by_state()
    queue_length = sum(n for s, n in counts.items() if s not in FINISHED_STATES)
    usage = shutil.disk_usage(data_dir)
    heartbeat = read_heartbeat(data_dir)
    last = queue.last_error()
    return {
        "node_up": heartbeat is not None,
        "node": heartbeat,
        "queue_length": queue_length,
        "jobs_by_state": counts,
        "disk_free_mb": round(usage.free / 2**20, 1),
        "disk_total_mb": round(usage.total / 2**20, 1),
        "instances_received": instances_received(queue),
        "instances_ignored": instances_ignored(queue),
        "series_receiving": series_receiving(queue),
        "series_held": series_held(queue),
        "database": queue.database.label,
        "workers": worker_rows(queue),
        "waiting_by_priority": {str(p): n for p, n in queue.waiting_by_priority().items()},
        "last_error": None
        if last is None
        else {"job_id": last[0], "error": last[1], "at": last[2]},
        "data_dir": str(data_dir),
    }


class QueueCollector(Collector):
    """Prometheus collector reading the job queue at scrape time."""

    def __init__(self, queue: DatabaseJobQueue) -> None:
        self.queue = queue

    def collect(self) -> Iterator[Metric]:
        """Yield the metrics listed in the module docstring."""
        up = GaugeMetricFamily("contourd_up", "1 while the node serves")
        up.add_metric([], 1.0)
        yield up
        received = GaugeMetricFamily(
            "contourd_instances_received_total", "Instances received and kept in the spool table"
        )
        received.add_metric([], float(instances_received(self.queue)))
        yield received
        ignored = GaugeMetricFamily(
            "contourd_instances_ignored_total",
            "Instances of SOP classes the node does not contour: answered success, not stored",
            labels=["sop_class"],
        )
        for name, n in sorted(instances_ignored(self.queue).items()):
            ignored.add_metric([name], float(n))
        yield ignored
        receiving = GaugeMetricFamily(
            "contourd_series_receiving", "Series still arriving (no job until they complete)"
        )
        receiving.add_metric([], float(series_receiving(self.queue)))
        yield receiving
        counts = self.queue.counts_by_state()
        jobs = GaugeMetricFamily("contourd_jobs", "Jobs by state", labels=["state"])
        for state, n in sorted(counts.items()):
            jobs.add_metric([state], float(n))
        yield jobs
        length = GaugeMetricFamily("contourd_queue_length", "Jobs not finished yet")
        length.add_metric([], float(sum(n for s, n in counts.items() if s not in FINISHED_STATES)))
        yield length
        waiting = GaugeMetricFamily(
            "contourd_jobs_waiting", "Jobs waiting for a worker, by priority", labels=["priority"]
        )
        for priority, n in self.queue.waiting_by_priority().items():
            waiting.add_metric([str(priority)], float(n))
        yield waiting
        yield from self._workers()
        free = GaugeMetricFamily("contourd_disk_free_bytes", "Free space on the data disk")
        free.add_metric([], float(shutil.disk_usage(self.queue.data_dir).free))
        yield free
        yield self._latencies()

    def _workers(self) -> Iterator[Metric]:
        rows = worker_rows(self.queue)
        labels = ["worker", "host", "pid"]
        beat = GaugeMetricFamily(
            "contourd_worker_last_heartbeat_seconds",
            "Unix time of each worker's last heartbeat",
            labels=labels,
        )
        job = GaugeMetricFamily(
            "contourd_worker_current_job",
            "Id of the job each worker runs (0 when idle)",
            labels=labels,
        )
        for row in rows:
            key = [row["worker_id"], row["host"], str(row["pid"])]
            beat.add_metric(key, float(row["last_heartbeat"]))
            job.add_metric(key, float(row["current_job"] or 0))
        yield beat
        yield job

    def _latencies(self) -> HistogramMetricFamily:
        samples: dict[str, list[float]] = {}
        for job in self.queue.recent(limit=LATENCY_WINDOW_JOBS):
            for stage, seconds in stage_durations_s(self.queue.events(job.id)).items():
                samples.setdefault(stage, []).append(seconds)
        hist = HistogramMetricFamily(
            "contourd_stage_latency_seconds",
            f"Seconds from one job state to the next, over the last {LATENCY_WINDOW_JOBS} jobs",
            labels=["stage"],
        )
        for stage, values in sorted(samples.items()):
            buckets = [(str(b), float(sum(v <= b for v in values))) for b in LATENCY_BUCKETS_S]
            buckets.append(("+Inf", float(len(values))))
            hist.add_metric([stage], buckets, sum_value=float(sum(values)))
        return hist
