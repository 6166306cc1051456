"""``contourd status``: node up, health, queue, workers, disk free, last error (``--json``).

The health problems are the running node's own (it writes them into its
heartbeat): the same sentences ``/healthz`` answers 503 with; those about
failing destinations are read from the database at the moment of asking. Workers are read
from the database, so on a shared PostgreSQL every host's workers show (host,
pid, current job, age of the last heartbeat), and the queue is shown per
priority.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml

from contourd.errors import ConfigError
from daemon.config import ContourdConfig, NodeConfig, load_config
from daemon.health_http import collect_status
from daemon.job_queue import SqliteJobQueue, utc_iso
from daemon.node_health import DESTINATION_PROBLEM_PREFIX, destination_problems


def register(subparsers: Any) -> None:
    """Add the ``status`` subcommand."""
    parser = subparsers.add_parser(
        "status",
        help="node up?, queue length, free disk, last error",
        description="Show whether the node runs, the queue, free disk and the last error.",
    )
    parser.add_argument("-c", "--config", type=Path, default=None, help="config YAML file")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the status; exit code 0 when the node is up and healthy, 3 when it is
    not running, 4 when it runs but reports problems."""
    config, config_error = _load_leniently(args.config)
    queue = SqliteJobQueue(config.data_dir, database=config.open_database())
    status = collect_status(queue)
    if status["node"]:
        status["node"]["problems"] = _with_fresh_destination_problems(
            status["node"].get("problems") or [], queue, config
        )
    status["disk_floor_mb"] = config.node.min_free_disk_mb
    status["config_error"] = config_error
    if args.json:
        print(json.dumps(status, indent=2))
        return _exit_code(status)
    node = status["node"]
    if node:
        print(
            f"node:        up (pid {node.get('pid')}, DICOM port {node.get('port')}, "
            f"http port {node.get('http_port')})"
        )
    else:
        print("node:        not running (no fresh heartbeat in the data folder)")
    if config_error is not None:
        print(
            "config:      INVALID (a running node keeps its last valid config; "
            f"`contourd check -c {args.config}` lists the errors)"
        )
    print(f"data folder: {status['data_dir']}")
    print(f"queue:       {status['queue_length']} job(s) not finished")
    busy = {k: v for k, v in status["jobs_by_state"].items() if v}
    print(f"jobs:        {', '.join(f'{k}={v}' for k, v in busy.items()) or 'none'}")
    print(
        f"received:    {status['instances_received']} instance(s); "
        f"{status['series_receiving']} series still arriving"
    )
    waiting = status["waiting_by_priority"]
    print(
        "waiting:     "
        + (", ".join(f"priority {p}: {n}" for p, n in waiting.items()) or "none")
        + f"   (database {status['database']})"
    )
    print(f"workers:     {len(status['workers'])}")
    for w in status["workers"]:
        job = f"job {w['current_job']}" if w["current_job"] is not None else "idle"
        print(
            f"  {w['worker_id']}  host {w['host']}  pid {w['pid']}  {job}  "
            f"heartbeat {w['heartbeat_age_s']:.0f} s ago"
        )
    for held in status["series_held"][:5]:
        print(f"held:        {held}; waiting for the rest (series.incomplete_wait_s)")
    ignored = status["instances_ignored"]
    print(
        f"ignored:     {sum(ignored.values())} instance(s) of classes not contoured here"
        + (f" ({', '.join(f'{k} {v}' for k, v in sorted(ignored.items()))})" if ignored else "")
    )
    print(
        f"disk free:   {status['disk_free_mb']:.0f} MiB of {status['disk_total_mb']:.0f} MiB "
        f"(floor {config.node.min_free_disk_mb} MiB)"
    )
    problems = (node or {}).get("problems") or []
    if problems:
        print(f"health:      NOT OK, {len(problems)} problem(s):")
        for problem in problems:
            print(f"  - {problem}")
    elif node:
        print("health:      ok")
    last = status["last_error"]
    if last:
        print(f"last error:  job {last['job_id']} at {utc_iso(last['at'])}: {last['error']}")
    else:
        print("last error:  none")
    return _exit_code(status)


def _load_leniently(path: Path | None) -> tuple[ContourdConfig, str | None]:
    """The config, or for a broken file its data folder only and the error.

    A broken edit must not hide the running node's status: the data folder
    is then read from the file's ``node: data_dir:`` as far as it parses.
    """
    try:
        return load_config(path), None
    except ConfigError as err:
        if path is None:
            raise
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
            data_dir = Path(raw["node"]["data_dir"])
        except (OSError, yaml.YAMLError, TypeError, KeyError):
            raise err from None
        if not data_dir.is_absolute():
            data_dir = (Path(path).parent / data_dir).resolve()
        return ContourdConfig(node=NodeConfig(data_dir=data_dir)), str(err)


def _with_fresh_destination_problems(
    problems: list[str], queue: SqliteJobQueue, config: ContourdConfig
) -> list[str]:
    """The heartbeat's problems with the destination ones read from the database now.

    The node writes its heartbeat every few seconds, so a destination that
    crossed ``http.dispatch_failing_unhealthy_s`` a moment ago is already on
    ``/healthz`` but not yet in the heartbeat; the database has it at once.
    """
    others = [p for p in problems if not p.startswith(DESTINATION_PROBLEM_PREFIX)]
    fresh = destination_problems(
        queue.failing_destinations(), config.http.dispatch_failing_unhealthy_s, time.time()
    )
    return others + fresh


def _exit_code(status: dict[str, Any]) -> int:
    if not status["node_up"]:
        return 3
    return 4 if (status["node"] or {}).get("problems") else 0
