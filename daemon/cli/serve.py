"""``contourd serve``: the whole node, until SIGTERM or Ctrl-C.

This command only reads its arguments, builds a :class:`daemon.service.Service`
for the role, starts it, prints where it listens and waits for a stop signal;
the stages and their wiring (receive node, worker processes, dispatcher,
retention, web server, config watcher, heartbeat) are described in
:mod:`daemon.service`.

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
``work`` runs only the worker processes (a GPU server). Receivers and workers
of one cluster share the ``database`` (PostgreSQL) and the data folder (a
network share), see docs/operations.md.

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
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from contourd.data_folder import DataFolder
from daemon.cli.parsers import command_parser
from daemon.config import load_config
from daemon.service import ROLES, Service, add_file_log

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand."""
    parser = command_parser(
        subparsers,
        "serve",
        summary="run the DICOM node (receive, route, segment, send)",
        description="Run the DICOM node until SIGTERM or Ctrl-C.",
        run=run,
    )
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


def run(args: argparse.Namespace) -> int:
    """Start the node and block until a stop signal; return the exit code."""
    config_path = Path(args.config).resolve() if args.config is not None else None
    config = load_config(config_path)
    if args.port is not None:
        config.node.port = args.port
    if args.workers is not None:
        config.worker.processes = args.workers
    add_file_log(DataFolder(config.data_dir))
    service = Service(config, config_path=config_path, role=args.role, http_port=args.http_port)
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
        service.kill_workers()
        os._exit(130)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service.start()
    _print_banner(service)
    service.run_until(stop)
    return 0


def _print_banner(service: Service) -> None:
    """Say where the node listens (tests and supervisors read the port lines)."""
    config = service.config()
    data_dir = service.folder.root.resolve()
    node, http = service.node, service.http
    if node is None:
        print(
            f"contourd: worker host, {service.workers.count} worker process(es), data folder "
            f"{data_dir}, database {service.queue.database.label}",
            flush=True,
        )
        return
    print(f"contourd listening on port {node.port}", flush=True)
    host = config.node.host if config.node.host not in ("0.0.0.0", "::", "") else "THIS_HOST"
    config_path = service.config_path
    print(
        f"contourd: AE title {config.node.ae_title}, port {node.port}, data folder "
        f"{data_dir}{' (embedded defaults)' if config_path is None else ''}\n"
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
