"""``contourd evaluate``: score a model against reference contours before approving it.

``contourd evaluate -m MODEL[@VERSION] DATASET [--report DIR]`` runs the model
(from the registry, ANY status, so it can be evaluated before approval; or a
package folder/zip path) over a NIfTI or DICOM dataset exactly as the
pipeline would, compares its masks with the reference on each case's
original grid, and prints per-organ Dice, HD95, mean surface distance and
surface Dice (median [IQR]). ``--report`` writes Markdown + HTML with box
plots and contour overlays. ``--strategy``, ``--overlap``, ``--no-crop`` and
``--mirror`` override the card's inference settings for this evaluation only
(to compare them while commissioning; the card decides in clinical use).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from contourd.errors import InferenceError, ModelNotFoundError
from daemon.cli.model_option import add_model_command
from daemon.config import load_config
from model_store.registry import ModelRegistry
from model_store.resolution import resolve_model
from routing.rules import ModelRef
from training.evaluate import (
    EvaluationResult,
    evaluate_model,
    format_table,
    load_package_model,
    write_report,
)
from training.mask_agreement import MaskAgreement
from training.roi_mapping import load_mapping_file

log = logging.getLogger(__name__)

SUMMARY = "score a model on a labelled dataset (Dice, HD95, MSD, surface Dice) with a report"
MODEL_HELP = "a model in the registry (newest version without @VERSION) or a package path"


def register(subparsers: Any) -> None:
    """Add the ``evaluate`` parser."""
    parser = add_model_command(subparsers, "evaluate", SUMMARY, __doc__, MODEL_HELP, repeat=False)
    parser.add_argument("dataset", type=Path, metavar="DATASET")
    parser.add_argument("--report", type=Path, default=None, metavar="DIR")
    parser.add_argument("--mapping", type=Path, default=None, help="ROI name mapping YAML")
    parser.add_argument("--tolerance-mm", type=float, default=2.0, help="surface Dice tolerance")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N cases")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda[:n]")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--strategy",
        choices=["sliding_window", "whole_volume"],
        default=None,
        help="override the card's inference strategy for this evaluation",
    )
    parser.add_argument("--overlap", type=float, default=None, help="override the window overlap")
    parser.add_argument(
        "--nnunet-mode",
        choices=("exact", "fast"),
        default=None,
        help="nnU-Net models: run in this mode instead of the card's",
    )
    parser.add_argument(
        "--compare-mode",
        action="store_true",
        help="nnU-Net models: evaluate in exact and in fast mode and print both side by side",
    )
    parser.add_argument(
        "--no-crop", action="store_true", help="run the network on the whole grid, not the patient"
    )
    parser.add_argument(
        "--mirror", action="store_true", help="add left-right mirror test-time augmentation"
    )
    parser.set_defaults(func=run)


def _resolve_model(args: argparse.Namespace) -> Any:
    """A package path, else a registry reference of any status (evaluation before approval)."""
    path = Path(args.model)
    if path.exists():
        return load_package_model(path)
    try:
        ref = ModelRef.parse(args.model)
    except ValueError as err:
        raise ModelNotFoundError(
            f"-m {args.model!r} is no package folder or zip here, and {err}"
        ) from err
    config = load_config(args.config)
    registry = ModelRegistry(config.data_dir, database=config.open_database())
    return resolve_model(registry, ref, require_approved=False)


def _evaluate(
    model: Any,
    args: argparse.Namespace,
    mapping: Any,
    progress: Any = None,
    on_prediction: Any = None,
) -> EvaluationResult:
    """:func:`training.evaluate.evaluate_model` with the command's options."""
    return evaluate_model(
        model,
        args.dataset,
        tolerance_mm=args.tolerance_mm,
        mapping=mapping,
        limit=args.limit,
        device=args.device,
        num_threads=args.threads,
        progress=progress,
        on_prediction=on_prediction,
    )


def with_inference_overrides(model: Any, args: argparse.Namespace) -> Any:
    """The model with its card's ``inference`` settings changed as the options ask.

    Returns a copy (the registry's record and the package are untouched).
    """
    card = model.card
    if card.model_type == "nnunet" and getattr(args, "nnunet_mode", None):
        nnunet = card.nnunet.model_copy(update={"mode": args.nnunet_mode})
        return dataclasses.replace(model, card=card.model_copy(update={"nnunet": nnunet}))
    if card.model_type != "unet":
        return model
    changes: dict[str, Any] = {}
    if args.strategy is not None:
        changes["strategy"] = args.strategy
    if args.overlap is not None:
        if not 0 <= args.overlap < 1:
            raise InferenceError(
                f"--overlap {args.overlap} is outside [0, 1): give the fraction of a window "
                "that neighbouring windows share, e.g. 0.25 or 0.5"
            )
        changes["overlap"] = args.overlap
    if args.no_crop:
        changes["crop_to_foreground"] = False
    if args.mirror:
        changes["mirror_left_right"] = True
    if not changes:
        return model
    settings = type(card.inference).model_validate({**card.inference.model_dump(), **changes})
    return dataclasses.replace(model, card=card.model_copy(update={"inference": settings}))


