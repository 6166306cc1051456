"""Root of the test tree: its folder goes on ``sys.path``, so ``peer_tools`` imports.

Also the database fixtures: ``backend`` runs a test on SQLite (the data
folder's ``contourd.db``) and on PostgreSQL (a fresh database on a throwaway
server started once per session, see ``postgres_server``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from postgres_server import PostgresServer, require_postgres_bindir

from contourd.database import Database


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (skips without the binaries)."""
    server = PostgresServer(require_postgres_bindir()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """URL of a fresh, empty database on the test server."""
    return postgres_server.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str | None:
    """``None`` (SQLite in the data folder) or a fresh PostgreSQL URL."""
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def make_database(backend: str | None) -> Callable[[Path], Database]:
    """``make_database(data_dir)``: the test's database for that data folder."""
    return lambda data_dir: Database(Path(data_dir), backend)
