"""``contourd check -c FILE``: validate a config file before the daemon uses it.

Checks the whole file (syntax, unknown keys, bad values, unknown destinations,
duplicate rule names; see :func:`daemon.config.load_config`) and then that
every model a rule names has an approved version in the data folder's
registry (``name``: the newest approved; ``name@1.2.0``: that version), with
its files matching the hashes recorded at approval. Models are resolved by
:func:`model_store.resolution.resolve_model`, as the worker resolves them.

Exit status: 0 valid; 1 invalid (every problem is printed as
``file:line:column: key.path: message``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from contourd.errors import ConfigError
from daemon.config import ContourdConfig, load_config
from daemon.config_diagnostics import ConfigIssue, parse_yaml
from model_store.registry import ModelRegistry
from model_store.resolution import RESOLUTION_ERRORS, resolve_model
from routing.rules import as_list

EXIT_VALID = 0
EXIT_INVALID = 1


def register(subparsers: Any) -> None:
    """Add the ``check`` subcommand."""
    parser = subparsers.add_parser(
        "check",
        help="validate a config file (keys, values, destinations, approved models)",
        description=(
            "Validate the config file: syntax, keys, values, destinations, and that each "
            "model a rule names has an approved version. Exit status 0 valid, 1 invalid."
        ),
    )
    parser.add_argument("-c", "--config", type=Path, default=None, help="config YAML file")
    parser.add_argument(
        "--no-models",
        action="store_true",
        help="skip the model registry check (e.g. on a machine without the data folder)",
    )
    parser.set_defaults(func=run)


def model_issues(config: ContourdConfig, config_path: Path | None) -> list[ConfigIssue]:
    """One issue per rule model that has no approved, intact version.

    The registry is that of ``config.data_dir``; a missing data folder is
    reported (and not created).
    """
    source = str(config_path) if config_path is not None else "<defaults>"
    marked = None
    if config_path is not None:
        marked = parse_yaml(Path(config_path).read_text(encoding="utf-8"), source)
    refs = [
        (index, position, ref, rule)
        for index, rule in enumerate(config.rules)
        for position, ref in enumerate(rule.model_refs)
    ]
    if not refs:
        return []
    if not config.data_dir.is_dir():
        return [
            ConfigIssue(
                source,
                None,
                ("node", "data_dir"),
                f"data folder {config.data_dir} does not exist, so no model is approved; "
                f"import and approve models there (`contourd models ...`) or fix node.data_dir",
            )
        ]
    issues: list[ConfigIssue] = []
    with ModelRegistry(config.data_dir, database=config.open_database()) as registry:
        for index, position, ref, rule in refs:
            path: tuple[str | int, ...] = ("rules", index, "model")
            if isinstance(rule.model, list):
                path = (*path, position)
            try:
                resolve_model(registry, ref, rule=rule.name)
            except RESOLUTION_ERRORS as err:
                mark = marked.mark_for(path, key=False) if marked is not None else None
                issues.append(ConfigIssue(source, mark, path, str(err)))
    return issues


def _summary(config: ContourdConfig, models_checked: bool) -> str:
    lines = [
        f"{len(config.rules)} rule{'s' if len(config.rules) != 1 else ''}, "
        f"{len(config.destinations)} destination{'s' if len(config.destinations) != 1 else ''}"
    ]
    for position, rule in enumerate(config.rules, start=1):
        flags = [f for f, on in (("shadow", rule.shadow), ("continue", rule.continue_)) if on]
        if not rule.enabled:
            flags.append("disabled")
        if rule.schedule is not None:
            flags.append(f"{rule.schedule.start}-{rule.schedule.end}")
        extra = f" [{', '.join(flags)}]" if flags else ""
        send = ", ".join(as_list(rule.send_to)) or "nowhere"
        models = ", ".join(str(r) for r in rule.model_refs)
        lines.append(f"  {position}. {rule.name}: {models} -> {send}{extra}")
    if not models_checked:
        lines.append("  (models not checked: --no-models)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``contourd check``."""
    source = str(args.config) if args.config is not None else "the embedded defaults"
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(f"INVALID: {err}", file=sys.stderr)
        return EXIT_INVALID
    issues = [] if args.no_models else model_issues(config, args.config)
    if issues:
        count = f"{len(issues)} problem{'s' if len(issues) != 1 else ''}"
        print(f"INVALID: config file {source} has {count}:", file=sys.stderr)
        for issue in issues:
            print(f"  {issue}", file=sys.stderr)
        return EXIT_INVALID
    print(f"OK: {source}: {_summary(config, not args.no_models)}")
    return EXIT_VALID
