"""The running node: every stage of ``contourd serve`` wired together.

:class:`Service` builds the stages of one role and hands work on between
them through the data folder (spool files and database rows), so a crash in
one never loses another's work:

- the receive node (storage SCP, spool, series assembly); every completed
  series version becomes a job (:func:`daemon.series_intake.submit_completion`,
  idempotent, so a completion re-emitted after a restart is harmless);
- ``worker.processes`` worker processes (:class:`daemon.worker_pool.WorkerPool`),
  restarted when one dies; the service releases a dead worker's leases at
  once (:meth:`Service.release_worker`), so its job (or its send) is taken up
  again without waiting for the lease to run out. Workers read the service's
  copy of the last valid config (``DataFolder.last_valid_config``), never a
  broken edit;
- the dispatcher (retries with backoff), retention
  (:class:`daemon.retention.RetentionSchedule`), the web server (pages, REST
  API, STOW-RS, ``/healthz``, ``/metrics``) and the config watcher;
- a heartbeat file that ``contourd status`` reads, holding the problems that
  ``/healthz`` reports (:class:`NodeHealth`, :mod:`daemon.node_health`).

Hot reload: the service keeps one config provider (:attr:`Service.config`,
the :class:`daemon.config_watcher.ConfigHolder` when there is a config file).
Every component that must follow a reload is given a provider
(:mod:`daemon.config_provider`) and asks it at each use: routing at release,
completion and in the workers; destinations and dispatch settings at each
send; retention settings at each pass; the disk floor at each tick; the web
pages at each request. Nothing is re-assigned from outside. ``node:``
settings (AE title, ports, data folder, TLS, series completion) are bound at
start.

Roles: ``both`` runs all of it; ``receive`` everything but the workers;
``work`` only the worker processes (and the config watcher and the workers'
config copy). :meth:`Service.start`, :meth:`Service.run_until` and
:meth:`Service.stop` are all ``contourd serve`` calls.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contourd.data_folder import DataFolder
from daemon.config import ContourdConfig
from daemon.config_provider import ConfigProvider, provided
from daemon.config_watcher import ConfigHolder, ConfigWatcher, write_last_valid
from daemon.dispatch import Dispatcher
from daemon.feedback_dataset import kept_series_uids
from daemon.feedback_metrics import FeedbackCollector
from daemon.health_http import clear_heartbeat, write_heartbeat
from daemon.job_queue import SqliteJobQueue
from daemon.log_fallback import FallbackFileHandler
from daemon.node import ReceiveNode
from daemon.node_health import WORKER_CRASH_LOOP_WINDOW_S, NodeFacts, node_problems
from daemon.retention import Retention, RetentionSchedule
from daemon.series_assembler import SeriesCompletion
from daemon.series_intake import submit_completion
from daemon.space_reserve import SpaceReserve
from daemon.web.context import WebContext
from daemon.web.server import WebServer
from daemon.web.stow import StowReceiver
from daemon.worker_pool import WorkerPool
from routing.engine import route
from routing.series_attributes import SeriesAttributes

log = logging.getLogger(__name__)

ROLES = ("both", "receive", "work")
TICK_S = 1.0
"""Seconds between the service's housekeeping ticks (heartbeat, config copy, retention)."""


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


def add_file_log(folder: DataFolder) -> None:
    """Log to the data folder's log file too (falls back to stderr on a full disk)."""
    handler = FallbackFileHandler(folder.log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)


def release_hook(config: ConfigProvider) -> Callable[[SeriesAttributes], bool]:
    """Complete a series at association release when its first rule says so.

    The assembler passes the series as routing sees it (first header, the
    association's AE titles, the images so far), so rules on ``calling_ae``,
    ``called_ae`` or image counts pick the same rule here as in the worker.
    """

    def hook(attributes: SeriesAttributes) -> bool:
        current = config()
        decision = route(
            attributes,
            current.rules,
            body_part_synonyms=current.body_part_synonyms,
        )
        return bool(decision.matched) and decision.matched[0].complete_on == "association_release"

    return hook


