"""Web users and their roles, in the data folder's database (table ``web_users``).

Roles are ordered; each includes the rights of those before it:

- ``viewer``: reads pages and the API;
- ``operator``: also resends and retries jobs, re-segments received series
  and stores images by STOW-RS;
- ``physicist``: also approves and retires models.

The table is part of the node's database (:mod:`contourd.schema`, migration
5), opened like every other table through :class:`contourd.database.Database`.
Passwords are kept only as argon2id hashes (argon2-cffi). Changes to users
are written to the registry's audit trail (``contourd models audit`` shows them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from contourd.database import Database
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
    """The ``web_users`` table of the node's database (SQLite or PostgreSQL).

    One connection behind its lock, so one store can be shared by the
    server's threads. On PostgreSQL every receiver of a cluster sees the same
    users.

    Parameters
    ----------
    database
        The node's database; a path to a ``contourd.db`` file is taken as
        SQLite in that file's folder (older callers and tests).
    """

    def __init__(self, database: Database | Path) -> None:
        if not isinstance(database, Database):
            database = Database(Path(database).parent)
        self.database = database
        self._conn = database.connect()  # the schema (and ``web_users``) is migrated here

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

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
        with self._conn.transaction() as conn:
            conn.execute(
                f"INSERT INTO {TABLE} (name, role, password_hash, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET role = excluded.role, "
                f"password_hash = COALESCE(excluded.password_hash, {TABLE}.password_hash), "
                "updated_at = excluded.updated_at",
                (who, role, hashed, now, now),
            )
        return User(who, role)  # type: ignore[arg-type]

    def remove(self, name: str) -> bool:
        """Delete a user; False when there was none."""
        with self._conn.transaction() as conn:
            return bool(conn.execute(f"DELETE FROM {TABLE} WHERE name = ?", (name,)).rowcount == 1)

    def get(self, name: str) -> User | None:
        """The user ``name``, or ``None``."""
        rows = self._conn.rows(f"SELECT name, role FROM {TABLE} WHERE name = ?", (name,))
        return User(rows[0]["name"], rows[0]["role"]) if rows else None

    def list_users(self) -> list[User]:
        """Every user, by name."""
        rows = self._conn.rows(f"SELECT name, role FROM {TABLE} ORDER BY name")
        return [User(r["name"], r["role"]) for r in rows]

    def authenticate(self, name: str, password: str) -> User:
        """The user when ``password`` is right; raises :class:`WebAuthError` otherwise."""
        rows = self._conn.rows(
            f"SELECT name, role, password_hash FROM {TABLE} WHERE name = ?", (name,)
        )
        refused = WebAuthError("unknown user or wrong password")
        if not rows or not rows[0]["password_hash"]:
            raise refused
        try:
            _hasher.verify(rows[0]["password_hash"], password)
        except (VerificationError, InvalidHashError) as err:
            raise refused from err
        return User(rows[0]["name"], rows[0]["role"])
