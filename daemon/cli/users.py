"""``contourd users``: who may use the web pages and the API, with which role.

``contourd users add NAME --role viewer|operator|physicist`` asks for the
password (or reads one line from standard input with ``--password-stdin``;
``--no-password`` for users a reverse proxy authenticates). Every change is
written to the audit trail (``contourd models audit``).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

from contourd.database import Database
from contourd.errors import WebAuthError
from daemon.audit import record_change
from daemon.config import load_config
from daemon.web.users import ROLES, UserStore


def register(subparsers: Any) -> None:
    """Add the ``users`` subcommand."""
    parser = subparsers.add_parser(
        "users",
        help="web and API users and their roles (viewer, operator, physicist)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    actions = parser.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", type=Path, default=None, help="config YAML file")
    common.add_argument("--by", default=None, help="who makes the change (default: login name)")
    p = actions.add_parser("add", parents=[common], help="add a user or change its role/password")
    p.add_argument("name")
    p.add_argument("--role", required=True, choices=ROLES)
    how = p.add_mutually_exclusive_group()
    how.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    how.add_argument(
        "--no-password", action="store_true", help="keep the password (proxy-authenticated user)"
    )
    p.set_defaults(func=run_add)
    p = actions.add_parser("remove", parents=[common], help="remove a user")
    p.add_argument("name")
    p.set_defaults(func=run_remove)
    p = actions.add_parser("list", parents=[common], help="list users and roles")
    p.set_defaults(func=run_list)


def _store(args: argparse.Namespace) -> tuple[UserStore, Database]:
    database = load_config(args.config).open_database()
    return UserStore(database), database


def _audit(
    database: Database, args: argparse.Namespace, action: str, after: dict[str, Any]
) -> None:
    record_change(
        database.data_dir,
        database=database,
        by=args.by or getpass.getuser(),
        action=action,
        subject=f"user {args.name}",
        after=after,
        note="cli",
    )


def run_add(args: argparse.Namespace) -> int:
    """Add or update the user."""
    store, database = _store(args)
    password: str | None = None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif not args.no_password:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise WebAuthError("the two passwords differ; nothing changed")
    user = store.set_user(args.name, args.role, password)
    _audit(
        database, args, "user-set", {"role": user.role, "password_changed": password is not None}
    )
    print(f"user {user.name}: {user.role}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    """Remove the user; 1 when there was none."""
    store, database = _store(args)
    if not store.remove(args.name):
        print(f"no user {args.name!r}", file=sys.stderr)
        return 1
    _audit(database, args, "user-remove", {})
    print(f"user {args.name} removed")
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Print users and roles."""
    store, _ = _store(args)
    for user in store.list_users():
        print(f"{user.name:<24} {user.role}")
    return 0
