"""``contourd retry JOB`` / ``contourd retry --all-failed --since 12h``: run failed jobs again.

A job that failed because its cause was outside the series (a model not
approved yet, a broken config, a destination down while the worker ran) is
put back to ``complete``; the running node's workers route and segment it
again with the rules and models in force now. Without a running node it
waits in the queue for the next ``contourd serve``.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

from contourd.errors import JobError
from daemon.audit import record_change
from daemon.config import load_config
from daemon.job_queue import SqliteJobQueue, parse_since


def register(subparsers: Any) -> None:
    """Add the ``retry`` subcommand."""
    parser = subparsers.add_parser(
        "retry",
        help="run a failed job again once its cause is fixed",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument("-c", "--config", type=Path, default=None, help="config YAML file")
    parser.add_argument("job_ids", nargs="*", type=int, metavar="JOB", help="job id(s)")
    parser.add_argument(
        "--all-failed", action="store_true", help="every failed job (with --since: recent ones)"
    )
    parser.add_argument(
        "--since",
        default=None,
        metavar="AGE|TIME",
        help="with --all-failed: failed at or after this (12h, 2d, 2026-12-03T08:00; UTC)",
    )
    parser.add_argument("--by", default=None, help="who asks (default: your login name)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Retry the jobs; 0 when every one was put back in the queue, 1 otherwise."""
    if bool(args.job_ids) == bool(args.all_failed):
        raise JobError("name the job(s) to retry, or give --all-failed (not both)")
    if args.since is not None and not args.all_failed:
        raise JobError("--since goes with --all-failed")
    config = load_config(args.config)
    queue = SqliteJobQueue(
        config.data_dir, max_attempts=config.worker.max_attempts, database=config.open_database()
    )
    by = args.by or getpass.getuser()
    ids = list(args.job_ids)
    if args.all_failed:
        since_s = parse_since(args.since) if args.since is not None else 0.0
        ids = [job.id for job in queue.retryable_since(since_s)]
        if not ids:
            print("no failed jobs to retry")
            return 0
    refused = 0
    for job_id in ids:
        try:
            queue.retry(job_id, by=by)
        except JobError as err:
            refused += 1
            print(f"job {job_id}: not retried: {err}", file=sys.stderr)
            continue
        record_change(
            config.data_dir, by=by, action="job-retry", subject=f"job {job_id}", note="cli"
        )
        print(f"job {job_id}: queued again; the workers route and segment it anew")
    return 1 if refused else 0
