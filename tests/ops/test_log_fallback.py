"""The node's log file on a full disk: one notice, records on stderr, back when space returns."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from ops_fault_helpers import fill_disk, mount_tmpfs, unmount

from daemon.log_fallback import FallbackFileHandler


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
