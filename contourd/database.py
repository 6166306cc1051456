"""The one way contourd opens its database: SQLite in the data folder, or PostgreSQL.

Without a ``database`` setting the database is ``<data_dir>/contourd.db``
(SQLite, WAL mode, ``synchronous=NORMAL``, a busy timeout), exactly as a
single machine has always used it. With ``database: postgresql://...`` every
receiver and worker shares one PostgreSQL database, and the data folder (on a
share every host mounts) holds only files.

Every module that keeps rows (``daemon.job_queue``, ``daemon.instance_db``,
``model_store.registry``) opens its connection through :class:`Database`, so
the connection settings live here once. Queries are plain SQL that both
dialects accept, written with ``?`` placeholders; :meth:`DbConnection.execute`
translates them for psycopg. The schema itself is SQLAlchemy Core
(:mod:`contourd.schema`), migrated on open (:func:`contourd.schema.migrate`).

This module lives in ``contourd/`` because ``daemon`` and ``model_store`` both
use it and ``model_store`` must not import ``daemon``.
"""

from __future__ import annotations

import re
import select
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from contourd.data_folder import DB_FILENAME, DataFolder
from contourd.errors import DatabaseError

__all__ = ["DB_FILENAME", "Database", "DbConnection", "JobListener", "connect_sqlite"]

JOBS_CHANNEL = "contourd_jobs"
"""PostgreSQL ``NOTIFY`` channel: a job became claimable."""

SQLITE = "sqlite"
POSTGRESQL = "postgresql"


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for logs and messages)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def store_path(path: Path | str, data_dir: Path) -> str:
    """How a file path is kept in the database: ``./<relative>`` inside ``data_dir``.

    Hosts that mount the shared data folder at different places then read the
    same rows. A path outside the data folder is kept as given. The ``./``
    marks "relative to the data folder", so rows written before (plain paths)
    read back as they were.
    """
    p = Path(path)
    try:
        return "./" + p.absolute().relative_to(Path(data_dir).absolute()).as_posix()
    except ValueError:
        return str(p)


def load_path(text: str, data_dir: Path) -> Path:
    """The inverse of :func:`store_path` for this host's ``data_dir``."""
    if text.startswith("./"):
        return Path(data_dir) / text[2:]
    return Path(text)


