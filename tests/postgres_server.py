"""A throwaway PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` in a temp folder.

Uses the Debian server binaries (``/usr/lib/postgresql/<major>/bin``). As root
the server runs as the ``postgres`` user (PostgreSQL refuses root). Trust
authentication on 127.0.0.1 only; every test gets a fresh database
(:meth:`PostgresServer.new_database`). Without the binaries the tests skip
with the install command, except with ``CI=true`` where they fail.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from peer_tools import free_port, wait_for

INSTALL = "apt-get install postgresql"


def server_bindir() -> Path | None:
    """Folder holding ``initdb`` and ``pg_ctl`` (newest major version), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: p.split("/")[4])
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def require_postgres_bindir() -> Path:
    """The server binaries' folder; skip (fail under ``CI=true``) when absent."""
    bindir = server_bindir()
    if bindir is None or not (bindir / "initdb").exists():
        reason = f"needs a PostgreSQL server (initdb, pg_ctl): {INSTALL}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return bindir


class PostgresServer:
    """One PostgreSQL cluster on a free loopback port, removed by :meth:`stop`."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="contourd-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str) -> None:
        cmd = [str(a) for a in args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        """initdb and start; returns when it accepts connections."""
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(
            self.bindir / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8"
        )
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        options += " -c max_connections=200"
        self._run(
            self.bindir / "pg_ctl",
            "-D",
            self.data,
            "-o",
            options,
            "-l",
            self.root / "log",
            "-w",
            "start",
        )
        wait_for(self._accepts, 30, "PostgreSQL accepting connections")
        return self

    def _accepts(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.url("postgres"), connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def url(self, dbname: str) -> str:
        """Connection URL of database ``dbname``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        """Create an empty database; return its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        """Stop the server and delete its folder."""
        try:
            self._run(self.bindir / "pg_ctl", "-D", self.data, "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
