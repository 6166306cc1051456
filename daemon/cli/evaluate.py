"""``contourd evaluate``: score a model against reference contours before approving it.

``contourd evaluate -m MODEL[@VERSION] DATASET [--report DIR]`` runs the model
(from the registry, ANY status, so it can be evaluated before approval; or a
package folder/zip path) over a NIfTI or DICOM dataset exactly as the
pipeline would, compares its masks with the reference on each case's
original grid, and prints per-organ Dice, HD95, mean surface distance and
surface Dice (median [IQR]). ``--report`` writes Markdown + HTML with box
plots and contour overlays.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from daemon.config import load_config
from model_store.registry import ModelRegistry
from training.evaluate import evaluate_model, format_table, load_package_model, write_report
from training.roi_mapping import load_mapping_file

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``evaluate`` parser."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score a model on a labelled dataset (Dice, HD95, MSD, surface Dice) with a report",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument("-c", "--config", type=Path, default=None, help="config YAML file")
    parser.add_argument(
        "-m",
        "--model",
        required=True,
        metavar="MODEL[@VERSION]",
        help="a model in the registry (newest version without @VERSION) or a package path",
    )
    parser.add_argument("dataset", type=Path, metavar="DATASET")
    parser.add_argument("--report", type=Path, default=None, metavar="DIR")
    parser.add_argument("--mapping", type=Path, default=None, help="ROI name mapping YAML")
    parser.add_argument("--tolerance-mm", type=float, default=2.0, help="surface Dice tolerance")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N cases")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda[:n]")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _resolve_model(args: argparse.Namespace) -> Any:
    path = Path(args.model)
    if path.exists():
        return load_package_model(path)
    name, _, version = args.model.partition("@")
    registry = ModelRegistry(load_config(args.config).data_dir)
    return registry.resolve(name, version or None, require_approved=False)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the table; exit code 0."""
    model = _resolve_model(args)
    mapping = load_mapping_file(args.mapping) if args.mapping else None
    bar = tqdm(desc="evaluate", unit="case", disable=args.no_progress, file=sys.stderr)

    def progress(_index: int, _case_id: str) -> None:
        bar.update(1)

    try:
        result = evaluate_model(
            model,
            args.dataset,
            tolerance_mm=args.tolerance_mm,
            mapping=mapping,
            limit=args.limit,
            device=args.device,
            num_threads=args.threads,
            progress=progress,
        )
    finally:
        bar.close()
    status = getattr(model, "status", "package (not imported)")
    print(f"{result.model} ({status}) on {args.dataset}: {len(result.cases)} cases")
    print(format_table(result))
    if args.report is not None:
        page = write_report(result, args.report)
        print(f"report: {page}")
    return 0
