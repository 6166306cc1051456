"""``contourd worker``: one worker process (started by ``contourd serve``).

Runs jobs from the data folder's queue until SIGTERM. Started by ``serve``,
it reads the supervisor's copy of the last valid config (``--config-copy``),
never the operator's file, which may hold a broken edit. The first SIGTERM (or
Ctrl-C) lets the running job finish, then exits; a second one exits at once
(the job's lease runs out and another worker takes it over).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
from pathlib import Path
from types import FrameType
from typing import Any

from daemon.cli.parsers import command_parser
from daemon.config import ContourdConfig, load_config
from daemon.config_watcher import ConfigHolder
from daemon.job_queue import SqliteJobQueue
from daemon.worker import Worker, default_worker_id

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``worker`` subcommand."""
    parser = command_parser(
        subparsers,
        "worker",
        summary="run one worker process (normally started by `contourd serve`)",
        description="Claim jobs from the queue, run the approved models, write results.",
        run=run,
    )
    parser.add_argument(
        "--config-copy",
        type=Path,
        default=None,
        help="the supervisor's copy of the last valid config (relative paths in it are "
        "resolved against the folder of -c)",
    )
    parser.add_argument("--id", default=None, help="worker id (default worker-HOST-PID)")
    parser.add_argument(
        "--once", action="store_true", help="exit when no job is left instead of waiting"
    )


def run(args: argparse.Namespace) -> int:
    """Process jobs until stopped; return 0."""
    if args.config is not None:
        copy = args.config_copy
        if copy is not None and Path(copy).is_file():
            holder = ConfigHolder(
                copy, loader=functools.partial(load_config, relative_to=Path(args.config).parent)
            )
        else:
            holder = ConfigHolder(args.config)

        def current() -> ContourdConfig:
            holder.reload_if_changed()
            return holder.current

    else:
        static = load_config(None)

        def current() -> ContourdConfig:
            return static

    config = current()
    queue = SqliteJobQueue(
        config.data_dir,
        max_attempts=config.worker.max_attempts,
        database=config.open_database(),
    )
    worker = Worker(current, queue, worker_id=args.id or default_worker_id())
    signals = {"count": 0}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        signals["count"] += 1
        if signals["count"] == 1 and worker.current_job is not None:
            log.info(
                "worker %s: finishing job %s, then exiting", worker.worker_id, worker.current_job
            )
            worker.stop_requested.set()
            return
        if signals["count"] == 1:
            worker.stop_requested.set()
            return
        log.warning("worker %s: second signal; exiting now", worker.worker_id)
        os._exit(130)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("worker %s started (pid %d, data %s)", worker.worker_id, os.getpid(), config.data_dir)
    processed = worker.run(once=args.once)
    log.info("worker %s stopped after %d job(s)", worker.worker_id, processed)
    return 0
