"""Run a ReceiveNode in its own process for the crash tests.

Usage: ``python node_runner.py CONFIG.yaml COMPLETIONS.jsonl``. Every handed-off
completion is appended to the JSONL file (flushed and fsynced before the
callback returns, so a line means "handed off"). Prints ``listening on port N``
once serving; stops on SIGTERM.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from daemon.config import load_config
from daemon.node import ReceiveNode
from daemon.series_assembler import SeriesCompletion


def main() -> int:
    config_path, completions_path = Path(sys.argv[1]), Path(sys.argv[2])
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    lock = threading.Lock()

    def record(completion: SeriesCompletion) -> None:
        line = json.dumps(
            {
                "series_uid": completion.series_uid,
                "version": completion.version,
                "reason": completion.reason,
                "incomplete": completion.incomplete,
                "num_instances": completion.num_instances,
                "sop_uids": sorted(p.stem for p in completion.instance_paths),
            }
        )
        with lock, open(completions_path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    node = ReceiveNode(load_config(config_path), record)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    node.start()
    print(f"listening on port {node.port}", flush=True)
    stop.wait()
    node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
