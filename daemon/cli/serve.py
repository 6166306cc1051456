"""``contourd serve``: the whole node, until SIGTERM or Ctrl-C.

Wires the stages, each handing work on through the data folder (spool files
and SQLite rows), so a crash in one never loses another's work:

- the receive node (storage SCP, spool, series assembly); every completed
  series version becomes a job (:meth:`SqliteJobQueue.submit_series`,
  idempotent, so a completion re-emitted after a restart is harmless);
- ``worker.processes`` worker processes (``contourd worker``), restarted when
  one dies; the supervisor releases a dead worker's leases at once, so its
  job (or its send) is taken up again without waiting for the lease to run
  out. Workers read the supervisor's copy of the last valid config
  (``<data_dir>/run/config.last-valid.yaml``), never a broken edit;
- the dispatcher (retries with backoff), retention, the web server (pages,
  REST API, STOW-RS, ``/healthz``, ``/metrics``), and the config watcher (hot reload of rules,
  destinations, dispatch and retention settings);
- a heartbeat file that ``contourd status`` reads, holding the problems
  that ``/healthz`` reports (:mod:`daemon.node_health`).

A full data disk does not stop the node: the emergency purge runs before
anything else at start and whenever free space is under
``retention.emergency_free_disk_mb``; under ``node.min_free_disk_mb`` the SCP
answers C-ECHO and refuses images with 0xA700 and workers claim no jobs; the
log falls back to stderr; a heartbeat that cannot be written is skipped; a
1 MiB reserve file (:mod:`daemon.space_reserve`) is given back when the
database cannot be opened on a full disk, so a restart there comes up too.
Everything resumes by itself when space returns.

Roles (``--role``): ``both`` (default) runs all of it on one machine;
``receive`` runs everything but the workers (a receiving node of a cluster);
``work`` runs only the worker processes and ``/healthz`` + ``/metrics`` (a GPU
server). Receivers and workers of one cluster share the ``database``
(PostgreSQL) and the data folder (a network share), see docs/operations.md.

Shutdown: the first SIGTERM (or Ctrl-C) stops accepting associations, lets
each worker finish its running job and the dispatcher finish its send, then
exits 0. A second one exits at once (workers killed; their jobs are
re-claimed at the next start). A restart resumes everything from the
database: open series, queued and scheduled jobs, pending deliveries.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from pydicom import Dataset

from daemon.config import ContourdConfig, load_config
from daemon.config_watcher import (
    LAST_VALID_CONFIG,
    ConfigHolder,
    ConfigWatcher,
    write_last_valid,
)
from daemon.dispatch import Dispatcher
from daemon.feedback_dataset import kept_series_uids
from daemon.feedback_metrics import FeedbackCollector
from daemon.health_http import clear_heartbeat, write_heartbeat
from daemon.job_queue import SqliteJobQueue
from daemon.log_fallback import FallbackFileHandler
from daemon.node import ReceiveNode
from daemon.node_health import WORKER_CRASH_LOOP_WINDOW_S, NodeFacts, node_problems
from daemon.retention import Retention
from daemon.series_assembler import SeriesCompletion
from daemon.series_intake import submit_completion
from daemon.space_reserve import SpaceReserve
from daemon.web.app import WebContext
from daemon.web.server import WebServer
from daemon.web.stow import StowReceiver
from routing.engine import route
from routing.series_attributes import SeriesAttributes

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 5.0
ROLES = ("both", "receive", "work")
WORKER_RESTART_DELAY_S = 1.0
EMERGENCY_PURGE_INTERVAL_S = 5.0
"""Seconds between retention passes while free space is under the emergency floor."""


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
    parser.add_argument(
        "--role",
        choices=ROLES,
        default="both",
        help="both (default): receive and work on this host; receive: storage SCP, "
        "dispatcher and retention without workers; work: worker processes only",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="override worker.processes (worker processes on this host)",
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
    handler = FallbackFileHandler(data_dir / "logs" / "contourd.log")
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
    config_copy
        The supervisor's copy of the last valid config (``--config-copy``).
    on_exit
        Called with a worker's name when the supervisor sees it exit, before
        it is restarted (``contourd serve`` releases the worker's leases).
    """

    def __init__(
        self,
        count: int,
        config_path: Path | None,
        *,
        config_copy: Path | None = None,
        on_exit: Callable[[str], None] | None = None,
    ) -> None:
        self.count = count
        self.config_path = config_path
        self.config_copy = config_copy
        self.on_exit = on_exit
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts = 0
        self._restart_times: collections.deque[float] = collections.deque(maxlen=1000)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, name="workers", daemon=True)

    def _spawn(self, name: str) -> None:
        cmd = [sys.executable, "-m", "daemon", "worker", "--id", name]
        if self.config_path is not None:
            cmd += ["-c", str(self.config_path)]
            if self.config_copy is not None:
                cmd += ["--config-copy", str(self.config_copy)]
        self.procs[name] = subprocess.Popen(cmd)
        log.info("worker %s started (pid %d)", name, self.procs[name].pid)

    def start(self) -> None:
        """Start the workers and the supervising thread."""
        with self._lock:
            for i in range(self.count):
                self._spawn(f"worker-{socket.gethostname()}-{os.getpid()}-{i + 1}")
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
                        self._exited(name, proc.pid, code)
                        self.restarts += 1
                        self._restart_times.append(time.monotonic())
                        self._spawn(name)

    def _exited(self, name: str, pid: int, code: int) -> None:
        if self.on_exit is None:
            return
        try:
            self.on_exit(name)
        except Exception:  # boundary: the leases then run out by themselves
            log.exception("could not release the leases of worker %s (pid %d)", name, pid)

    def pids(self) -> list[int]:
        """Process ids of the current workers."""
        with self._lock:
            return [p.pid for p in self.procs.values()]

    def alive(self) -> bool:
        """Whether every worker process runs."""
        return self.alive_count() == len(self.procs)

    def restarts_within(self, window_s: float) -> int:
        """Restarts in the last ``window_s`` seconds (a crash loop shows here)."""
        since = time.monotonic() - window_s
        with self._lock:
            return sum(t >= since for t in self._restart_times)

    def alive_count(self) -> int:
        """How many worker processes run now."""
        with self._lock:
            return sum(p.poll() is None for p in self.procs.values())

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


