"""Web users and their roles, in the data folder's database (table ``web_users``).

Roles are ordered; each includes the rights of those before it:

- ``viewer``: reads pages and the API;
- ``operator``: also resends and retries jobs, re-segments received series
  and stores images by STOW-RS;
- ``physicist``: also approves and retires models.

Passwords are kept only as argon2id hashes (argon2-cffi). Changes to users
are written to the registry's audit trail (``contourd models audit`` shows them).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from contourd.errors import WebAuthError

Role = Literal["viewer", "operator", "physicist"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "physicist")
TABLE = "web_users"

_hasher = PasswordHasher()


@dataclass(frozen=True)
class User:
    """A logged-in (or proxy-authenticated) user."""

    name: str
    role: Role

    def can(self, role: Role) -> bool:
        """Whether this user holds ``role`` or a higher one."""
        return ROLES.index(self.role) >= ROLES.index(role)


def require_role(user: User, role: Role, action: str) -> None:
    """Raise :class:`WebAuthError` unless ``user`` may do ``action`` (needs ``role``)."""
    if not user.can(role):
        raise WebAuthError(
            f"user {user.name!r} is a {user.role}; {action} needs the {role} role "
            f"(ask an administrator: contourd users add {user.name} --role {role})"
        )


class UserStore:
    """The ``web_users`` table of ``db_path``.

    A connection is opened per call, so one store can be shared by the
    server's threads.
    """

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        with self._connect() as conn:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (name TEXT PRIMARY KEY, role TEXT NOT NULL, "
                "password_hash TEXT, created_at REAL, updated_at REAL)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(str(self.db_path), timeout=30)

    def set_user(self, name: str, role: str, password: str | None) -> User:
        """Add or update a user; ``password`` None keeps the old one (or none: proxy only)."""
        who = name.strip()
        if not who or len(who) > 128 or any(c.isspace() for c in who):
            raise WebAuthError(f"user name {name!r}: expected 1-128 characters without spaces")
        if role not in ROLES:
            raise WebAuthError(f"role {role!r}: expected one of {', '.join(ROLES)}")
        if password is not None and len(password) < 8:
            raise WebAuthError("password: expected at least 8 characters; choose a longer one")
        now = time.time()
        hashed = _hasher.hash(password) if password is not None else None
        with self._connect() as conn:
            conn.execute(
                f"INSERT INTO {TABLE} (name, role, password_hash, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET role = excluded.role, "
                "password_hash = COALESCE(excluded.password_hash, password_hash), "
                "updated_at = excluded.updated_at",
                (who, role, hashed, now, now),
            )
        return User(who, role)  # type: ignore[arg-type]

    def remove(self, name: str) -> bool:
        """Delete a user; False when there was none."""
        with self._connect() as conn:
            return conn.execute(f"DELETE FROM {TABLE} WHERE name = ?", (name,)).rowcount == 1

    def get(self, name: str) -> User | None:
        """The user ``name``, or ``None``."""
        with self._connect() as conn:
            row = conn.execute(f"SELECT name, role FROM {TABLE} WHERE name = ?", (name,)).fetchone()
        return User(row[0], row[1]) if row else None

    def list_users(self) -> list[User]:
        """Every user, by name."""
        with self._connect() as conn:
            rows = conn.execute(f"SELECT name, role FROM {TABLE} ORDER BY name").fetchall()
        return [User(r[0], r[1]) for r in rows]

    def authenticate(self, name: str, password: str) -> User:
        """The user when ``password`` is right; raises :class:`WebAuthError` otherwise."""
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT name, role, password_hash FROM {TABLE} WHERE name = ?", (name,)
            ).fetchone()
        refused = WebAuthError("unknown user or wrong password")
        if row is None or not row[2]:
            raise refused
        try:
            _hasher.verify(row[2], password)
        except (VerificationError, InvalidHashError) as err:
            raise refused from err
        return User(row[0], row[1])
