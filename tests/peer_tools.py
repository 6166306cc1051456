"""Helpers every test area shares: waiting, free ports, Debian tools, ../shared data.

``tests/conftest.py`` puts this folder on ``sys.path`` (pytest's default
"prepend" import mode), so test modules and area helpers import it as
``peer_tools``.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable
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
