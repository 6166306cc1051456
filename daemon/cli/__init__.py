"""The ``contourd`` command: one entry point, one module per subcommand.

Each module in this package exposes ``register(subparsers)``, which adds its
parser and sets ``func`` to a callable ``run(args) -> int`` (the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from contourd import __version__
from contourd.errors import cli_error_exit

# Subcommand modules, in the order `contourd --help` lists them. A module that
# is not written yet is skipped so the others keep working during development.
SUBCOMMAND_MODULES = [
    "serve",
    "check",
    "routes",
    "schema",
    "models",
    "segment",
    "jobs",
    "worker",
    "status",
    "resend",
    "retry",
    "users",
    "train",
    "evaluate",
    "feedback",
    "demo",
]

log = logging.getLogger(__name__)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Parser with every available subcommand registered, or just ``only``.

    Importing a subcommand's module can import torch and the rest of the
    pipeline, so ``contourd status`` imports only ``status``.
    """
    parser = argparse.ArgumentParser(
        prog="contourd",
        description=(
            "DICOM node that auto-contours CT/MR series with approved models. "
            "Contours are for clinician review; contourd is not a medical device."
        ),
    )
    parser.add_argument("--version", action="version", version=f"contourd {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES if only is None else [only]:
        try:
            module = importlib.import_module(f"daemon.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"daemon.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def configure_logging(verbose: bool) -> None:
    """Log to stderr; the daemon adds a file handler under the data folder."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pynetdicom logs identifiers (patient name/ID) at debug level; keep it quiet.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # apscheduler logs every timer run at INFO; only its problems matter here.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``contourd`` console script."""
    words = sys.argv[1:] if argv is None else argv
    command = next((w for w in words if not w.startswith("-")), None)
    parser = build_parser(command if command in SUBCOMMAND_MODULES else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    configure_logging(args.verbose)
    return cli_error_exit(f"contourd {args.command}", lambda: args.func(args), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
