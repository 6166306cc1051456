"""``contourd serve``: the whole node, until SIGTERM or Ctrl-C.

Wires the stages, each handing work on through the data folder (spool files
and SQLite rows), so a crash in one never loses another's work:

- the receive node (storage SCP, spool, series assembly); every completed
  series version becomes a job (:meth:`SqliteJobQueue.submit_series`,
  idempotent, so a completion re-emitted after a restart is harmless);
- ``worker.processes`` worker processes (``contourd worker``), restarted when
  one dies; a dead worker's job is re-claimed when its lease runs out;
- the dispatcher (retries with backoff), retention, the ``/healthz`` and
  ``/metrics`` endpoint, and the config watcher (hot reload of rules,
  destinations, dispatch and retention settings);
- a heartbeat file that ``contourd status`` reads.

Shutdown: the first SIGTERM (or Ctrl-C) stops accepting associations, lets
each worker finish its running job and the dispatcher finish its send, then
exits 0. A second one exits at once (workers killed; their jobs are
re-claimed at the next start). A restart resumes everything from the
database: open series, queued and scheduled jobs, pending deliveries.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from pydicom import Dataset

from daemon.config import ContourdConfig, load_config
from daemon.config_watcher import ConfigHolder, ConfigWatcher
from daemon.dispatch import Dispatcher
from daemon.health_http import HealthServer, clear_heartbeat, write_heartbeat
from daemon.job_queue import SqliteJobQueue
from daemon.node import ReceiveNode
from daemon.retention import Retention
from daemon.series_assembler import SeriesCompletion
from daemon.series_intake import submit_completion
from routing.engine import route
from routing.series_attributes import SeriesAttributes

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 5.0
WORKER_RESTART_DELAY_S = 1.0


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand."""
    parser = subparsers.add_parser(
        "serve",
        help="run the DICOM node (receive, route, segment, send)",
        description="Run the DICOM node until SIGTERM or Ctrl-C.",
    )
    parser.add_argument("-c", "--config", type=Path, default=None, help="config YAML file")
    parser.add_argument(
        "--port", type=int, default=None, help="override node.port (0: any free port)"
    )
    parser.add_argument(
        "--http-port", type=int, default=None, help="override http.port (0: any free port)"
    )
    parser.set_defaults(func=run)


def log_completion(completion: SeriesCompletion) -> None:
    """Log a completed series (no patient identifiers)."""
    log.info(
        "series ready: %s version %d, %d instances, modality %s, from %s@%s (%s)",
        completion.series_uid,
        completion.version,
        completion.num_instances,
        completion.modality or "?",
        completion.calling_ae or "?",
        completion.peer_address or "?",
        completion.reason,
    )


def _add_file_log(data_dir: Path) -> None:
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(logs / "contourd.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)


class WorkerPool:
    """Starts ``contourd worker`` processes and restarts the ones that die.

    Parameters
    ----------
    count
        Number of worker processes.
    config_path
        Passed on as ``-c`` (``None``: the workers use the embedded defaults).
    """

    def __init__(self, count: int, config_path: Path | None) -> None:
        self.count = count
        self.config_path = config_path
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, name="workers", daemon=True)

    def _spawn(self, name: str) -> None:
        cmd = [sys.executable, "-m", "daemon", "worker", "--id", name]
        if self.config_path is not None:
            cmd += ["-c", str(self.config_path)]
        self.procs[name] = subprocess.Popen(cmd)
        log.info("worker %s started (pid %d)", name, self.procs[name].pid)

    def start(self) -> None:
        """Start the workers and the supervising thread."""
        with self._lock:
            for i in range(self.count):
                self._spawn(f"worker-{os.getpid()}-{i + 1}")
        self._thread.start()

    def _supervise(self) -> None:
        while not self._stopping.wait(WORKER_RESTART_DELAY_S):
            with self._lock:
                for name, proc in list(self.procs.items()):
                    code = proc.poll()
                    if code is not None and not self._stopping.is_set():
                        log.error(
                            "worker %s (pid %d) exited with %s; restarting", name, proc.pid, code
                        )
                        self.restarts += 1
                        self._spawn(name)

    def pids(self) -> list[int]:
        """Process ids of the current workers."""
        with self._lock:
            return [p.pid for p in self.procs.values()]

    def alive(self) -> bool:
        """Whether every worker process runs."""
        with self._lock:
            return all(p.poll() is None for p in self.procs.values())

    def stop(self, *, graceful: bool = True, timeout_s: float | None = None) -> None:
        """SIGTERM every worker (each finishes its job) and wait; SIGKILL when not graceful."""
        self._stopping.set()
        with self._lock:
            for proc in self.procs.values():
                if proc.poll() is None:
                    if graceful:
                        proc.send_signal(signal.SIGTERM)
                    else:
                        proc.kill()
            for proc in self.procs.values():
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _release_hook(holder: ConfigHolder | None, static: ContourdConfig) -> Any:
    """Complete a series at association release when its first rule says so."""

    def hook(header: Dataset) -> bool:
        config = holder.current if holder is not None else static
        decision = route(
            SeriesAttributes.from_dataset(header),
            config.rules,
            body_part_synonyms=config.body_part_synonyms,
        )
        return bool(decision.matched) and decision.matched[0].complete_on == "association_release"

    return hook


