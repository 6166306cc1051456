"""The ``-m MODEL[@VERSION]`` option that ``segment`` and ``evaluate`` share.

Both name models the way a routing rule does (``name``: the newest approved
version; ``name@1.2.0``: that version) and resolve them with
:func:`model_store.resolution.resolve_model`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from routing.rules import ModelRef

MODEL_METAVAR = "MODEL[@VERSION]"


def model_ref(text: str) -> ModelRef:
    """``argparse`` type of ``-m``: ``"name"`` or ``"name@1.2.0"``."""
    try:
        return ModelRef.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def add_model_command(
    subparsers: Any, name: str, summary: str, doc: str | None, model_help: str, *, repeat: bool
) -> argparse.ArgumentParser:
    """Add subcommand ``name`` with ``-c/--config`` and ``-m/--model``.

    Parameters
    ----------
    summary
        One line for ``contourd --help``.
    doc
        The command module's docstring; its second paragraph is the description.
    model_help
        Help of ``-m``.
    repeat
        ``-m`` may be given several times (a list in run order); else once
        (a string, which the command may also read as a path).
    """
    parser = subparsers.add_parser(
        name, help=summary, description=doc.split("\n\n")[1] if doc else None
    )
    parser.add_argument("-c", "--config", type=Path, default=None, help="config YAML file")
    if repeat:
        parser.add_argument(
            "-m",
            "--model",
            action="append",
            type=model_ref,
            required=True,
            metavar=MODEL_METAVAR,
            help=model_help,
        )
    else:
        parser.add_argument("-m", "--model", required=True, metavar=MODEL_METAVAR, help=model_help)
    return parser
