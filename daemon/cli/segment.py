"""``contourd segment``: segment DICOM folders with approved models, for scripts and batches.

``contourd segment -m MODEL[@VERSION] [-m ...] DICOM_DIR... -o OUT [--seg]``
groups the files under each folder by SeriesInstanceUID, runs
:func:`inference.pipeline.segment_series` on every image series with the
approved model(s) from the registry in the configured data folder (never an
unapproved one), and writes ``OUT/<SeriesInstanceUID>/RS.<uid>.dcm`` (and
``SEG.<uid>.dcm`` with ``--seg``), atomically and named as the worker names
its results (:mod:`inference.outputs`). A series that fails is reported and
the others go on; the exit code is 1 when any failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import pydicom
from tqdm import tqdm

from contourd.errors import ContourdError
from daemon.cli.model_option import add_model_command
from daemon.config import load_config
from inference.outputs import OUTPUT_KINDS, identify_algorithm, write_results
from inference.pipeline import collect_files, segment_series
from inference.predictor import PredictorCache
from model_store.registry import ModelRegistry
from model_store.resolution import resolve_models

log = logging.getLogger(__name__)

SUMMARY = "segment DICOM series with approved models and write RTSTRUCT (and SEG)"
MODEL_HELP = "approved model (newest approved version without @VERSION); repeat for several"


def register(subparsers: Any) -> None:
    """Add the ``segment`` parser."""
    parser = add_model_command(subparsers, "segment", SUMMARY, __doc__, MODEL_HELP, repeat=True)
    parser.add_argument("folders", nargs="+", type=Path, metavar="DICOM_DIR")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT")
    parser.add_argument("--seg", action="store_true", help="also write a DICOM SEG")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda[:n]")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def find_series(folder: Path) -> dict[str, list[Path]]:
    """Image files under ``folder`` grouped by SeriesInstanceUID (non-images skipped)."""
    groups: dict[str, list[Path]] = {}
    for path in collect_files(folder):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - not DICOM: skip it
            continue
        if "Rows" not in ds or "SeriesInstanceUID" not in ds:
            continue
        groups.setdefault(str(ds.SeriesInstanceUID), []).append(path)
    return groups


def run(args: argparse.Namespace) -> int:
    """Segment every series under the given folders; 1 when any series failed."""
    config = load_config(args.config)
    registry = ModelRegistry(config.data_dir, database=config.open_database())
    models = resolve_models(registry, args.model)
    algorithm = identify_algorithm(models)
    label = f"AUTO {algorithm.model_name}"[:16]
    cache = PredictorCache()
    failures = 0
    done = 0
    for folder in tqdm(args.folders, desc="folders", unit="folder", disable=args.no_progress):
        series = find_series(folder)
        if not series:
            print(f"{folder}: no DICOM image series found", file=sys.stderr)
            failures += 1
            continue
        for uid, paths in series.items():
            try:
                result = segment_series(
                    paths,
                    models,
                    device=args.device,
                    predictor_cache=cache,
                    precision=args.precision,
                    num_threads=args.threads,
                )
                written = write_results(
                    result,
                    identify_algorithm(models, result.run_parameters),
                    args.output / uid,
                    label=label,
                    outputs=OUTPUT_KINDS if args.seg else ("rtstruct",),
                    uid_root=config.worker.uid_root,
                )
            except ContourdError as err:
                failures += 1
                print(f"series {uid}: error: {err}", file=sys.stderr)
                continue
            done += 1
            for warning in result.warnings + written.warnings:
                print(f"series {uid}: warning: {warning}", file=sys.stderr)
            rois = ", ".join(r.name for r in result.rois) or "none"
            files = ", ".join(str(p) for p in written.files)
            print(
                f"series {uid}: {len(result.rois)} ROI(s) ({rois}) in "
                f"{result.timings_s['total']:.1f} s -> {files}"
            )
    print(f"{done} series segmented, {failures} failed")
    return 1 if failures else 0