def run(args: argparse.Namespace) -> int:
    """Start the node and block until a stop signal; return the exit code."""
    config_path = Path(args.config).resolve() if args.config is not None else None
    config = load_config(config_path)
    holder = ConfigHolder(config_path, config) if config_path is not None else None

    def current() -> ContourdConfig:
        return holder.current if holder is not None else config

    if args.port is not None:
        config.node.port = args.port
    data_dir = Path(config.node.data_dir)
    _add_file_log(data_dir)
    queue = SqliteJobQueue(data_dir, max_attempts=config.worker.max_attempts)

    def on_complete(completion: SeriesCompletion) -> None:
        log_completion(completion)
        job_id = submit_completion(queue, completion, current().rules)
        log.info(
            "series %s version %d -> job %d", completion.series_uid, completion.version, job_id
        )

    node = ReceiveNode(config, on_complete, complete_on_release=_release_hook(holder, config))
    workers = WorkerPool(config.worker.processes, config_path)
    dispatcher = Dispatcher(queue, lambda: current().destinations, config.dispatch)
    retention = Retention(queue, config.retention)
    watcher = ConfigWatcher(holder) if holder is not None else None
    http: HealthServer | None = None

    stop = threading.Event()
    signals = {"count": 0}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        signals["count"] += 1
        if signals["count"] == 1:
            log.info("signal %d: stopping (running jobs finish; send again to exit now)", signum)
            stop.set()
            return
        log.warning(
            "signal %d again: exiting now; unfinished jobs resume at the next start", signum
        )
        workers.stop(graceful=False, timeout_s=5)
        os._exit(130)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    node.start()
    workers.start()
    dispatcher.start()
    if watcher is not None:
        watcher.start()
    http_port = args.http_port if args.http_port is not None else config.http.port
    if config.http.enabled:
        http = HealthServer(
            queue,
            config.http.host,
            http_port,
            extra_checks=lambda: {
                "healthy": workers.alive(),
                "workers_alive": workers.alive(),
                "worker_restarts": workers.restarts,
                "config_error": holder.last_error if holder is not None else None,
            },
        ).start()
    # Tests and supervisors read these lines to learn the ports when 0 was asked for.
    print(f"contourd listening on port {node.port}", flush=True)
    host = config.node.host if config.node.host not in ("0.0.0.0", "::", "") else "THIS_HOST"
    print(
        f"contourd: AE title {config.node.ae_title}, port {node.port}, data folder "
        f"{data_dir.resolve()}{' (embedded defaults)' if config_path is None else ''}\n"
        f"  push a series:  storescu -aec {config.node.ae_title} {host} {node.port} "
        "+sd /path/to/series   (DCMTK)\n"
        f"  models:         contourd models list"
        f"{'' if config_path is None else ' -c ' + str(config_path)}",
        flush=True,
    )
    if http is not None:
        print(f"contourd http on port {http.port}", flush=True)

    def heartbeat() -> None:
        write_heartbeat(
            data_dir,
            {
                "port": node.port,
                "http_port": http.port if http is not None else None,
                "worker_pids": workers.pids(),
            },
        )

    next_retention = time.monotonic()
    try:
        heartbeat()
        while not stop.wait(1.0):
            heartbeat()
            dispatcher.config = current().dispatch
            if time.monotonic() >= next_retention:
                retention.config = current().retention
                try:
                    report = retention.run_once()
                    if report.series_purged:
                        log.info("retention purged %d series", len(report.series_purged))
                except Exception:  # boundary: retention must not stop the node
                    log.exception("retention pass failed; it runs again later")
                next_retention = time.monotonic() + current().retention.check_interval_s
    finally:
        log.info("stopping: no new associations; waiting for running jobs")
        node.stop()
        workers.stop(graceful=True)
        dispatcher.stop(wait=True)
        if watcher is not None:
            watcher.stop()
        if http is not None:
            http.stop()
        clear_heartbeat(data_dir)
    log.info("contourd stopped")
    return 0