class NodeHealth:
    """Gathers :class:`NodeFacts` for ``/healthz`` and the heartbeat.

    Parameters
    ----------
    queue
        The job queue (failing destinations).
    workers
        This host's worker processes.
    holder
        The config holder (its file and last reload error); ``None`` without a file.
    config
        The config provider.
    """

    def __init__(
        self,
        queue: SqliteJobQueue,
        workers: WorkerPool,
        holder: ConfigHolder | None,
        config: ConfigProvider,
    ) -> None:
        self.queue, self.workers, self.holder, self.config = queue, workers, holder, config

    def problems(self) -> list[str]:
        """Why the node cannot do its job now (empty: healthy)."""
        config = self.config()
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


def heartbeat_writer(folder: DataFolder, info: Callable[[], dict[str, Any]]) -> Callable[[], None]:
    """``write_heartbeat`` that logs a failure (full disk) once and keeps going."""
    failing = {"now": False}

    def beat() -> None:
        try:
            write_heartbeat(folder.root, info())
        except OSError as err:
            if not failing["now"]:
                log.error(
                    "cannot write the heartbeat in %s (%s); `contourd status` will say "
                    "the node is down until it can",
                    folder.root,
                    err,
                )
            failing["now"] = True
            return
        if failing["now"]:
            log.info("heartbeat written again")
        failing["now"] = False

    return beat


def open_queue(config: ContourdConfig, reserve: SpaceReserve) -> SqliteJobQueue:
    """Open the job database; on a full disk give back the reserve and try again."""

    def connect() -> SqliteJobQueue:
        return SqliteJobQueue(
            config.data_dir,
            max_attempts=config.worker.max_attempts,
            database=config.open_database(),
        )

    try:
        return connect()
    except sqlite3.OperationalError as err:
        free_mb = shutil.disk_usage(config.data_dir).free / 2**20
        if not reserve.release():
            raise
        log.warning(
            "the job database could not be opened (%s, %.1f MiB free); retrying with the "
            "reserve given back",
            err,
            free_mb,
        )
        return connect()


