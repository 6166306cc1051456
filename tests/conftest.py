"""Root of the test tree: its folder goes on ``sys.path``, so ``peer_tools`` imports.

It also runs ``tests/nnunet`` last and starts training its nnU-Net models in the
background as soon as the tests are collected (``nnunet_model_builds``).

Also the database fixtures: ``backend`` runs a test on SQLite (the data
folder's ``contourd.db``) and on PostgreSQL (a fresh database on a throwaway
server started once per session, see ``postgres_server``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nnunet_model_builds import BUILDS, SESSION_BUILDS
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


def _in_nnunet_folder(item: pytest.Item) -> bool:
    return Path(str(item.path)).parent.name == "nnunet"


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Run ``tests/nnunet`` last and start training its models now, in the background
    (``nnunet_model_builds``), so they train while the other tests run."""
    nnunet = [item for item in items if _in_nnunet_folder(item)]
    if not nnunet or importlib.util.find_spec("nnunetv2") is None:
        return
    items[:] = [item for item in items if not _in_nnunet_folder(item)] + nnunet
    if config.option.collectonly:
        return
    wanted = {
        name
        for name, build in BUILDS.items()
        if any(build.fixture in getattr(item, "fixturenames", ()) for item in nnunet)
    }
    SESSION_BUILDS.start(wanted)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    SESSION_BUILDS.stop()
