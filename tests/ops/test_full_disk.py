"""Parts of the node on a full disk (a small tmpfs): the log file, the heartbeat, a worker."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest
from conftest import body_rule_config, submit_phantom, wait_for
from node_harness import approve_body_model
from ops_fault_helpers import fill_disk, mount_tmpfs, unmount

from daemon.health_http import read_heartbeat, write_heartbeat
from daemon.job_queue import JobState, SqliteJobQueue
from daemon.log_fallback import FallbackFileHandler
from daemon.worker import Worker


def test_log_file_on_a_full_disk_falls_back_to_stderr_once_and_returns(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "logs"
    mount_tmpfs(folder, 1)
    try:
        handler = FallbackFileHandler(folder / "contourd.log", retry_s=0.0)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        logger = logging.getLogger("test_log_fallback")
        logger.propagate = False
        logger.addHandler(handler)
        try:
            logger.warning("before the disk filled")
            filler = fill_disk(folder)
            for i in range(300):
                logger.warning("line %d while the disk is full %s", i, "x" * 200)
            err = capfd.readouterr().err
            assert err.count("cannot write the log file") == 1  # one notice, no storm
            assert "Logging error" not in err and "Traceback" not in err
            assert "line 299 while the disk is full" in err  # nothing is lost
            filler.unlink()
            logger.warning("after space returned")
            err = capfd.readouterr().err
            assert "logging to" in err and "again" in err
        finally:
            logger.removeHandler(handler)
            handler.close()
        text = (folder / "contourd.log").read_text()
        assert "before the disk filled" in text
        assert "after space returned" in text
    finally:
        unmount(folder)


def test_heartbeat_is_still_written_on_a_full_disk(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    mount_tmpfs(folder, 1)
    try:
        write_heartbeat(folder, {"port": 1, "problems": []})
        fill_disk(folder)
        with pytest.raises(OSError):
            (folder / "probe").write_bytes(b"x" * 8192)  # the disk is really full
        write_heartbeat(folder, {"port": 2, "problems": ["free disk 0 MiB ..."]})
        beat = read_heartbeat(folder)
        assert beat is not None and beat["port"] == 2 and beat["pid"] == os.getpid()
        assert beat["problems"] == ["free disk 0 MiB ..."]
    finally:
        unmount(folder)


def test_worker_on_a_full_disk_waits_and_runs_the_job_once_space_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    data = tmp_path / "data"
    mount_tmpfs(data, 24)
    try:
        config = body_rule_config(data, {"share": {"folder": str(tmp_path / "share")}})
        config.node.min_free_disk_mb = 0  # no floor: the worker meets ENOSPC itself
        approve_body_model(data)
        queue = SqliteJobQueue(data)
        job_id, _headers = submit_phantom(tmp_path, queue)
        filler = fill_disk(data)
        worker = Worker(lambda: config, queue, worker_id="w-full")
        thread = threading.Thread(target=worker.run, name="worker")
        thread.start()
        try:

            def said_it() -> bool:
                return any("cannot claim a job" in r.getMessage() for r in caplog.records)

            wait_for(said_it, 60, "the worker saying it cannot claim a job")
            assert thread.is_alive()  # a full disk does not end the worker
            assert queue.get(job_id).state == JobState.COMPLETE
            filler.unlink()
            wait_for(lambda: queue.get(job_id).state == JobState.SENT, 120, "job sent")
        finally:
            worker.stop_requested.set()
            thread.join(timeout=60)
        notices = [r for r in caplog.records if "cannot claim a job" in r.getMessage()]
        assert len(notices) == 1  # said once, not at every poll
        queue.close()
    finally:
        unmount(data)
