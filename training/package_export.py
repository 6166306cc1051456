"""Turn a training run into a model package (``model.yaml`` + ``weights.safetensors``).

:func:`export_package` writes a folder that :func:`model_store.package.open_package`
accepts: the card (schema: :mod:`model_store.card`) with the preprocessing the
network was trained with (LPS, ``spacing_mm`` ``[x, y, z]``, ``ct_clip_scale``
normalisation, ``patch_size`` ``[z, y, x]``), the architecture
(:class:`model_store.card.Architecture`), TG-263 ROIs with colours, types,
laterality and plausible volume ranges, a training summary (counts, dates and
settings, never identifiers), the evaluation per ROI when given, a README
with the figures, and ``training_history.csv`` (the loss curve's numbers; the
PNG itself stays outside, since packages refuse images that could hold
patient data).

Weights are stored as fp16 when ``fp16=True``: that halves the file, and
:func:`fp16_agreement` measures that it changes no prediction that matters
(Dice of the fp16-weight prediction against the fp32 one per ROI); the
exporter keeps fp32 when the agreement on the given cases is below
``min_fp16_agreement``.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

from contourd.errors import TrainingError, cli_error_exit
from inference.unet import UNet3D
from model_store.card import (
    CtClipScale,
    Evaluation,
    ModelCard,
    Preprocessing,
    RoiPostprocessing,
    RoiSpec,
    TrainingSummary,
)
from model_store.package import CARD_FILE, WEIGHTS_FILE, open_package
from training.config import TrainingConfig
from training.openkbp_dataset import TrainingCase
from training.roi_mapping import name_key
from training.trainer import normalise_hu, pad_to_multiple

log = logging.getLogger(__name__)

#: Defaults per TG-263 name: display colour, plausible volume range (cm^3) for adults.
ROI_DEFAULTS: dict[str, tuple[tuple[int, int, int], tuple[float, float] | None]] = {
    "Brainstem": ((0, 255, 255), (10.0, 60.0)),
    "SpinalCord": ((255, 255, 0), (2.0, 60.0)),
    "Parotid_L": ((0, 200, 0), (5.0, 90.0)),
    "Parotid_R": ((200, 0, 200), (5.0, 90.0)),
    "Esophagus": ((255, 128, 0), (1.0, 60.0)),
    "Larynx": ((0, 128, 255), (5.0, 90.0)),
    "Bone_Mandible": ((255, 255, 255), (20.0, 150.0)),
}
_PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
]  # fmt: skip


def default_roi_specs(roi_names: Sequence[str]) -> list[RoiSpec]:
    """ROIs labelled 1..N with TG-263 names, colours, ORGAN type, laterality, volume ranges."""
    specs = []
    for label, name in enumerate(roi_names, start=1):
        color, volume = ROI_DEFAULTS.get(name, (_PALETTE[(label - 1) % len(_PALETTE)], None))
        side = name_key(name)[1]
        specs.append(
            RoiSpec(
                label=label,
                name=name,
                color=color,
                interpreted_type="ORGAN",
                tg263_name=name,
                volume_range_cc=volume,
                laterality=side if side in ("L", "R") else None,  # type: ignore[arg-type]
            )
        )
    return specs


def _resolve_weights(source: Path, checkpoint: str = "best") -> tuple[Path, Path | None]:
    """(weights file, run folder or None) for a run folder or a weights file.

    In a run folder, ``checkpoint="best"`` takes ``best.safetensors`` (lowest
    validation loss; the last checkpoint when there is none) and ``"last"``
    takes ``checkpoint.safetensors`` (the weights the run ended with).
    """
    if checkpoint not in ("best", "last"):
        raise TrainingError(f"checkpoint {checkpoint!r} must be 'best' or 'last'")
    if source.is_dir():
        names: tuple[str, ...] = ("best.safetensors", "checkpoint.safetensors")
        if checkpoint == "last":
            names = ("checkpoint.safetensors",)
        for name in names:
            if (source / name).is_file():
                return source / name, source
        raise TrainingError(
            f"run folder {source} has neither best.safetensors nor checkpoint.safetensors; "
            "train first (contourd train) or pass the weights file"
        )
    if source.is_file():
        return source, None
    raise TrainingError(f"weights {source} do not exist")


def load_model_weights(path: Path) -> dict[str, torch.Tensor]:
    """UNet3D state dict from ``best.safetensors`` or a trainer checkpoint (``model.`` keys)."""
    tensors = load_file(str(path))
    if any(k.startswith("model.") for k in tensors):
        return {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    return dict(tensors)


def _predict_labels(
    net: UNet3D, case: TrainingCase, config: TrainingConfig, device: torch.device
) -> np.ndarray:
    img = torch.from_numpy(normalise_hu(case.image_hu, config.min_hu, config.max_hu))
    x, crop = pad_to_multiple(img[None, None], net.config.size_divisor)
    with torch.inference_mode():
        logits = net(x.to(device)).float()[crop]
    return logits[0].argmax(0).cpu().numpy()


def fp16_agreement(
    state: Mapping[str, torch.Tensor],
    config: TrainingConfig,
    cases: Sequence[TrainingCase],
    device: str = "cpu",
) -> dict[str, float]:
    """Per ROI, Dice between predictions with fp32 weights and with fp16-rounded weights.

    Both networks run in fp32 on whole volumes at the model grid, so the only
    difference is the rounding of the stored weights. ROIs predicted by
    neither network in any case count as 1.0.
    """
    dev = torch.device(device)
    nets = []
    for half in (False, True):
        net = UNet3D(config.architecture())
        net.load_state_dict(
            {
                k: (v.half().float() if half and v.is_floating_point() else v)
                for k, v in state.items()
            }
        )
        nets.append(net.to(dev).eval())
    inter = np.zeros(len(config.roi_names) + 1)
    total = np.zeros(len(config.roi_names) + 1)
    for case in cases:
        a, b = (_predict_labels(n, case, config, dev) for n in nets)
        for c in range(1, len(config.roi_names) + 1):
            inter[c] += 2 * np.logical_and(a == c, b == c).sum()
            total[c] += (a == c).sum() + (b == c).sum()
    return {
        name: float(inter[c] / total[c]) if total[c] else 1.0
        for c, name in enumerate(config.roi_names, start=1)
    }


def _history(run_dir: Path | None) -> list[dict[str, Any]]:
    if run_dir is None or not (run_dir / "checkpoint.json").is_file():
        return []
    meta = json.loads((run_dir / "checkpoint.json").read_text())
    return list(meta.get("history", []))


def training_summary_from_run(
    config: TrainingConfig,
    run_dir: Path | None,
    *,
    cases: int,
    validation_cases: int,
    dataset: str,
    notes: str = "",
    checkpoint: str = "best",
) -> TrainingSummary:
    """Counts, dates and settings of a run (no identifiers)."""
    finished: dt.date | None = None
    started: dt.date | None = None
    history = _history(run_dir)
    if run_dir is not None and (run_dir / "checkpoint.json").is_file():
        mtime = dt.datetime.fromtimestamp((run_dir / "checkpoint.json").stat().st_mtime)
        elapsed_s = float(history[-1].get("elapsed_s", 0.0)) if history else 0.0
        finished = mtime.date()
        started = (mtime - dt.timedelta(seconds=elapsed_s)).date()
    steps = int(history[-1]["step"]) if history else 0
    best = min(history, key=lambda h: h.get("val_loss", math.inf)) if history else None
    optimizer = (
        f"AdamW steps (lr {config.learning_rate} poly 0.9, weight decay {config.weight_decay})"
        if config.optimizer == "adamw"
        else f"SGD steps (Nesterov momentum {config.momentum}, lr {config.learning_rate} poly 0.9)"
    )
    warm = " warm-started from an earlier run's weights," if config.init_weights else ""
    recipe = (
        f"{steps} {optimizer},{warm} batch {config.batch_size}, patch "
        f"{list(config.patch_size)} voxels at "
        f"{list(config.spacing_mm)} mm, U-Net base {config.base_channels} channels, "
        f"{config.levels} levels, Dice+CE with partial labels, seed {config.seed}"
    )
    if checkpoint == "last" and history:
        recipe += f"; the final weights, step {steps}"
        if best is not None:
            recipe += f" (lowest validation loss was at step {int(best['step'])})"
    elif best is not None:
        recipe += f"; weights of step {int(best['step'])} (lowest validation loss "
        recipe += f"{float(best['val_loss']):.4f})"
    return TrainingSummary(
        cases=cases,
        validation_cases=validation_cases,
        dataset=dataset,
        started=started,
        finished=finished,
        notes=f"{recipe}. {notes}".strip(),
    )


def _write_history_csv(history: list[dict[str, Any]], path: Path) -> None:
    keys: list[str] = []
    for entry in history:
        keys += [k for k in entry if k not in keys]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        for entry in history:
            writer.writerow({k: entry.get(k, "") for k in keys})


def _readme(card: ModelCard, weights_note: str) -> str:
    lines = [f"# {card.name} {card.version}", "", card.description.strip(), ""]
    lines += ["## Intended use", "", card.intended_use.strip(), ""]
    if card.limitations:
        lines += ["## Limitations", "", card.limitations.strip(), ""]
    if card.training is not None:
        t = card.training
        counts = f"{t.cases} training cases, {t.validation_cases} validation cases"
        lines += ["## Training", "", f"{counts} ({t.dataset}); {t.started} to {t.finished}.",
                  "", t.notes, ""]  # fmt: skip
    lines += ["## Weights", "", weights_note, ""]
    windows = (
        f"; windows of {list(card.preprocessing.patch_size)} voxels, Gaussian weights"
        if card.preprocessing is not None
        else ""
    )
    ran = f"{card.inference.describe().capitalize()}{windows}; the evaluation below ran the same."
    lines += ["## Inference", "", ran, ""]
    if card.evaluation is not None and card.evaluation.per_roi:
        ev = card.evaluation
        lines += [f"## Evaluation ({ev.cases} cases, {ev.dataset})", "",
                  "Means over cases; metric definitions in contourd's docs/training.md.", "",
                  "| ROI | cases | Dice | HD95 mm | MSD mm | surface Dice 2 mm |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for roi, m in ev.per_roi.items():
            lines.append(
                f"| {roi} | {m.cases} | {_fmt(m.dice, 3)} | {_fmt(m.hd95_mm, 1)} | "
                f"{_fmt(m.mean_surface_distance_mm, 1)} | {_fmt(m.surface_dice, 3)} |"
            )
        dices = [m.dice for m in ev.per_roi.values() if m.dice is not None]
        if dices:
            lines += ["", f"Mean Dice over ROIs: {float(np.mean(dices)):.3f}"]
        distances = [
            v
            for m in ev.per_roi.values()
            for v in (m.hd95_mm, m.mean_surface_distance_mm)
            if v is not None
        ]
        if any(math.isinf(v) for v in distances):
            lines += [
                "",
                "A distance of `inf` means the model missed that organ entirely in at least "
                "one case (no surface to measure from); the evaluation report's medians and "
                "per-case table show how often.",
            ]
    return "\n".join(lines) + "\n"


class _CardDumper(yaml.SafeDumper):
    """Block style, except short lists of scalars (colours, spacings) in flow style."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = len(data) <= 4 and all(isinstance(v, (int, float, str)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_CardDumper.add_representer(list, _represent_list)