class _NodeHealth:
    """Gathers :class:`NodeFacts` for ``/healthz`` and the heartbeat."""

    def __init__(
        self,
        queue: SqliteJobQueue,
        workers: WorkerPool,
        holder: ConfigHolder | None,
        current: Callable[[], ContourdConfig],
    ) -> None:
        self.queue, self.workers, self.holder, self.current = queue, workers, holder, current

    def problems(self) -> list[str]:
        """Why the node cannot do its job now (empty: healthy)."""
        config = self.current()
        try:
            failing = self.queue.failing_destinations()
        except sqlite3.Error as err:
            failing = [("(job database)", 0.0, f"cannot be read: {err}")]
        return node_problems(
            NodeFacts(
                config_path=self.holder.path if self.holder is not None else None,
                config_error=self.holder.last_error if self.holder is not None else None,
                data_dir=config.data_dir,
                free_disk_mb=shutil.disk_usage(config.data_dir).free / 2**20,
                min_free_disk_mb=config.node.min_free_disk_mb,
                workers_alive=self.workers.alive_count(),
                workers_total=self.workers.count,
                worker_restarts=self.workers.restarts,
                worker_restarts_recent=self.workers.restarts_within(WORKER_CRASH_LOOP_WINDOW_S),
                dispatch_failing_unhealthy_s=config.http.dispatch_failing_unhealthy_s,
                now=time.time(),
                failing_destinations=failing,
            )
        )

    def checks(self) -> dict[str, Any]:
        """The ``checks`` part of ``/healthz``."""
        problems = self.problems()
        return {
            "healthy": not problems,
            "problems": problems,
            "workers_alive": self.workers.alive_count(),
            "worker_restarts": self.workers.restarts,
            "config_error": self.holder.last_error if self.holder is not None else None,
        }


