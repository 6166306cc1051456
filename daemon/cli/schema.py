"""``contourd schema``: print the JSON Schema of the config file, for editors.

Point a YAML language server at it (e.g. a ``# yaml-language-server:
$schema=contourd.schema.json`` first line) to get key completion and checking
while editing the config.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from daemon.config import ContourdConfig


def register(subparsers: Any) -> None:
    """Add the ``schema`` subcommand."""
    parser = subparsers.add_parser(
        "schema",
        help="print the JSON Schema of the config file",
        description="Print the JSON Schema (draft 2020-12) of the config file for editors.",
    )
    parser.add_argument(
        "-c", "--config", type=Path, default=None, help="accepted for symmetry; not used"
    )
    parser.add_argument("-o", "--output", type=Path, default=None, help="write to this file")
    parser.set_defaults(func=run)


def config_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`daemon.config.ContourdConfig` (keys as written in YAML)."""
    schema = ContourdConfig.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "contourd configuration"
    return schema


def run(args: argparse.Namespace) -> int:
    """Print or write the schema."""
    text = json.dumps(config_schema(), indent=2) + "\n"
    if args.output is not None:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0