def dump_card_yaml(card_dict: Mapping[str, Any]) -> str:
    """YAML text of a card dict, keys in schema order, ``[r, g, b]`` lists on one line."""
    return yaml.dump(dict(card_dict), Dumper=_CardDumper, sort_keys=False, allow_unicode=True)


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def export_package(
    source: Path,
    config: TrainingConfig,
    out_dir: Path,
    *,
    name: str,
    version: str,
    description: str,
    intended_use: str = (
        "Automatic organ-at-risk contours on CT for radiotherapy planning, for review and "
        "editing by a clinician before any use."
    ),
    limitations: str = "",
    originator: str = "contourd project",
    institution: str = "",
    license: str = "",
    modality: str = "CT",
    body_site: str = "HEADNECK",
    rois: Sequence[RoiSpec] | None = None,
    training: TrainingSummary | None = None,
    evaluation: Evaluation | None = None,
    largest_component: bool = True,
    fp16: bool = True,
    fp16_check_cases: Sequence[TrainingCase] = (),
    min_fp16_agreement: float = 0.99,
    fp16_agreement_result: Mapping[str, float] | None = None,
    loss_curve_dest: Path | None = None,
    overwrite: bool = False,
    checkpoint: str = "best",
) -> Path:
    """Write a model package folder and check it like an import would.

    Parameters
    ----------
    source
        A run folder (``best.safetensors``, else ``checkpoint.safetensors``) or a
        weights file.
    config
        The run's settings (architecture, spacing, patch, normalisation, ROI names).
    out_dir
        Package folder to create.
    name, version, description
        Card identity (name: lower case; version: semver).
    rois
        ROI specs; default :func:`default_roi_specs` of ``config.roi_names``.
    training
        Training summary; default: counts unknown (0) with the run's settings.
    evaluation
        Validation metrics per ROI (e.g. ``EvaluationResult.to_card_evaluation()``).
    largest_component
        Post-processing for every ROI: keep the largest connected component.
    fp16
        Store fp16 weights (half the size) when :func:`fp16_agreement` on
        ``fp16_check_cases`` is at least ``min_fp16_agreement`` for every ROI
        (no cases: fp16 without a check).
    fp16_agreement_result
        A :func:`fp16_agreement` already measured (with its number of cases in
        ``fp16_check_cases``' place, pass the cases too or just the result).
    loss_curve_dest
        Where to copy the run's ``loss_curve.png`` (outside the package).
    overwrite
        Replace an existing ``out_dir``.
    checkpoint
        From a run folder: ``"best"`` (lowest validation loss) or ``"last"``
        (the weights the run ended with).

    Returns
    -------
    Path
        ``out_dir``.

    Raises
    ------
    TrainingError
        Missing weights or an existing ``out_dir``.
    ModelPackageError
        When the written package fails the import checks.
    """
    weights_path, run_dir = _resolve_weights(source, checkpoint)
    state = load_model_weights(weights_path)
    card_rois = list(rois) if rois is not None else default_roi_specs(config.roi_names)
    card = ModelCard(
        name=name,
        version=version,
        description=description,
        intended_use=intended_use,
        limitations=limitations,
        originator=originator,
        institution=institution,
        license=license,
        modality=modality,  # type: ignore[arg-type]
        body_site=body_site,
        model_type="unet",
        rois=card_rois,
        preprocessing=Preprocessing(
            spacing_mm=config.spacing_mm,
            orientation="LPS",
            normalization=CtClipScale(min_hu=config.min_hu, max_hu=config.max_hu),
            patch_size=config.patch_size,
        ),
        architecture=config.architecture(),
        postprocessing={
            r.label: RoiPostprocessing(largest_component=largest_component) for r in card_rois
        },
        training=training
        or training_summary_from_run(
            config, run_dir, cases=0, validation_cases=0, dataset="", checkpoint=checkpoint
        ),
        evaluation=evaluation,
    )
    if out_dir.exists():
        if not overwrite:
            raise TrainingError(f"{out_dir} exists; pass overwrite=True or choose a new folder")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)

    use_fp16 = fp16
    weights_note = "fp32 weights."
    if fp16 and (fp16_check_cases or fp16_agreement_result):
        agreement = dict(fp16_agreement_result or {}) or fp16_agreement(
            state, config, fp16_check_cases
        )
        worst = min(agreement.values())
        use_fp16 = worst >= min_fp16_agreement
        weights_note = (
            f"{'fp16' if use_fp16 else 'fp32'} weights: on the validation "
            f"cases, predictions with fp16-rounded weights agree with fp32 at Dice "
            f">= {worst:.4f} per ROI (threshold {min_fp16_agreement})."
        )
        log.info("fp16 agreement per ROI: %s", agreement)
    elif fp16:
        weights_note = "fp16 weights (not checked against fp32 on data)."
    tensors = {
        k: (v.half() if use_fp16 and v.is_floating_point() else v.float() if v.is_floating_point()
            else v).contiguous()
        for k, v in state.items()
    }  # fmt: skip
    save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    card_dict = card.model_dump(mode="json", exclude_none=True)
    header = (
        f"# Model card of {name} {version}, written by training.package_export.\n"
        "# Conventions: spacing_mm [x, y, z] mm, patch_size [z, y, x] voxels, LPS.\n"
    )
    (out_dir / CARD_FILE).write_text(header + dump_card_yaml(card_dict))
    (out_dir / "README.md").write_text(_readme(card, weights_note))
    history = _history(run_dir)
    if history:
        _write_history_csv(history, out_dir / "training_history.csv")
    if (
        loss_curve_dest is not None
        and run_dir is not None
        and (run_dir / "loss_curve.png").is_file()
    ):
        loss_curve_dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_dir / "loss_curve.png", loss_curve_dest)
    with open_package(out_dir) as checked:
        for warning in checked.warnings:
            log.warning("package %s: %s", out_dir, warning)
    return out_dir


