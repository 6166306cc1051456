"""``contourd status``: node up, queue length, disk free, last error (``--json``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from daemon.config import load_config
from daemon.health_http import collect_status
from daemon.job_queue import SqliteJobQueue, utc_iso


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
    """Print the status; exit code 0 when the node is up, 3 when it is not."""
    config = load_config(args.config)
    status = collect_status(SqliteJobQueue(config.data_dir))
    status["disk_floor_mb"] = config.node.min_free_disk_mb
    if args.json:
        print(json.dumps(status, indent=2))
        return 0 if status["node_up"] else 3
    node = status["node"]
    if node:
        print(
            f"node:        up (pid {node.get('pid')}, DICOM port {node.get('port')}, "
            f"http port {node.get('http_port')})"
        )
    else:
        print("node:        not running (no fresh heartbeat in the data folder)")
    print(f"data folder: {status['data_dir']}")
    print(f"queue:       {status['queue_length']} job(s) not finished")
    busy = {k: v for k, v in status["jobs_by_state"].items() if v}
    print(f"jobs:        {', '.join(f'{k}={v}' for k, v in busy.items()) or 'none'}")
    print(
        f"received:    {status['instances_received']} instance(s); "
        f"{status['series_receiving']} series still arriving"
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
    last = status["last_error"]
    if last:
        print(f"last error:  job {last['job_id']} at {utc_iso(last['at'])}: {last['error']}")
    else:
        print("last error:  none")
    return 0 if status["node_up"] else 3
