"""``contourd resend JOB [--to DEST]``: send a job's result again, same SOP Instance UIDs."""

from __future__ import annotations

import argparse
import getpass
from pathlib import Path
from typing import Any

from contourd.errors import DispatchError
from daemon.audit import record_change
from daemon.config import ContourdConfig, load_config
from daemon.dispatch import Dispatcher
from daemon.health_http import read_heartbeat
from daemon.job_queue import Job, SqliteJobQueue


def register(subparsers: Any) -> None:
    """Add the ``resend`` subcommand."""
    parser = subparsers.add_parser(
        "resend",
        help="send a job's result again (the same files, the same UIDs)",
        description=(
            "Queue a job's existing result files for sending again. The running node "
            "sends them (with retries); when no node runs, or with --now, this command "
            "sends them itself. The same SOP Instance UIDs are sent as the first time."
        ),
    )
    parser.add_argument("-c", "--config", type=Path, default=None, help="config YAML file")
    parser.add_argument("job_id", type=int, help="the job (see `contourd jobs`)")
    parser.add_argument(
        "--to",
        action="append",
        metavar="DEST",
        help="destination name from the config (repeatable; default: the job's own)",
    )
    parser.add_argument("--now", action="store_true", help="send from this process now")
    parser.set_defaults(func=run)


def resend_targets(config: ContourdConfig, job: Job, to: list[str] | None) -> list[str]:
    """The destinations to resend ``job`` to: ``to``, else the job's own; all must be known.

    Raises
    ------
    DispatchError
        When there is none, or one is not in the config's ``destinations:``.
    """
    targets = list(to or job.destinations)
    if not targets:
        raise DispatchError(
            f"job {job.id} has no destinations (rule {job.rule!r}); name one with --to "
            f"({', '.join(sorted(config.destinations)) or 'no destinations configured'})"
        )
    unknown = [t for t in targets if t not in config.destinations]
    if unknown:
        raise DispatchError(
            f"unknown destination(s) {', '.join(map(repr, unknown))}; expected one of "
            f"{', '.join(sorted(config.destinations)) or 'none (add a destinations: section)'}"
        )
    return targets


def run(args: argparse.Namespace) -> int:
    """Queue (and maybe send) the resend; 0 when queued or sent, 1 when sending failed."""
    config = load_config(args.config)
    queue = SqliteJobQueue(config.data_dir, database=config.open_database())
    job = queue.get(args.job_id)
    targets = resend_targets(config, job, args.to)
    queue.requeue_delivery(job.id, targets)
    record_change(
        config.data_dir,
        by=getpass.getuser(),
        action="job-resend",
        subject=f"job {job.id}",
        after={"destinations": targets},
        note="cli",
    )
    if read_heartbeat(config.data_dir) is not None and not args.now:
        print(f"job {job.id}: queued for {', '.join(targets)}; the running node sends it")
        return 0
    # One attempt from here; a failure stays pending for the node to retry.
    keep_pending = config.dispatch.model_copy(update={"max_attempts": 10**9})
    dispatcher = Dispatcher(
        queue, lambda: config.destinations, keep_pending, owner=f"resend-cli-{job.id}"
    )
    dispatcher.drain(job_id=job.id)
    result = queue.get(job.id)
    for d in queue.deliveries(job.id):
        if d.destination in targets:
            print(f"job {job.id} -> {d.destination}: {d.state.value} {d.last_error or ''}")
    return 0 if result.state.value == "sent" else 1
