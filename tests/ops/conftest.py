"""Shared fixtures and helpers for the operations tests (queue, dispatch, node)."""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def wait_for(condition: Callable[[], object], timeout_s: float, message: str) -> object:
    """Poll ``condition`` until it returns something truthy or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s: {message}")
        time.sleep(0.05)


def free_port() -> int:
    """A TCP port on loopback that the OS says is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_tool(name: str, package: str) -> str:
    """Path of a Debian tool; skip (fail under CI=true) when it is missing."""
    path = shutil.which(name)
    if path is None:
        reason = f"needs {package}: apt-get install {package}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@dataclass
class FakeCompletion:
    """A SeriesCompletion-shaped record for queue tests that need no spool."""

    study_uid: str = "1.2.826.0.1.3680043.8.498.1"
    series_uid: str = "1.2.826.0.1.3680043.8.498.2"
    version: int = 1
    spool_dir: Path = Path("/nonexistent")
    instance_paths: list[Path] = field(default_factory=list)
    num_instances: int = 3
    calling_ae: str = "SCANNER"
    called_ae: str = "CONTOURD"
    modality: str = "CT"
    completed_at: float = 0.0
    reason: str = "quiet_period"


wait_for_fixture = pytest.fixture(name="wait_for")(lambda: wait_for)
