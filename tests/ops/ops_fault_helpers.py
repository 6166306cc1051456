"""Helpers for the fault tests: C-ECHO, pushes that may be refused, a full tmpfs.

The node itself (config, /healthz, the TPS) comes from ``node_harness``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from peer_tools import require_tool


def echoscu_ok(port: int) -> bool:
    """True when DCMTK echoscu gets a C-ECHO answer from 127.0.0.1:``port``."""
    binary = require_tool("echoscu", "dcmtk")
    result = subprocess.run(
        [binary, "-aec", "CONTOURD", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode == 0


def storescu_result(port: int, files: list[Path]) -> subprocess.CompletedProcess[str]:
    """Push ``files`` with storescu (verbose, not halting on a refusal)."""
    binary = require_tool("storescu", "dcmtk")
    return subprocess.run(
        [binary, "-v", "-nh", "-aet", "SCANNER", "-aec", "CONTOURD", "127.0.0.1", str(port)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def mount_tmpfs(folder: Path, size_mb: int) -> None:
    """Mount a ``size_mb`` tmpfs on ``folder``; skip when mounting is not permitted."""
    folder.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    ci = os.environ.get("CI") == "true"
    if mount is None or os.geteuid() != 0:
        if ci:
            pytest.fail("CI runs as root and must be able to mount a tmpfs for the full-disk test")
        pytest.skip("the full-disk test mounts a small tmpfs for the data folder: run as root")
    result = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        if ci:
            pytest.fail(f"mount -t tmpfs failed in CI: {result.stderr}")
        pytest.skip(f"mounting a tmpfs is not permitted here: {result.stderr.strip()}")


def unmount(folder: Path) -> None:
    """Unmount ``folder`` (lazily, so a process still holding a file does not block it)."""
    subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def fill_disk(folder: Path) -> Path:
    """Write a filler file in ``folder`` until the file system is full."""
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as fh:
        for size in (1 << 20, 4096, 1):
            try:
                while fh.write(b"\0" * size):
                    pass
            except OSError:
                continue
    return filler
