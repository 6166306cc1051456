"""``contourd train``: train a U-Net on a clinic's contoured cases and write a model package.

``contourd train --dataset DIR --rois NAME... --out PACKAGE`` reads a NIfTI
(OpenKBP layout) or DICOM (one folder per case: CT series + RTSTRUCT) dataset,
auto-detected, maps the exported ROI names to ``--rois`` (TG-263 names; a
``--mapping`` YAML adds a clinic's own names), splits off validation cases
(or takes ``--validation DIR``), trains with nnU-Net's recipe
(:mod:`training.trainer`) with checkpoints in ``--run-dir`` (``--resume``
continues a run), then exports the package, evaluates it as shipped on the
validation cases and writes the results into its card and a report beside
it. Import and approve the package with ``contourd models`` before use.

``--from-feedback MODEL`` first lays out the clinically approved cases kept
by ``feedback.keep_for_training`` (:mod:`daemon.feedback_dataset`) in
``--dataset``; with ``--init-from`` the run fine-tunes MODEL's weights.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import yaml

from contourd.errors import TrainingError
from training.config import TrainingConfig, load_training_config, validate_training_config
from training.datasets import dataset_format, load_training_data, nifti_roi_sources
from training.package_export import package_run
from training.roi_mapping import load_mapping_file
from training.trainer import Trainer

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``train`` parser."""
    parser = subparsers.add_parser(
        "train",
        help="train a model on contoured cases and write a model package",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument("-c", "--config", type=Path, default=None, help="contourd config YAML")
    parser.add_argument("--dataset", type=Path, required=True, metavar="DIR")
    parser.add_argument("--rois", nargs="+", metavar="NAME", help="ROI names (TG-263), in order")
    parser.add_argument("--out", type=Path, required=True, metavar="PACKAGE")
    parser.add_argument(
        "--train-config",
        type=Path,
        default=None,
        metavar="RUN.yaml",
        help="training settings (training.config.TrainingConfig); options below override it",
    )
    parser.add_argument(
        "--from-feedback",
        metavar="MODEL",
        default=None,
        help="first lay out the reviewed cases kept for MODEL (feedback.keep_for_training) "
        "in --dataset DIR (a new folder); --rois default to MODEL's ROI names",
    )
    parser.add_argument("--validation", type=Path, default=None, metavar="DIR")
    parser.add_argument("--mapping", type=Path, default=None, help="ROI name mapping YAML")
    parser.add_argument("--steps", type=int, default=None, help="maximum training steps")
    parser.add_argument("--hours", type=float, default=None, help="maximum training hours")
    parser.add_argument("--run-dir", type=Path, default=None, help="checkpoints (default OUT-run)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        metavar="WEIGHTS",
        help="fine-tune: start from a model package folder (its weights.safetensors) or a "
        "safetensors file with the same ROIs and architecture",
    )
    parser.add_argument("--name", default=None, help="model name (default: OUT folder name)")
    parser.add_argument("--version", default="0.1.0", help="model version (semver)")
    parser.add_argument("--description", default=None)
    parser.add_argument("--body-site", default="HEADNECK")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda[:n]")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--limit", type=int, default=None, help="use only N training cases")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a training setting, e.g. --set base_channels=8 --set patch_size=[32,64,64]",
    )
    parser.set_defaults(func=run)


def prepare_feedback_dataset(args: argparse.Namespace) -> None:
    """``--from-feedback MODEL``: lay the kept cases out in ``--dataset``; default --rois."""
    from daemon.config import load_config
    from daemon.feedback_dataset import build_feedback_dataset
    from model_store.registry import ModelRegistry

    node_config = load_config(args.config)
    cases = build_feedback_dataset(node_config.data_dir, args.from_feedback, args.dataset)
    print(f"{len(cases)} reviewed case(s) of {args.from_feedback} laid out in {args.dataset}")
    if not args.rois:
        name, _, version = args.from_feedback.partition(" ")
        with ModelRegistry(node_config.data_dir, database=node_config.open_database()) as registry:
            args.rois = [r.name for r in registry.get(name, version or None).effective_rois()]
    if args.mapping is None and node_config.feedback.roi_names:
        mapping = args.dataset.with_name(args.dataset.name + "-roi-names.yaml")
        mapping.write_text(yaml.safe_dump(node_config.feedback.roi_names), encoding="utf-8")
        args.mapping = mapping