def describe_inference(card: Any) -> str:
    """One line: how the network was run (for the printed table)."""
    if card.model_type == "nnunet":
        return str(card.nnunet.describe())
    if card.model_type != "unet":
        return f"{card.model_type} model"
    return str(card.inference.describe())


def format_mode_comparison(results: dict[str, Any]) -> str:
    """Per ROI mean Dice of each mode against the reference, the difference, and seconds."""
    exact, fast = results["exact"], results["fast"]
    lines = [f"{'ROI':<20}{'Dice exact':>12}{'Dice fast':>12}{'fast - exact':>14}"]
    for roi in exact.roi_names:
        values = []
        for result in (exact, fast):
            dices = [c.metrics[roi].dice for c in result.cases if roi in c.metrics]
            values.append(float(np.mean(dices)) if dices else float("nan"))
        lines.append(
            f"{roi:<20}{values[0]:>12.4f}{values[1]:>12.4f}{values[1] - values[0]:>+14.4f}"
        )
    seconds = {m: sum(c.seconds for c in r.cases) for m, r in results.items()}
    lines.append(
        f"seconds over {len(exact.cases)} cases: exact {seconds['exact']:.1f}, fast "
        f"{seconds['fast']:.1f} (x{seconds['exact'] / max(seconds['fast'], 1e-9):.1f})"
    )
    return "\n".join(lines)


def format_agreement(card: Any, agreement: MaskAgreement) -> str:
    """Per ROI mean and lowest Dice of ``fast``'s masks against ``exact``'s, over the cases."""
    lines = ["fast vs exact agreement (Dice of the two modes' masks per case):",
             f"{'ROI':<20}{'mean':>10}{'lowest':>10}{'cases':>7}"]  # fmt: skip
    lowest_overall = 1.0
    for roi in sorted(card.rois, key=lambda r: r.label):
        values = agreement.dice.get(roi.label, [])
        if not values:
            continue
        lowest_overall = min(lowest_overall, min(values))
        lines.append(f"{roi.name:<20}{np.mean(values):>10.4f}{min(values):>10.4f}{len(values):>7}")
    lines.append(f"lowest fast-vs-exact Dice over ROIs and cases: {lowest_overall:.4f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the table; exit code 0."""
    if args.compare_mode:
        return run_compare_mode(args)
    model = with_inference_overrides(_resolve_model(args), args)
    mapping = load_mapping_file(args.mapping) if args.mapping else None
    bar = tqdm(desc="evaluate", unit="case", disable=args.no_progress, file=sys.stderr)

    def progress(_index: int, _case_id: str) -> None:
        bar.update(1)

    try:
        result = _evaluate(model, args, mapping, progress)
    finally:
        bar.close()
    status = getattr(model, "status", "package (not imported)")
    print(f"{result.model} ({status}) on {args.dataset}: {len(result.cases)} cases")
    print(f"inference: {describe_inference(model.card)}")
    print(format_table(result))
    if args.report is not None:
        page = write_report(result, args.report)
        print(f"report: {page}")
    return 0


def run_compare_mode(args: argparse.Namespace) -> int:
    """``--compare-mode``: the nnU-Net model in exact and fast mode on the same cases.

    Prints each mode's scores against the reference, then the agreement of
    ``fast`` with ``exact`` (Dice of the two modes' masks per ROI and case).
    """
    base = _resolve_model(args)
    if base.card.model_type != "nnunet":
        raise InferenceError(
            f"--compare-mode compares nnU-Net modes; {args.model} is a "
            f"{base.card.model_type!r} model"
        )
    mapping = load_mapping_file(args.mapping) if args.mapping else None
    results = {}
    labels = tuple(r.label for r in base.card.rois)
    with MaskAgreement(labels=labels) as agreement:
        for mode, hook in (("exact", agreement.keep), ("fast", agreement.score)):
            nnunet = base.card.nnunet.model_copy(update={"mode": mode})
            card = base.card.model_copy(update={"nnunet": nnunet})
            model = dataclasses.replace(base, card=card)
            results[mode] = _evaluate(model, args, mapping, on_prediction=hook)
            print(f"{mode}: {describe_inference(model.card)}")
    print(format_mode_comparison(results))
    print(format_agreement(base.card, agreement))
    return 0
