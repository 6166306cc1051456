"""``contourd segment``: segment DICOM folders with approved models, for scripts and batches.

``contourd segment -m MODEL[@VERSION] [-m ...] DICOM_DIR... -o OUT [--seg]``
groups the files under each folder by SeriesInstanceUID, runs
:func:`inference.pipeline.segment_series` on every image series with the
approved model(s) from the registry in the configured data folder (never an
unapproved one), and writes ``OUT/<SeriesInstanceUID>/RS_<uid>.dcm`` (and
``SEG_<uid>.dcm`` with ``--seg``). A series that fails is reported and the
others go on; the exit code is 1 when any failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import pydicom
from tqdm import tqdm

from contourd import __version__
from contourd.errors import ContourdError
from daemon.config import load_config
from inference.pipeline import SegmentationResult, collect_files, segment_series
from inference.predictor import PredictorCache
from inference.roi_mask import AlgorithmInfo
from model_store.registry import ModelRegistry

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``segment`` parser."""
    parser = subparsers.add_parser(
        "segment",
        help="segment DICOM series with approved models and write RTSTRUCT (and SEG)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument("-c", "--config", type=Path, default=None, help="config YAML file")
    parser.add_argument(
        "-m",
        "--model",
        action="append",
        required=True,
        metavar="MODEL[@VERSION]",
        help="approved model (newest approved version without @VERSION); repeat for several",
    )
    parser.add_argument("folders", nargs="+", type=Path, metavar="DICOM_DIR")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT")
    parser.add_argument("--seg", action="store_true", help="also write a DICOM SEG")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda[:n]")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _parse_ref(ref: str) -> tuple[str, str | None]:
    name, _, version = ref.partition("@")
    return name, version or None


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


def write_outputs(
    result: SegmentationResult,
    algorithm: AlgorithmInfo,
    out_dir: Path,
    *,
    seg: bool,
    uid_root: str | None,
) -> list[Path]:
    """Write the RTSTRUCT (and SEG) of one result under ``out_dir``."""
    from inference.rtstruct_writer import write_rtstruct

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    rtstruct = write_rtstruct(
        result.volume.headers,
        result.rois,
        algorithm,
        structure_set_label=f"AUTO {algorithm.model_name}"[:16],
        uid_root=uid_root,
    )
    path = out_dir / f"RS_{rtstruct.SOPInstanceUID}.dcm"
    rtstruct.save_as(path, enforce_file_format=True)
    written.append(path)
    if seg and result.rois:
        from inference.seg_writer import write_seg

        segmentation = write_seg(result.volume.headers, result.rois, algorithm, uid_root=uid_root)
        seg_path = out_dir / f"SEG_{segmentation.SOPInstanceUID}.dcm"
        segmentation.save_as(seg_path)
        written.append(seg_path)
    return written


def run(args: argparse.Namespace) -> int:
    """Segment every series under the given folders; 1 when any series failed."""
    config = load_config(args.config)
    registry = ModelRegistry(config.data_dir, database=config.open_database())
    models = []
    for ref in args.model:
        name, version = _parse_ref(ref)
        model = registry.resolve_approved(name, version)
        model.verify_weights()
        models.append(model)
    algorithm = AlgorithmInfo(
        model_name="+".join(m.card.name for m in models),
        model_version="+".join(m.card.version for m in models),
        weights_sha256=models[0].weights_sha256 if len(models) == 1 else None,
        software_version=__version__,
    )
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
                written = write_outputs(
                    result,
                    algorithm,
                    args.output / uid,
                    seg=args.seg,
                    uid_root=config.worker.uid_root,
                )
            except ContourdError as err:
                failures += 1
                print(f"series {uid}: error: {err}", file=sys.stderr)
                continue
            done += 1
            for warning in result.warnings:
                print(f"series {uid}: warning: {warning}", file=sys.stderr)
            rois = ", ".join(r.name for r in result.rois) or "none"
            print(
                f"series {uid}: {len(result.rois)} ROI(s) ({rois}) in "
                f"{result.timings_s['total']:.1f} s -> {', '.join(str(p) for p in written)}"
            )
    print(f"{done} series segmented, {failures} failed")
    return 1 if failures else 0