def build_config(args: argparse.Namespace) -> TrainingConfig:
    """The run's TrainingConfig from ``--train-config`` and the command-line options."""
    raw: dict[str, Any] = {}
    if args.train_config is not None:
        raw = load_training_config(args.train_config).model_dump()
    raw["train_dir"] = args.dataset.resolve()
    raw["validation_dir"] = (args.validation or args.dataset).resolve()
    if args.rois:
        raw["roi_names"] = list(args.rois)
    if "roi_names" not in raw:
        raise TrainingError("name the ROIs to train with --rois (e.g. Parotid_L Parotid_R)")
    if args.mapping is not None:
        raw["roi_mapping"] = load_mapping_file(args.mapping)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise TrainingError(f"--set {item!r} must be KEY=VALUE, e.g. base_channels=8")
        try:
            raw[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise TrainingError(
                f"--set {item!r}: the value is not YAML ({getattr(err, 'problem', err)}); "
                "write e.g. patch_size=[32,64,64]"
            ) from err
    if args.steps is not None:
        raw["max_steps"] = args.steps
        raw["validate_every"] = min(int(raw.get("validate_every", 150)), args.steps)
    if args.hours is not None:
        raw["max_hours"] = args.hours
    if args.threads is not None:
        raw["threads"] = args.threads
    if args.init_from is not None:
        init = args.init_from.resolve()
        raw["init_weights"] = init / "weights.safetensors" if init.is_dir() else init
    fmt = dataset_format(raw["train_dir"], raw.get("dataset_format", "auto"))
    if fmt == "nifti" and (args.rois or "roi_sources" not in raw):
        raw["roi_sources"] = nifti_roi_sources(
            raw["train_dir"], raw["roi_names"], raw.get("roi_mapping")
        )
    raw.setdefault("roi_sources", [[n] for n in raw["roi_names"]])
    return validate_training_config(raw, "--train-config and the command-line options")


def run(args: argparse.Namespace) -> int:
    """Train, export, evaluate; exit code 0 on success."""
    if args.from_feedback:
        prepare_feedback_dataset(args)
    config = build_config(args)
    out: Path = args.out
    run_dir: Path = args.run_dir or out.with_name(out.name + "-run")
    has_checkpoint = (run_dir / "checkpoint.safetensors").is_file()
    if has_checkpoint and not args.resume:
        raise TrainingError(
            f"{run_dir} holds a checkpoint of an earlier run; pass --resume to continue it "
            "or choose another --run-dir"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.yaml").write_text(
        yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    )
    cache = run_dir / "cache"
    train, val = load_training_data(config, cache_dir=cache, limit=args.limit)
    trainer = Trainer(config, run_dir, args.device)
    trainer.start(resume=args.resume)
    trainer.fit(train, val)
    name = args.name or out.name.lower()
    same = config.validation_dir.resolve() == config.train_dir.resolve()
    package_run(
        config,
        run_dir,
        out,
        name=name,
        version=args.version,
        description=args.description
        or f"Organs at risk ({', '.join(config.roi_names)}) trained on this clinic's contours.",
        body_site=args.body_site,
        train_cases=len(train),
        validation=val,
        dataset=config.train_dir.name,
        evaluate_dir=config.validation_dir,
        evaluate_case_ids=[c.case_id for c in val] if same else None,
        device=args.device,
        num_threads=config.threads,
        report_dir=out.with_name(out.name + "-report"),
    )
    print(f"package written to {out}; report in {out.with_name(out.name + '-report')}")
    print(f"import it with: contourd models import {out}")
    return 0
