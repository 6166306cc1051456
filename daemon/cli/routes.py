"""``contourd routes test -c FILE PATH...``: which rule would take these series, and why.

Reads DICOM headers (no pixels) from files and folders, groups them by Series
Instance UID and routes each series with the config's rules, printing for
every rule the outcome: matched, or the first condition that failed with the
value the series has. Nothing is sent and no model runs.

Exit status: 0 when every series matched some rule, 1 when at least one did
not (or no DICOM series was found), 2 on a usage or config error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pydicom
import pydicom.config
from pydicom.errors import InvalidDicomError

from contourd.errors import ConfigError
from daemon.cli.parsers import command_parser
from daemon.config import ContourdConfig, load_config
from routing.engine import RouteDecision, route
from routing.series_attributes import SeriesAttributes, frames_in

EXIT_ALL_ROUTED = 0
EXIT_SOME_NOT_ROUTED = 1
EXIT_USAGE = 2


def register(subparsers: Any) -> None:
    """Add the ``routes`` subcommand (with its ``test`` action)."""
    parser = command_parser(
        subparsers,
        "routes",
        summary="try the routing rules on DICOM files",
        description="Work with the routing rules of a config file.",
        config_dest="routes_config",
    )
    actions = parser.add_subparsers(dest="routes_action", metavar="ACTION")
    test = actions.add_parser(
        "test",
        help="show which rule matches each series in files or folders",
        description=(
            "For each series found in PATH (files or folders, searched recursively), print "
            "which rule matched and, for every other rule, the first condition that failed "
            "with the series' value. Exit status: 0 every series matched a rule; 1 some "
            "series matched none; 2 usage or config error."
        ),
    )
    test.add_argument("-c", "--config", type=Path, default=None, help="config YAML file")
    test.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="DICOM file or folder")
    test.add_argument(
        "--calling-ae", default=None, help="pretend the series came from this AE title"
    )
    test.add_argument(
        "--called-ae", default=None, help="AE title the sender called (default: node.ae_title)"
    )
    test.add_argument("--json", action="store_true", help="print one JSON document instead")
    parser.set_defaults(func=run)


@dataclass
class _Series:
    uid: str
    files: list[Path] = field(default_factory=list)
    first: pydicom.Dataset | None = None
    frames: int = 0


def _walk(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def collect_series(paths: list[Path]) -> tuple[list[_Series], int]:
    """Group the DICOM files under ``paths`` by series; also count skipped files."""
    series: dict[str, _Series] = {}
    skipped = 0
    for path in _walk(paths):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            skipped += 1
            continue
        uid = str(ds.get("SeriesInstanceUID") or f"(no Series Instance UID: {path})")
        entry = series.setdefault(uid, _Series(uid))
        entry.files.append(path)
        if entry.first is None:
            entry.first = ds
        entry.frames += frames_in(ds)
    return list(series.values()), skipped


def _folders(files: list[Path]) -> str:
    folders = sorted({str(f.parent) for f in files})
    shown = ", ".join(folders[:3]) + (f" (+{len(folders) - 3} more)" if len(folders) > 3 else "")
    return f"{shown} ({len(files)} file{'s' if len(files) != 1 else ''})"


def _print_decision(series: _Series, decision: RouteDecision, out: TextIO) -> None:
    attrs = decision.attrs
    assert attrs is not None
    print(f"series {series.uid}", file=out)
    print(f"  {attrs.summary()}", file=out)
    print(f"  in {_folders(series.files)}", file=out)
    width = max((len(e.rule) for e in decision.explanations), default=0)
    for explanation in decision.explanations:
        head = f"  {explanation.position:>2}. {explanation.rule:<{width}}"
        if explanation.outcome == "matched":
            match = next(m for m in decision.matched if m.rule == explanation.rule)
            actions = [
                "models " + ", ".join(str(m) for m in match.models),
                "send to " + (", ".join(match.send_to) or "nowhere"),
                "outputs " + ", ".join(match.outputs),
            ]
            if match.shadow:
                actions.append("SHADOW (recorded, not sent)")
            if match.schedule is not None:
                actions.append(f"runs {match.schedule.start}-{match.schedule.end}")
            print(f"{head}  MATCHED -> {'; '.join(actions)}", file=out)
        else:
            print(f"{head}  {explanation.describe()}", file=out)
    if not decision.explanations:
        print("  (the config has no rules)", file=out)
    verdict = f"routed: {decision.reason}" if decision.routed else f"NOT ROUTED: {decision.reason}"
    print(f"  => {verdict}", file=out)
    print(file=out)


def report_routes(
    config: ContourdConfig,
    paths: list[Path],
    *,
    calling_ae: str | None,
    called_ae: str | None,
    as_json: bool,
    out: TextIO,
) -> int:
    """Route every series under ``paths`` and print the outcome; return the exit status."""
    found, skipped = collect_series(paths)
    decisions: list[tuple[_Series, RouteDecision]] = []
    for series in found:
        assert series.first is not None
        attrs = SeriesAttributes.from_dataset(
            series.first,
            calling_ae=calling_ae,
            called_ae=called_ae if called_ae is not None else config.node.ae_title,
            num_images=series.frames,
        )
        decision = route(attrs, config.rules, body_part_synonyms=config.body_part_synonyms)
        decisions.append((series, decision))
    routed = sum(1 for _, d in decisions if d.routed)
    if as_json:
        document = {
            "series": [
                {"series_instance_uid": s.uid, "files": len(s.files), **d.to_dict()}
                for s, d in decisions
            ],
            "routed": routed,
            "not_routed": len(decisions) - routed,
            "skipped_files": skipped,
        }
        json.dump(document, out, indent=2)
        print(file=out)
    else:
        for series, decision in decisions:
            _print_decision(series, decision, out)
        print(
            f"{len(decisions)} series: {routed} routed, {len(decisions) - routed} not routed"
            f"; {skipped} file{'s' if skipped != 1 else ''} skipped (not DICOM)",
            file=out,
        )
    if not decisions:
        print("no DICOM series found in the paths given", file=sys.stderr)
        return EXIT_SOME_NOT_ROUTED
    return EXIT_ALL_ROUTED if routed == len(decisions) else EXIT_SOME_NOT_ROUTED


def run(args: argparse.Namespace) -> int:
    """Entry point of ``contourd routes``."""
    if getattr(args, "routes_action", None) != "test":
        print(
            "contourd routes: say what to do: contourd routes test -c FILE PATH...", file=sys.stderr
        )
        return EXIT_USAGE
    missing = [p for p in args.paths if not p.exists()]
    if missing:
        print(
            f"contourd routes test: error: no such file or folder: {', '.join(map(str, missing))}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    # Headers from the wild often break VR rules (e.g. a UID that is a hash);
    # routing only needs the values, so read them as they are, quietly.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        config = load_config(args.config or args.routes_config)
    except ConfigError as err:
        print(f"contourd routes test: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return report_routes(
        config,
        args.paths,
        calling_ae=args.calling_ae,
        called_ae=args.called_ae,
        as_json=args.json,
        out=sys.stdout,
    )