class _Retention:
    """Retention passes: at start, every ``check_interval_s``, and often while the
    disk is under the emergency floor (the purge must not wait five minutes)."""

    def __init__(self, queue: SqliteJobQueue, current: Callable[[], ContourdConfig]) -> None:
        self.current = current
        self.retention = Retention(
            queue, current().retention, keep_series=lambda: kept_series_uids(queue.data_dir)
        )
        self.next_at = 0.0
        self.next_emergency_at = 0.0

    def tick(self) -> None:
        """Run a pass when one is due; never raises."""
        config = self.current().retention
        now = time.monotonic()
        emergency = self.retention.free_disk_mb() < config.emergency_free_disk_mb
        if now < self.next_at and not (emergency and now >= self.next_emergency_at):
            return
        self.retention.config = config
        try:
            report = self.retention.run_once()
            if report.series_purged:
                log.info("retention purged %d series", len(report.series_purged))
        except Exception as err:  # boundary: retention must not stop the node
            log.error("retention pass failed (%s); it runs again later", err)
        done = time.monotonic()
        self.next_emergency_at = done + EMERGENCY_PURGE_INTERVAL_S
        if now >= self.next_at:
            self.next_at = done + config.check_interval_s


def _heartbeat_writer(data_dir: Path, info: Callable[[], dict[str, Any]]) -> Callable[[], None]:
    """``write_heartbeat`` that logs a failure (full disk) once and keeps going."""
    failing = {"now": False}

    def beat() -> None:
        try:
            write_heartbeat(data_dir, info())
        except OSError as err:
            if not failing["now"]:
                log.error(
                    "cannot write the heartbeat in %s (%s); `contourd status` will say "
                    "the node is down until it can",
                    data_dir,
                    err,
                )
            failing["now"] = True
            return
        if failing["now"]:
            log.info("heartbeat written again")
        failing["now"] = False

    return beat


def _open_queue(data_dir: Path, config: ContourdConfig, reserve: SpaceReserve) -> SqliteJobQueue:
    """Open the job database; on a full disk give back the reserve and try again."""
    try:
        return SqliteJobQueue(
            data_dir, max_attempts=config.worker.max_attempts, database=config.open_database()
        )
    except sqlite3.OperationalError as err:
        free_mb = shutil.disk_usage(data_dir).free / 2**20
        if not reserve.release():
            raise
        log.warning(
            "the job database could not be opened (%s, %.1f MiB free); retrying with the "
            "reserve given back",
            err,
            free_mb,
        )
        return SqliteJobQueue(
            data_dir, max_attempts=config.worker.max_attempts, database=config.open_database()
        )


