"""Helpers for the fault tests: config edits, /healthz, a slow-releasing TPS, tmpfs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import StoreScp, require_tool, wait_for


def patch_config(path: Path, **sections: dict[str, Any]) -> Path:
    """Merge ``sections`` (``dispatch={...}``) into the YAML config at ``path``."""
    data = yaml.safe_load(path.read_text())
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(data))
    return path


def healthz(http_port: int) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of ``GET /healthz``."""
    url = f"http://127.0.0.1:{http_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (loopback)
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_for_problem(http_port: int, words: str, timeout_s: float = 60) -> list[str]:
    """Wait until /healthz answers 503 with a problem containing ``words``."""

    def found() -> list[str] | None:
        code, body = healthz(http_port)
        hits = [p for p in body.get("problems", []) if words in p]
        return body["problems"] if code == 503 and hits else None

    return wait_for(found, timeout_s, f"/healthz 503 naming {words!r}")  # type: ignore[return-value]


class SlowReleaseTps(StoreScp):
    """storescp that stores each file, answers, then sleeps ``sleep_s`` before
    reading the next request: a sender is left waiting in its release after
    the TPS has accepted the file."""

    def __init__(self, out_dir: Path, sleep_s: int) -> None:
        super().__init__(out_dir)
        self.sleep_s = sleep_s

    def start(self) -> SlowReleaseTps:
        import socket

        self.proc = subprocess.Popen(
            [
                self.binary,
                "--sleep-after",
                str(self.sleep_s),
                "-aet",
                self.ae_title,
                "-od",
                str(self.out_dir),
                "+uf",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def listening() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(listening, 10, f"storescp listening on port {self.port}")
        return self


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
