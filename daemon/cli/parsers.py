"""The parts every subcommand's parser shares: its name, help, ``-c/--config`` and ``run``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any


def command_parser(
    subparsers: Any,
    name: str,
    *,
    summary: str,
    description: str,
    run: Callable[[argparse.Namespace], int] | None = None,
    config_dest: str = "config",
) -> argparse.ArgumentParser:
    """Add subcommand ``name`` with the ``-c/--config`` option; return its parser.

    Parameters
    ----------
    subparsers
        What ``ArgumentParser.add_subparsers`` returned.
    name
        The subcommand.
    summary
        The one line ``contourd --help`` lists.
    description
        The text of ``contourd NAME --help``.
    run
        ``run(args) -> exit code``; ``None`` when sub-actions set their own.
    config_dest
        The attribute the config path goes to.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=summary, description=description
    )
    parser.add_argument(
        "-c", "--config", dest=config_dest, type=Path, default=None, help="config YAML file"
    )
    if run is not None:
        parser.set_defaults(func=run)
    return parser
