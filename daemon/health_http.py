"""Node status for people and monitoring: heartbeat file, ``/healthz``, ``/metrics``.

- :func:`collect_status` gathers what ``contourd status`` and ``/healthz``
  show: node up (from the heartbeat file the running node rewrites every few
  seconds), queue length, jobs by state, free disk, last error.
- :class:`HealthServer` serves ``GET /healthz`` (JSON; 200 when healthy, 503
  otherwise) and ``GET /metrics`` (Prometheus text format, prometheus-client).

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
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from pydicom.uid import UID

from daemon.job_queue import FINISHED_STATES, SqliteJobQueue, stage_durations_s

log = logging.getLogger(__name__)

HEARTBEAT_FILENAME = "node.heartbeat.json"
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
    path = Path(data_dir) / HEARTBEAT_FILENAME
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
    (Path(data_dir) / HEARTBEAT_FILENAME).unlink(missing_ok=True)


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
    path = Path(data_dir) / HEARTBEAT_FILENAME
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


def _rows_read_only(db_path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a query on the receive side's tables (none before they exist)."""
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as conn:
            return list(conn.execute(sql).fetchall())
    except sqlite3.Error:
        return []


def _count_read_only(db_path: Path, sql: str) -> int:
    """``SELECT COUNT(*) ...`` on the receive side's tables (0 before they exist)."""
    rows = _rows_read_only(db_path, sql)
    return int(rows[0][0]) if rows else 0


def instances_received(db_path: Path) -> int:
    """Rows in the receive side's ``instances`` table (0 before it exists)."""
    return _count_read_only(db_path, "SELECT COUNT(*) FROM instances")


def instances_ignored(db_path: Path) -> dict[str, int]:
    """``{SOP class name: instances received and ignored}`` (empty before any)."""
    rows = _rows_read_only(db_path, "SELECT sop_class_uid, count FROM ignored_instances")
    return {UID(str(uid)).name: int(n) for uid, n in rows}


def series_receiving(db_path: Path) -> int:
    """Series whose newest version is still arriving (``receiving``; no job yet)."""
    return _count_read_only(
        db_path,
        "SELECT COUNT(*) FROM series s WHERE s.state = 'receiving' AND s.version = "
        "(SELECT MAX(version) FROM series m WHERE m.series_uid = s.series_uid)",
    )


def series_held(db_path: Path) -> list[str]:
    """Why each series still receiving is held back as incomplete (newest first)."""
    rows = _rows_read_only(
        db_path,
        "SELECT series_uid, version, completeness FROM series WHERE state = 'receiving' "
        "AND completeness LIKE 'incomplete%' ORDER BY last_received_at DESC",
    )
    return [f"series {uid} version {v}: {why}" for uid, v, why in rows]


def collect_status(queue: SqliteJobQueue) -> dict[str, Any]:
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
        "instances_received": instances_received(queue.db_path),
        "instances_ignored": instances_ignored(queue.db_path),
        "series_receiving": series_receiving(queue.db_path),
        "series_held": series_held(queue.db_path),
        "last_error": None
        if last is None
        else {"job_id": last[0], "error": last[1], "at": last[2]},
        "data_dir": str(data_dir),
    }


class QueueCollector(Collector):
    """Prometheus collector reading the job queue at scrape time."""

    def __init__(self, queue: SqliteJobQueue) -> None:
        self.queue = queue

    def collect(self) -> Iterator[Metric]:
        """Yield the metrics listed in the module docstring."""
        up = GaugeMetricFamily("contourd_up", "1 while the node serves")
        up.add_metric([], 1.0)
        yield up
        received = GaugeMetricFamily(
            "contourd_instances_received_total", "Instances received and kept in the spool table"
        )
        received.add_metric([], float(instances_received(self.queue.db_path)))
        yield received
        ignored = GaugeMetricFamily(
            "contourd_instances_ignored_total",
            "Instances of SOP classes the node does not contour: answered success, not stored",
            labels=["sop_class"],
        )
        for name, n in sorted(instances_ignored(self.queue.db_path).items()):
            ignored.add_metric([name], float(n))
        yield ignored
        receiving = GaugeMetricFamily(
            "contourd_series_receiving", "Series still arriving (no job until they complete)"
        )
        receiving.add_metric([], float(series_receiving(self.queue.db_path)))
        yield receiving
        counts = self.queue.counts_by_state()
        jobs = GaugeMetricFamily("contourd_jobs", "Jobs by state", labels=["state"])
        for state, n in sorted(counts.items()):
            jobs.add_metric([state], float(n))
        yield jobs
        length = GaugeMetricFamily("contourd_queue_length", "Jobs not finished yet")
        length.add_metric([], float(sum(n for s, n in counts.items() if s not in FINISHED_STATES)))
        yield length
        free = GaugeMetricFamily("contourd_disk_free_bytes", "Free space on the data disk")
        free.add_metric([], float(shutil.disk_usage(self.queue.data_dir).free))
        yield free
        yield self._latencies()

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


HealthCheck = Callable[[], dict[str, Any]]


class HealthServer:
    """``/healthz`` and ``/metrics`` on a background thread.

    Parameters
    ----------
    queue
        The job queue (metrics and status read it).
    host, port
        Where to listen; port 0 picks a free port (see :attr:`port`).
    extra_checks
        Returns ``{"healthy": bool, "problems": [str, ...], ...}`` from the
        running node (config, disk floor, workers, dispatch; see
        :mod:`daemon.node_health`); merged into ``/healthz``, whose
        ``problems`` list says why it answers 503.
    """

    def __init__(
        self,
        queue: SqliteJobQueue,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        extra_checks: HealthCheck | None = None,
    ) -> None:
        self.queue = queue
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(QueueCollector(queue))
        self.extra_checks = extra_checks
        server = ThreadingHTTPServer((host, port), self._handler_class())
        server.daemon_threads = True
        self._server = server
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return int(self._server.server_address[1])

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) for ``/healthz``."""
        status = collect_status(self.queue)
        status.pop("node", None)
        healthy = True
        if self.extra_checks is not None:
            extra = self.extra_checks()
            healthy = bool(extra.get("healthy", True))
            status["checks"] = extra
            status["problems"] = list(extra.get("problems", []))
        status["status"] = "ok" if healthy else "unhealthy"
        return (200 if healthy else 503), status

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                try:
                    if self.path.split("?")[0] == "/healthz":
                        code, body = outer.health()
                        data = json.dumps(body).encode()
                        content_type = "application/json"
                    elif self.path.split("?")[0] == "/metrics":
                        code, data = 200, generate_latest(outer.registry)
                        content_type = CONTENT_TYPE_LATEST
                    else:
                        code, data, content_type = 404, b"not found\n", "text/plain"
                except Exception as err:  # boundary: one HTTP request
                    log.exception("health endpoint failed")
                    code, data, content_type = 500, f"{err}\n".encode(), "text/plain"
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("http: " + format, *args)

        return Handler

    def start(self) -> HealthServer:
        """Serve on a daemon thread; returns self."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="contourd-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