def package_run(
    config: TrainingConfig,
    run_dir: Path,
    out_dir: Path,
    *,
    name: str,
    version: str,
    description: str,
    train_cases: int,
    validation: Sequence[TrainingCase],
    dataset: str,
    evaluate_dir: Path | None = None,
    evaluate_case_ids: Sequence[str] | None = None,
    device: str = "auto",
    num_threads: int | None = None,
    report_dir: Path | None = None,
    notes: str = "",
    fp16_check_cases: int = 4,
    checkpoint: str = "best",
    **card_fields: Any,
) -> Path:
    """Export a run, evaluate the package as shipped, and write the card with the results.

    Steps: measure fp16 agreement on the first ``fp16_check_cases`` of
    ``validation`` (model grid); export; run
    :func:`training.evaluate.evaluate_model` on ``evaluate_dir`` (restricted
    to ``evaluate_case_ids``) with the exported package through the inference
    pipeline, comparing on each case's original grid; export again with the
    card's ``evaluation`` filled (same weights); write the report to
    ``report_dir`` when given.
    """
    from training.evaluate import evaluate_model, format_table, load_package_model, write_report

    weights_path, _ = _resolve_weights(run_dir, checkpoint)
    agreement = (
        fp16_agreement(load_model_weights(weights_path), config, validation[:fp16_check_cases])
        if validation
        else None
    )
    summary = training_summary_from_run(
        config, run_dir, cases=train_cases, validation_cases=len(validation), dataset=dataset,
        notes=notes, checkpoint=checkpoint,
    )  # fmt: skip
    common: dict[str, Any] = dict(
        name=name, version=version, description=description, training=summary,
        fp16_agreement_result=agreement, overwrite=True, checkpoint=checkpoint, **card_fields,
    )  # fmt: skip
    export_package(run_dir, config, out_dir, **common)
    if evaluate_dir is None:
        return out_dir
    model = load_package_model(out_dir)
    result = evaluate_model(
        model, evaluate_dir, case_ids=evaluate_case_ids, device=device, num_threads=num_threads,
        mapping=config.roi_mapping,
    )  # fmt: skip
    log.info("evaluation of %s %s:\n%s", name, version, format_table(result))
    if report_dir is not None:
        write_report(result, report_dir)
    loss_dest = report_dir / "loss_curve.png" if report_dir is not None else None
    export_package(
        run_dir, config, out_dir, evaluation=result.to_card_evaluation(),
        loss_curve_dest=loss_dest, **common,
    )  # fmt: skip
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """``python -m training.package_export``: package a finished run (see docs/training.md)."""
    import argparse

    from training.config import load_training_config
    from training.datasets import load_training_data

    parser = argparse.ArgumentParser(description=package_run.__doc__)
    parser.add_argument("--config", type=Path, required=True, help="the run's training YAML")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="package folder to write")
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--description", required=True)
    parser.add_argument("--limitations", default="")
    parser.add_argument("--notes", default="", help="appended to the card's training notes")
    parser.add_argument("--report", type=Path, default=None, help="evaluation report folder")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--checkpoint",
        choices=["best", "last"],
        default="best",
        help="best: lowest validation loss (default); last: the weights the run ended with",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = load_training_config(args.config)
    cache = args.run_dir / "cache"
    train, val = load_training_data(config, cache_dir=cache if cache.is_dir() else None)
    same = config.validation_dir.resolve() == config.train_dir.resolve()
    package_run(
        config, args.run_dir, args.out, name=args.name, version=args.version,
        description=args.description, limitations=args.limitations, train_cases=len(train),
        validation=val, dataset=f"{config.train_dir.name} / {config.validation_dir.name}",
        evaluate_dir=config.validation_dir,
        evaluate_case_ids=[c.case_id for c in val] if same else None,
        device=args.device, num_threads=args.threads, report_dir=args.report, notes=args.notes,
        checkpoint=args.checkpoint,
    )  # fmt: skip
    return 0


if __name__ == "__main__":  # errors end as one line, as in `contourd`
    raise SystemExit(cli_error_exit("training.package_export", main))
