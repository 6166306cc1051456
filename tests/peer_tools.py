"""Helpers every test area shares: waiting, free ports, Debian tools, ../shared data.

``tests/conftest.py`` puts this folder on ``sys.path`` (pytest's default
"prepend" import mode), so test modules and area helpers import it as
``peer_tools``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
#: ../shared/data next to the repository (absent in a user's checkout and in a clone elsewhere).
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def wait_for(condition: Callable[[], object], timeout_s: float, message: str) -> object:
    """Poll ``condition`` until it returns something truthy.

    Raises ``AssertionError`` after ``timeout_s`` seconds (tests that check
    that something does NOT happen expect exactly that).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {message}")
        time.sleep(0.02)


def free_port() -> int:
    """A TCP port on loopback that the OS says is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_tool(name: str, package: str) -> str:
    """Path of a Debian tool; skip when it is missing, fail under ``CI=true``."""
    path = shutil.which(name)
    if path is None:
        reason = f"needs {name}: apt-get install {package}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def require_shared(*parts: str) -> Path:
    """A path under ../shared/data; skip with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs ../shared/data/{'/'.join(parts)} (shared test data not present)")
    return path


def push_and_kill_after(port: int, files: Sequence[Path], acks: int) -> int:
    """Push ``files`` with DCMTK storescu and SIGKILL it after ``acks`` successes.

    The connection drops without an A-RELEASE or A-ABORT (what a scanner that
    crashes or loses its network does). Returns the acknowledgements storescu
    logged before it died (``acks`` or a few more: it keeps sending while the
    kill is on its way).
    """
    binary = require_tool("storescu", "dcmtk")
    push = subprocess.Popen(
        [binary, "-v", "-aet", "SCANNER", "-aec", "CONTOURD", "127.0.0.1", str(port)]
        + [str(p) for p in files],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, TCP_NODELAY="1"),
    )
    seen = {"acks": 0}
    killed = threading.Event()

    def read_and_kill() -> None:
        assert push.stderr is not None
        for line in push.stderr:
            if "Received Store Response (Success)" in line:
                seen["acks"] += 1
            if seen["acks"] >= acks and not killed.is_set():
                push.send_signal(signal.SIGKILL)
                killed.set()

    reader = threading.Thread(target=read_and_kill)
    reader.start()
    push.wait(timeout=120)
    reader.join(timeout=30)
    assert killed.is_set(), "storescu finished before it could be killed; send more files"
    assert push.returncode == -signal.SIGKILL
    return seen["acks"]