def connect_sqlite(path: Path, busy_timeout_s: float = 30.0) -> sqlite3.Connection:
    """Open a SQLite file the one way contourd does: WAL, ``synchronous=NORMAL``, busy timeout.

    Autocommit (``isolation_level=None``: transactions are explicit) and
    usable from any thread (the owner serialises use with a lock). Every
    SQLite connection to the data folder's database is opened here, by
    :class:`Database` and by the SQLite-only feedback tables.

    Parameters
    ----------
    path
        The database file (its folder is created when missing).
    busy_timeout_s
        How long a write waits for another process's lock before failing, s.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        str(path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
    return conn


def integrity_errors() -> tuple[type[Exception], ...]:
    """The exceptions both drivers raise for a violated key (to catch a lost race)."""
    import psycopg

    return (sqlite3.IntegrityError, psycopg.IntegrityError)


class DbConnection:
    """One DB-API connection with ``?`` placeholders on both dialects.

    Not thread-safe by itself: the owner holds :attr:`lock` around each use
    (the queue, instance table and registry each keep one connection).
    """

    def __init__(self, raw: Any, dialect: str) -> None:
        self.raw = raw
        self.dialect = dialect
        self.lock = threading.RLock()

    @property
    def postgresql(self) -> bool:
        """True on PostgreSQL."""
        return self.dialect == POSTGRESQL

    def sql(self, text: str) -> str:
        """``text`` with ``?`` placeholders in the driver's style."""
        if self.dialect == POSTGRESQL:
            return text.replace("%", "%%").replace("?", "%s")
        return text

    def execute(self, text: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; returns the driver's cursor."""
        if self.dialect == POSTGRESQL:
            return self.raw.execute(self.sql(text), tuple(params) or None)
        return self.raw.execute(text, tuple(params))

    def rows(self, text: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Every row of a query as a dict keyed by column name."""
        with self.lock:
            cursor = self.execute(text, params)
            names = [c[0] for c in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    @property
    def for_update(self) -> str:
        """`` FOR UPDATE`` on PostgreSQL (row lock in a write transaction), else empty.

        SQLite needs none: ``BEGIN IMMEDIATE`` already serialises writers.
        """
        return " FOR UPDATE" if self.dialect == POSTGRESQL else ""

    def skip_locked(self, of: str | None = None) -> str:
        """`` FOR UPDATE [OF of] SKIP LOCKED`` on PostgreSQL, else empty."""
        if self.dialect != POSTGRESQL:
            return ""
        return f" FOR UPDATE{' OF ' + of if of else ''} SKIP LOCKED"

    @contextmanager
    def transaction(self) -> Iterator[DbConnection]:
        """One write transaction under :attr:`lock`, committed unless the body raises.

        SQLite: ``BEGIN IMMEDIATE`` (writers queue on the file lock).
        PostgreSQL: ``BEGIN`` (read committed; rows are locked with
        :attr:`for_update` / :meth:`skip_locked` where it matters).
        """
        with self.lock:
            self.raw.execute("BEGIN IMMEDIATE" if self.dialect == SQLITE else "BEGIN")
            try:
                yield self
            except BaseException:
                self.raw.execute("ROLLBACK")
                raise
            self.raw.execute("COMMIT")

    def notify(self, channel: str = JOBS_CHANNEL) -> None:
        """``NOTIFY channel`` on PostgreSQL (sent at commit); nothing on SQLite."""
        if self.dialect == POSTGRESQL:
            self.raw.execute(f"NOTIFY {channel}")

    def close(self) -> None:
        """Close the connection."""
        with self.lock:
            self.raw.close()


class Database:
    """Where the rows live: the data folder's SQLite file or a PostgreSQL URL.

    Parameters
    ----------
    data_dir
        The node's data folder (files; and ``contourd.db`` without ``url``).
    url
        ``postgresql://user:password@host:port/dbname`` (or ``postgresql+psycopg://``);
        ``None`` means SQLite in the data folder.
    busy_timeout_s
        How long a write waits for another process's lock before failing.
    """

    def __init__(
        self, data_dir: Path, url: str | None = None, *, busy_timeout_s: float = 30.0
    ) -> None:
        self.data_dir = Path(data_dir)
        self.folder = DataFolder(self.data_dir)
        self.busy_timeout_s = busy_timeout_s
        self.url = url
        if url is None:
            self.dialect = SQLITE
        elif url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
            self.dialect = POSTGRESQL
            self.url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        else:
            raise DatabaseError(
                f"database {redact_url(url)!r} is not supported; use "
                "postgresql://USER:PASSWORD@HOST:PORT/DBNAME, or leave `database` out "
                "for SQLite in the data folder"
            )
        self._migrated = False

    @property
    def sqlite_path(self) -> Path:
        """The SQLite file (only meaningful when :attr:`dialect` is ``sqlite``)."""
        return self.folder.db_file

    @property
    def label(self) -> str:
        """Where the database is, for messages (no password)."""
        if self.dialect == SQLITE:
            return str(self.sqlite_path)
        return redact_url(self.url or "")

    def _connect_raw(self, *, autocommit: bool = True) -> Any:
        if self.dialect == SQLITE:
            return connect_sqlite(self.sqlite_path, self.busy_timeout_s)
        import psycopg

        try:
            pg = psycopg.connect(self.url or "", autocommit=autocommit, connect_timeout=10)
        except psycopg.Error as err:
            raise DatabaseError(
                f"cannot connect to database {self.label}: {err}. Check the `database` "
                "setting and that the PostgreSQL server is running and reachable"
            ) from err
        pg.execute(f"SET lock_timeout = '{int(self.busy_timeout_s * 1000)}ms'")
        return pg

    def connect(self) -> DbConnection:
        """A new connection, with the schema migrated to this version of contourd.

        Raises
        ------
        DatabaseError
            Unreachable server, or a schema newer than this contourd knows.
        """
        conn = DbConnection(self._connect_raw(), self.dialect)
        if not self._migrated:
            from contourd.schema import migrate

            try:
                migrate(conn, self.label)
            except BaseException:
                conn.close()
                raise
            self._migrated = True
        return conn

    def listener(self, channel: str = JOBS_CHANNEL) -> JobListener:
        """A :class:`JobListener` on ``channel`` (no-op on SQLite)."""
        return JobListener(self, channel)


class JobListener:
    """Waits for ``NOTIFY`` on PostgreSQL; on SQLite simply waits (polling).

    Parameters
    ----------
    database
        The database to listen on.
    channel
        The channel name.
    """

    def __init__(self, database: Database, channel: str = JOBS_CHANNEL) -> None:
        self.database = database
        self.channel = channel
        self._conn: Any = None
        if database.dialect == POSTGRESQL:
            self._conn = database._connect_raw(autocommit=True)
            self._conn.execute(f"LISTEN {channel}")

    def wait(self, timeout_s: float, stop: threading.Event) -> bool:
        """Block up to ``timeout_s`` s until a notification (True) or ``stop`` is set.

        Wakes at least every 0.5 s to look at ``stop``. On SQLite it only waits
        on ``stop`` and returns False (the caller polls).
        """
        if self._conn is None:
            stop.wait(timeout_s)
            return False
        import time

        deadline = time.monotonic() + timeout_s
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            pgconn = self._conn.pgconn
            ready, _, _ = select.select([pgconn.socket], [], [], min(left, 0.5))
            if ready:
                pgconn.consume_input()
                got = False
                while pgconn.notifies() is not None:
                    got = True
                if got:
                    return True
        return False

    def close(self) -> None:
        """Stop listening."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
