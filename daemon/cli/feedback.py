"""``contourd feedback``: how much clinicians changed the contours, per model and ROI.

Reads the feedback tables (:mod:`daemon.feedback_store`): per model version
and ROI, the number of reviewed sets, how many ROIs were accepted unchanged,
edited, deleted or added, and the medians of Dice, surface Dice, HD95, added
path length and volume change. ``--cases`` lists every reviewed set;
``--report DIR`` writes an HTML report with plots over time.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contourd.errors import ConfigError
from daemon.config import load_config
from daemon.feedback_store import FeedbackStore, RoiSummary


def register(subparsers: Any) -> None:
    """Add the ``feedback`` subcommand."""
    parser = subparsers.add_parser(
        "feedback",
        help="how much clinicians edited the contours (per model version and ROI)",
        description=(
            "Summarise the reviewed structure sets that came back from the planning system: "
            "per model version and ROI, medians of Dice, surface Dice, HD95, added path "
            "length and volume change, and how many were accepted unchanged."
        ),
    )
    parser.add_argument("-c", "--config", type=Path, default=None, help="config YAML file")
    parser.add_argument("--model", help="only this model (NAME or 'NAME VERSION')")
    parser.add_argument("--since", help="only sets recorded on or after this date (YYYY-MM-DD)")
    parser.add_argument("--cases", action="store_true", help="list every reviewed set too")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--report", type=Path, help="write an HTML report with plots into DIR")
    parser.set_defaults(func=run)


def parse_since(text: str | None) -> float | None:
    """``YYYY-MM-DD`` (UTC midnight) or a full ISO time -> Unix seconds."""
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError as err:
        raise ConfigError(
            f"--since {text!r} is not a date; give YYYY-MM-DD, e.g. --since 2026-01-31"
        ) from err
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def case_rows(store: FeedbackStore, model: str | None, since: float | None) -> list[dict[str, Any]]:
    """Every reviewed set (newest first) with its ROI figures."""
    by_set: dict[int, list[dict[str, Any]]] = {}
    for row in store.roi_rows(model=model, since=since):
        by_set.setdefault(int(row["feedback_id"]), []).append(_roi_view(row))
    cases = []
    for row in store.sets(since=since):
        rois = by_set.get(int(row["id"]), [])
        if model is not None and row["status"] == "paired" and not rois:
            continue
        cases.append({**row, "rois": rois})
    return cases


def _roi_view(row: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "model",
        "model_version",
        "roi",
        "approved_name",
        "classification",
        "dice",
        "surface_dice",
        "hd95_mm",
        "tolerance_mm",
        "volume_sent_cc",
        "volume_approved_cc",
        "volume_change_cc",
        "volume_change_pct",
        "added_path_length_mm",
        "sent_path_length_mm",
    )
    return {k: row[k] for k in keep}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_summary(summary: list[RoiSummary]) -> None:
    """The per-ROI table on stdout."""
    if not summary:
        print("no reviewed structure sets recorded (see docs/operations.md, 'Feedback')")
        return
    header = (
        f"{'model':<22} {'ROI':<18} {'sets':>4} {'unch':>4} {'edit':>4} {'del':>4} {'add':>4} "
        f"{'Dice':>6} {'sDice':>6} {'HD95mm':>7} {'APLmm':>8} {'dV%':>7}"
    )
    print(header)
    for s in summary:
        m = s.medians
        model = f"{s.model} {s.model_version}" + (" shadow" if s.shadow else "")
        print(
            f"{model:<22} {s.roi:<18} {s.sets:>4} {s.counts['unchanged']:>4} "
            f"{s.counts['edited']:>4} {s.counts['deleted']:>4} {s.counts['added']:>4} "
            f"{_fmt(m['dice']):>6} {_fmt(m['surface_dice']):>6} {_fmt(m['hd95_mm'], 1):>7} "
            f"{_fmt(m['added_path_length_mm'], 1):>8} {_fmt(m['volume_change_pct'], 1):>7}"
        )
    print("medians over the sets; Dice/sDice/HD95 sent vs approved; APL: added path length")


def run(args: argparse.Namespace) -> int:
    """Print (or write) the feedback summary."""
    config = load_config(args.config)
    since = parse_since(args.since)
    store = FeedbackStore(Path(config.data_dir))
    try:
        summary = store.summary(model=args.model, since=since)
        cases = case_rows(store, args.model, since) if (args.cases or args.json) else []
        if args.report is not None:
            from daemon.feedback_report import write_report

            index = write_report(store, args.report, model=args.model, since=since)
            print(f"feedback report written to {index}")
    finally:
        store.close()
    if args.json:
        doc = {"rois": [s.as_dict() for s in summary], "cases": cases}
        print(json.dumps(doc, indent=2, default=str))
        return 0
    print_summary(summary)
    if args.cases:
        for case in cases:
            rois = ", ".join(
                f"{r['roi']} {r['classification']} Dice {_fmt(r['dice'])} "
                f"APL {_fmt(r['added_path_length_mm'], 1)} mm"
                for r in case["rois"]
            )
            print(
                f"{case['recorded_at_utc']} set {case['id']} from {case['sender_ae'] or '?'}: "
                f"{case['status']}"
                + (f" vs job {case['job_id']}" if case["job_id"] else "")
                + (" (shadow)" if case["shadow"] else "")
                + (f": {rois}" if rois else (f": {case['message']}" if case["message"] else ""))
            )
    return 0