def run(args: argparse.Namespace) -> int:
    """Start the node and block until a stop signal; return the exit code."""
    config_path = Path(args.config).resolve() if args.config is not None else None
    config = load_config(config_path)
    holder = ConfigHolder(config_path, config) if config_path is not None else None

    def current() -> ContourdConfig:
        return holder.current if holder is not None else config

    if args.port is not None:
        config.node.port = args.port
    if args.workers is not None:
        config.worker.processes = args.workers
    data_dir = Path(config.node.data_dir)
    _add_file_log(data_dir)
    receives = args.role in ("both", "receive")
    works = args.role in ("both", "work")
    reserve = SpaceReserve(data_dir)
    queue = _open_queue(data_dir, config, reserve)
    # The emergency purge runs before anything else can need space.
    retention = _Retention(queue, current)
    if receives:  # retention belongs to the receiving nodes
        retention.tick()

    def on_complete(completion: SeriesCompletion) -> None:
        log_completion(completion)
        job_id = submit_completion(queue, completion, current().rules)
        log.info(
            "series %s version %d -> job %d", completion.series_uid, completion.version, job_id
        )

    def release_worker(name: str) -> None:
        jobs = queue.release_leases(
            [name, f"{name}-send"],
            f"worker {name} exited (seen by the supervisor); its lease is released",
        )
        if jobs:
            log.warning("worker %s died holding job(s) %s; released at once", name, jobs)
            dispatcher.wake()  # a send it held is taken up now, not at the next sweep

    node = (
        ReceiveNode(config, on_complete, complete_on_release=_release_hook(holder, config))
        if receives
        else None
    )
    config_copy = write_last_valid(holder, data_dir) if holder is not None else None
    copied_generation = holder.generation if holder is not None else 0
    workers = WorkerPool(
        config.worker.processes if works else 0,
        config_path,
        config_copy=data_dir / LAST_VALID_CONFIG if config_path is not None else None,
        on_exit=release_worker,
    )
    if config_path is not None and config_copy is None:
        log.warning("workers read %s until its copy can be written", config_path)
    dispatcher = Dispatcher(queue, lambda: current().destinations, config.dispatch)
    watcher = ConfigWatcher(holder) if holder is not None else None
    health = _NodeHealth(queue, workers, holder, current)
    http: WebServer | None = None

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

    if node is not None:
        node.start()
    workers.start()
    if receives:
        dispatcher.start()
    if watcher is not None:
        watcher.start()
    http_port = args.http_port if args.http_port is not None else config.http.port
    if config.http.enabled and node is not None:  # the web face belongs to receivers
        web = WebContext(
            queue=queue,
            config=current,
            extra_checks=health.checks,
            collectors=[
                FeedbackCollector(data_dir, lambda: current().feedback.metrics_window_days)
            ],
            stow=StowReceiver(
                node.spool,
                node.assembler,
                called_ae=config.node.ae_title,
                min_free_disk_mb=config.node.min_free_disk_mb,
            ),
        )
        http = WebServer(queue, config.http.host, http_port, context=web).start()
    log.info("role %s, database %s", args.role, queue.database.label)
    if node is None:
        print(
            f"contourd: worker host, {workers.count} worker process(es), data folder "
            f"{data_dir.resolve()}, database {queue.database.label}",
            flush=True,
        )
        return _run_worker_host(workers, stop, watcher)
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
        scheme = "https" if config.http.tls_certificate is not None else "http"
        web_host = "localhost" if config.http.host in ("127.0.0.1", "::1") else config.http.host
        print(
            f"  web pages:      {scheme}://{web_host}:{http.port}/  (users: contourd users add)",
            flush=True,
        )

    heartbeat = _heartbeat_writer(
        data_dir,
        lambda: {
            "port": node.port,
            "http_port": http.port if http is not None else None,
            "worker_pids": workers.pids(),
            "problems": health.problems(),
        },
    )

    try:
        heartbeat()
        while not stop.wait(1.0):
            heartbeat()
            if not receives:
                continue
            dispatcher.config = current().dispatch
            if holder is not None and holder.generation != copied_generation:
                copied_generation = holder.generation
                write_last_valid(holder, data_dir)
            retention.tick()
            reserve.ensure(current().node.min_free_disk_mb)
    finally:
        log.info("stopping: no new associations; waiting for running jobs")
        if node is not None:
            node.stop()
        workers.stop(graceful=True)
        if receives:
            dispatcher.stop(wait=True)
        if watcher is not None:
            watcher.stop()
        if http is not None:
            http.stop()
        if node is not None:
            clear_heartbeat(data_dir)
    log.info("contourd stopped")
    return 0


def _run_worker_host(
    workers: WorkerPool, stop: threading.Event, watcher: ConfigWatcher | None
) -> int:
    """``--role work``: supervise the worker processes until a stop signal."""
    try:
        while not stop.wait(1.0):
            pass
    finally:
        log.info("stopping: each worker finishes its running job")
        workers.stop(graceful=True)
        if watcher is not None:
            watcher.stop()
    log.info("contourd stopped")
    return 0