class Service:
    """The node of one host in one role, built but not started.

    Building opens the database and runs the emergency purge (receiving
    roles), before anything else can need space. It changes no process-wide
    state (signals, log handlers): that is the caller's (``contourd serve``).

    Parameters
    ----------
    config
        The validated config (command-line overrides already applied).
    config_path
        Its file, watched for edits; ``None``: the embedded defaults, no reload.
    role
        ``both``, ``receive`` or ``work`` (see the module docstring).
    http_port
        The web server's port (default ``http.port``; 0: any free port).
    """

    def __init__(
        self,
        config: ContourdConfig,
        *,
        config_path: Path | None = None,
        role: str = "both",
        http_port: int | None = None,
    ) -> None:
        self.role = role
        self.receives = role in ("both", "receive")
        self.works = role in ("both", "work")
        self.config_path = config_path
        self.holder = ConfigHolder(config_path, config) if config_path is not None else None
        self.config: ConfigProvider = self.holder if self.holder is not None else provided(config)
        self.folder = DataFolder(config.data_dir)
        self.reserve = SpaceReserve(self.folder.root)
        self.queue = open_queue(config, self.reserve)
        self.retention = RetentionSchedule(
            Retention(
                self.queue,
                lambda: self.config().retention,
                keep_series=lambda: kept_series_uids(self.folder.root),
            )
        )
        if self.receives:  # the emergency purge runs before anything else can need space
            self.retention.tick()
        self.node = (
            ReceiveNode(config, self.on_complete, complete_on_release=release_hook(self.config))
            if self.receives
            else None
        )
        self._copied_generation = -1
        copied = self._copy_config()
        if config_path is not None and copied is None:
            log.warning("workers read %s until its copy can be written", config_path)
        self.workers = WorkerPool(
            config.worker.processes if self.works else 0,
            config_path,
            config_copy=self.folder.last_valid_config if config_path is not None else None,
            on_exit=self.release_worker,
        )
        self.dispatcher = Dispatcher(
            self.queue, lambda: self.config().destinations, lambda: self.config().dispatch
        )
        self.watcher = ConfigWatcher(self.holder) if self.holder is not None else None
        self.health = NodeHealth(self.queue, self.workers, self.holder, self.config)
        self.http: WebServer | None = None
        self._http_port = http_port if http_port is not None else config.http.port
        self._heartbeat = heartbeat_writer(self.folder, self._heartbeat_info)

    # -- the glue between the stages -------------------------------------------------
    def on_complete(self, completion: SeriesCompletion) -> None:
        """A series version completed: make its job (routed with the config in use)."""
        log_completion(completion)
        job_id = submit_completion(self.queue, completion, self.config().rules)
        log.info(
            "series %s version %d -> job %d", completion.series_uid, completion.version, job_id
        )

    def release_worker(self, name: str) -> None:
        """A worker process exited: release its leases so its job is taken up now."""
        jobs = self.queue.release_leases(
            [name, f"{name}-send"],
            f"worker {name} exited (seen by the supervisor); its lease is released",
        )
        if jobs:
            log.warning("worker %s died holding job(s) %s; released at once", name, jobs)
            self.dispatcher.wake()  # a send it held is taken up now, not at the next sweep

    def _copy_config(self) -> Path | None:
        """Write the workers' copy when the holder accepted a new config."""
        if self.holder is None or self.holder.generation == self._copied_generation:
            return None
        self._copied_generation = self.holder.generation
        return write_last_valid(self.holder, self.folder.root)

    def _heartbeat_info(self) -> dict[str, Any]:
        return {
            "port": self.node.port if self.node is not None else None,
            "http_port": self.http.port if self.http is not None else None,
            "worker_pids": self.workers.pids(),
            "problems": self.health.problems(),
        }

    # -- life cycle ----------------------------------------------------------------
    def start(self) -> None:
        """Start every stage of the role (SCP, workers, dispatcher, watcher, web)."""
        if self.node is not None:
            self.node.start()
        self.workers.start()
        if self.receives:
            self.dispatcher.start()
        if self.watcher is not None:
            self.watcher.start()
        config = self.config()
        if config.http.enabled and self.node is not None:  # the web face belongs to receivers
            web = WebContext(
                queue=self.queue,
                config=self.config,
                extra_checks=self.health.checks,
                collectors=[
                    FeedbackCollector(
                        self.folder.root, lambda: self.config().feedback.metrics_window_days
                    )
                ],
                stow=StowReceiver(
                    self.node.spool,
                    self.node.assembler,
                    called_ae=config.node.ae_title,
                    min_free_disk_mb=config.node.min_free_disk_mb,
                ),
            )
            self.http = WebServer(self.queue, config.http.host, self._http_port, context=web)
            self.http.start()
        log.info("role %s, database %s", self.role, self.queue.database.label)

    def tick(self) -> None:
        """Housekeeping, once a second: heartbeat, workers' config copy, retention, reserve."""
        self._copy_config()
        if not self.receives:
            return
        self._heartbeat()
        self.retention.tick()
        self.reserve.ensure(self.config().node.min_free_disk_mb)

    def run_until(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set, then :meth:`stop` (running jobs finish)."""
        try:
            if self.receives:
                self._heartbeat()
            while not stop.wait(TICK_S):
                self.tick()
        finally:
            self.stop()

    def stop(self) -> None:
        """No new associations; each worker finishes its job, the dispatcher its send."""
        log.info("stopping: no new associations; waiting for running jobs")
        if self.node is not None:
            self.node.stop()
        self.workers.stop(graceful=True)
        if self.receives:
            self.dispatcher.stop(wait=True)
        if self.watcher is not None:
            self.watcher.stop()
        if self.http is not None:
            self.http.stop()
        if self.node is not None:
            clear_heartbeat(self.folder.root)
        log.info("contourd stopped")

    def kill_workers(self) -> None:
        """Kill the worker processes now (a second stop signal); their jobs resume later."""
        self.workers.stop(graceful=False, timeout_s=5)
