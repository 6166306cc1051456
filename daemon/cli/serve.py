"""``contourd serve``: run the DICOM node until SIGTERM or Ctrl-C.

This first version runs the receive side (storage SCP, spool, series
assembly). Completed series are logged and marked handed off; the job queue,
worker, dispatcher and HTTP endpoint are wired in here by the dispatch work.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from daemon.config import load_config
from daemon.node import ReceiveNode
from daemon.series_assembler import SeriesCompletion

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand."""
    parser = subparsers.add_parser(
        "serve",
        help="run the DICOM node (storage SCP, series assembly)",
        description="Run the DICOM node until SIGTERM or Ctrl-C.",
    )
    parser.add_argument("-c", "--config", type=Path, default=None, help="config YAML file")
    parser.add_argument(
        "--port", type=int, default=None, help="override node.port (0: any free port)"
    )
    parser.set_defaults(func=run)


def log_completion(completion: SeriesCompletion) -> None:
    """Default hand-off: log the completed series (no processing yet)."""
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


def run(args: argparse.Namespace) -> int:
    """Start the node and block until a stop signal; return the exit code."""
    config = load_config(args.config)
    if args.port is not None:
        config.node.port = args.port
    _add_file_log(Path(config.node.data_dir))
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per timer
    node = ReceiveNode(config, log_completion)
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d received; stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    node.start()
    # Tests and supervisors read this line to learn the port when --port 0.
    print(f"contourd listening on port {node.port}", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        node.stop()
    log.info("contourd stopped")
    return 0
