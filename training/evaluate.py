"""Evaluate a model on a labelled dataset before approval.

The model runs exactly as it would in the clinic
(:func:`inference.pipeline.segment_series`: resampling to the card's LPS grid
and spacing, the U-Net, post-processing, masks back on the SOURCE grid), and
its masks are compared with the reference contours ON THE ORIGINAL GRID of
each case with :mod:`training.metrics` (Dice, HD95, mean surface distance,
surface Dice at ``tolerance_mm``).

Datasets: a NIfTI folder in the OpenKBP layout (``<case>/ct.nii.gz`` +
``<case>/<ROI>.nii.gz``; see :mod:`training.openkbp_dataset`) or a DICOM export
(see :mod:`training.dicom_dataset`). Reference ROI names are matched to the
card's ROI names by :mod:`training.roi_mapping` (``LeftParotid`` ->
``Parotid_L``). An organ not contoured in a case is not scored there.

:func:`write_report` writes ``report.md``, ``report.html``, ``metrics.csv``,
``summary.json``, box plots and contour overlays (worst and median case per
ROI) for the physicist who approves the model.
"""

from __future__ import annotations

import csv
import html
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk  # noqa: N813
import torch
from safetensors.torch import load_file

from contourd.errors import TrainingError
from inference.pipeline import segment_series
from inference.predictor import PredictorCache
from inference.volume import ImageVolume
from model_store.card import Evaluation, ModelCard, RoiMetrics, RoiSpec
from model_store.package import WEIGHTS_FILE, open_package
from training.dicom_dataset import SourceCase, find_case_files, is_dicom_dataset, load_source_case
from training.dicom_dataset import list_case_dirs as list_dicom_case_dirs
from training.metrics import MaskMetrics, compute_metrics
from training.openkbp_dataset import BLANK_CT_MAX_HU, is_blank_ct, list_cases
from training.roi_mapping import RoiNameMapper

log = logging.getLogger(__name__)

METRIC_NAMES = ("dice", "hd95_mm", "msd_mm", "surface_dice")


@dataclass
class PackageModel:
    """A model package run straight from its folder (not imported, not approved).

    Satisfies what :func:`inference.pipeline.segment_series` needs of an
    approved model; outputs of such a run are for evaluation only.
    """

    card: ModelCard
    weights_sha256: str
    state_dict: dict[str, torch.Tensor]

    def effective_rois(self) -> list[RoiSpec]:
        return list(self.card.rois)

    def load_state_dict(self) -> dict[str, torch.Tensor]:
        return self.state_dict


def load_package_model(path: Path) -> PackageModel:
    """Check a package folder or zip (every import check) and load its weights."""
    with open_package(path) as checked:
        if checked.card.model_type not in ("unet", "nnunet") or checked.weights_sha256 is None:
            raise TrainingError(
                f"{path} is a {checked.card.model_type!r} model; only U-Net and nnU-Net packages "
                "are evaluated"
            )
        state = load_file(str(checked.root / WEIGHTS_FILE))
        return PackageModel(checked.card, checked.weights_sha256, state)


@dataclass
class CaseResult:
    """Metrics of one case: ROI name -> metrics (only ROIs contoured in the reference)."""

    case_id: str
    metrics: dict[str, MaskMetrics]
    seconds: float
    warnings: list[str] = field(default_factory=list)


@dataclass
class EvaluationResult:
    """Everything :func:`evaluate_model` measured."""

    model: str
    dataset: str
    roi_names: list[str]
    cases: list[CaseResult]
    tolerance_mm: float
    overlays: dict[str, list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]] = field(
        default_factory=dict
    )
    skipped_cases: list[str] = field(default_factory=list)
    """Cases left out because their CT is blank (see :func:`is_blank_ct`)."""

    def values(self, roi: str, metric: str) -> np.ndarray:
        """One metric of one ROI over the cases that have the ROI."""
        return np.array(
            [getattr(c.metrics[roi], metric) for c in self.cases if roi in c.metrics], dtype=float
        )

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per ROI: ``cases`` and, per metric, ``median``, ``q1``, ``q3``, ``mean``."""
        out: dict[str, dict[str, Any]] = {}
        for roi in self.roi_names:
            entry: dict[str, Any] = {"cases": int(self.values(roi, "dice").size)}
            for metric in METRIC_NAMES:
                v = self.values(roi, metric)
                if v.size == 0:
                    entry[metric] = None
                    continue
                q1, med, q3 = _percentiles(v, (25, 50, 75))
                entry[metric] = {"median": med, "q1": q1, "q3": q3, "mean": float(np.mean(v))}
            out[roi] = entry
        return out

    def mean_dice(self) -> float:
        """Mean over ROIs of each ROI's mean Dice (ROIs with cases only)."""
        means = [float(np.mean(v)) for r in self.roi_names if (v := self.values(r, "dice")).size]
        return float(np.mean(means)) if means else math.nan

    def to_card_evaluation(self) -> Evaluation:
        """The card's ``evaluation`` section (means over cases, as the card defines)."""
        per_roi = {}
        for roi, entry in self.summary().items():
            if not entry["cases"]:
                continue
            per_roi[roi] = RoiMetrics(
                dice=round(entry["dice"]["mean"], 4),
                hd95_mm=_round_or_inf(entry["hd95_mm"]["mean"]),
                mean_surface_distance_mm=_round_or_inf(entry["msd_mm"]["mean"]),
                surface_dice=round(entry["surface_dice"]["mean"], 4),
                cases=entry["cases"],
            )
        dataset = self.dataset
        if self.skipped_cases:
            dataset += f" ({len(self.skipped_cases)} blank CTs left out)"
        return Evaluation(dataset=dataset, cases=len(self.cases), per_roi=per_roi)


def _percentiles(values: np.ndarray, q: Sequence[float]) -> tuple[float, ...]:
    """Linear-interpolation percentiles that stay ``inf`` where infinite values weigh in."""
    big = 1e30
    finite = np.where(np.isinf(values), big, values)
    return tuple(math.inf if p >= big / 2 else float(p) for p in np.percentile(finite, q))


def _round_or_inf(value: float) -> float:
    return value if math.isinf(value) else round(value, 2)


# -- datasets on their source grid ----------------------------------------------------------
def volume_from_sitk(image: sitk.Image, case_id: str, modality: str = "CT") -> ImageVolume:
    """A SimpleITK image as an :class:`ImageVolume` (array ``[z, y, x]``, affine to LPS)."""
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(np.array(image.GetSpacing(), dtype=np.float64))
    affine[:3, 3] = np.array(image.GetOrigin(), dtype=np.float64)
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    return ImageVolume(
        array=array, affine=affine, headers=[], series_uid=case_id, modality=modality
    )


def load_nifti_source_case(case_dir: Path, mapper: RoiNameMapper) -> SourceCase:
    """A NIfTI case (``ct.nii.gz`` + ``<ROI>.nii.gz``) on its own grid, ROIs mapped by name."""
    ct_path = case_dir / "ct.nii.gz"
    if not ct_path.is_file():
        raise TrainingError(f"case {case_dir} has no ct.nii.gz; every case folder needs one")
    ct = sitk.ReadImage(str(ct_path), sitk.sitkFloat32)
    volume = volume_from_sitk(ct, case_dir.name)
    masks: dict[str, np.ndarray] = {}
    notes: list[str] = []
    for path in sorted(case_dir.glob("*.nii.gz")):
        stem = path.name[: -len(".nii.gz")]
        target = mapper.target_for(stem) if stem != "ct" else None
        if target is None or target in masks:
            continue
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image)
        if array.shape != volume.shape:
            raise TrainingError(
                f"{path} has shape {array.shape}, the CT {volume.shape}; masks must be on the "
                "CT grid"
            )
        if array.any():
            masks[target] = array > 0
        else:
            notes.append(f"{stem} is empty; unknown in this case")
    return SourceCase(case_dir.name, volume, masks, notes)


def iter_source_cases(
    dataset_dir: Path,
    roi_names: Sequence[str],
    *,
    mapping: Mapping[str, Sequence[str]] | None = None,
    limit: int | None = None,
    case_ids: Sequence[str] | None = None,
) -> Iterator[SourceCase]:
    """Cases of a NIfTI or DICOM dataset on their source grids, one at a time.

    ``case_ids`` restricts to those cases (folder names); ``limit`` takes the first N.
    """
    mapper = RoiNameMapper(roi_names, mapping)
    wanted = set(case_ids) if case_ids is not None else None
    if is_dicom_dataset(dataset_dir):
        dirs = [d for d in list_dicom_case_dirs(dataset_dir) if wanted is None or d.name in wanted]
        for case_dir in dirs[:limit]:
            yield load_source_case(find_case_files(case_dir), mapper)
    else:
        ids = [c for c in list_cases(dataset_dir) if wanted is None or c in wanted]
        for case_id in ids[:limit]:
            yield load_nifti_source_case(dataset_dir / case_id, mapper)


# -- evaluation ---------------------------------------------------------------------------
def evaluate_model(
    model: Any,
    dataset_dir: Path,
    *,
    tolerance_mm: float = 2.0,
    mapping: Mapping[str, Sequence[str]] | None = None,
    limit: int | None = None,
    case_ids: Sequence[str] | None = None,
    device: str = "auto",
    num_threads: int | None = None,
    progress: Callable[[int, str], None] | None = None,
    max_whole_volume_voxels: int | None = None,
    on_prediction: Callable[[str, dict[int, np.ndarray]], None] | None = None,
) -> EvaluationResult:
    """Run ``model`` over every case of ``dataset_dir`` and score it.

    Parameters
    ----------
    model
        An ``ApprovedModel`` (from the registry, any status) or a
        :class:`PackageModel`.
    dataset_dir
        NIfTI (OpenKBP layout) or DICOM dataset folder.
    tolerance_mm
        Surface Dice tolerance.
    mapping
        Extra ROI name mapping ``{card ROI name: [dataset names]}``.
    limit
        Evaluate only the first ``limit`` cases.
    case_ids
        Evaluate only these cases (folder names).
    device, num_threads
        Passed to the pipeline.
    progress
        Called with ``(case index, case id)`` after each case.
    max_whole_volume_voxels
        Passed to the pipeline: 1 forces sliding-window inference.
    on_prediction
        Called with ``(case id, {label: predicted mask})`` for each case, the masks
        boolean ``[z, y, x]`` on the case's source grid (e.g. to compare two runs).
    """
    card: ModelCard = model.card
    roi_names = [r.name for r in sorted(card.rois, key=lambda r: r.label)]
    cache = PredictorCache(max_models=1)
    cases: list[CaseResult] = []
    skipped: list[str] = []
    overlays: dict[str, list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]] = {}
    for i, source in enumerate(
        iter_source_cases(dataset_dir, roi_names, mapping=mapping, limit=limit, case_ids=case_ids)
    ):
        t0 = time.perf_counter()
        if is_blank_ct(source.volume.array):
            log.warning(
                "case %s: the CT is blank (no voxel above %s HU); left out of the evaluation. "
                "Fix or remove the case in the dataset",
                source.case_id,
                BLANK_CT_MAX_HU,
            )
            skipped.append(source.case_id)
            continue
        result = segment_series(
            source.volume,
            model,
            device=device,
            predictor_cache=cache,
            num_threads=num_threads,
            max_whole_volume_voxels=max_whole_volume_voxels,
        )
        predicted = {r.label: r.mask for r in result.rois}
        if on_prediction is not None:
            on_prediction(source.case_id, predicted)
        spacing_zyx = source.volume.spacing_mm[::-1]
        metrics: dict[str, MaskMetrics] = {}
        for roi in sorted(card.rois, key=lambda r: r.label):
            ref = source.masks.get(roi.name)
            if ref is None:
                continue
            pred = predicted.get(roi.label, np.zeros(source.volume.shape, dtype=bool))
            metrics[roi.name] = compute_metrics(pred, ref, spacing_zyx, tolerance_mm)
            overlays.setdefault(roi.name, []).append(
                (source.case_id, *_overlay_slice(source.volume.array, ref, pred))
            )
        cases.append(CaseResult(source.case_id, metrics, time.perf_counter() - t0, result.warnings))
        log.info(
            "case %s: %s",
            source.case_id,
            ", ".join(f"{k} Dice {m.dice:.3f}" for k, m in metrics.items()),
        )
        if progress is not None:
            progress(i, source.case_id)
    if not cases:
        raise TrainingError(f"dataset {dataset_dir} has no cases to evaluate")
    return EvaluationResult(
        model=f"{card.name} {card.version}",
        dataset=dataset_dir.name,
        roi_names=roi_names,
        cases=cases,
        tolerance_mm=tolerance_mm,
        overlays=overlays,
        skipped_cases=skipped,
    )


def _overlay_slice(
    image: np.ndarray, ref: np.ndarray, pred: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The source slice with the most reference area: (image, ref, pred) 2D arrays."""
    k = int(np.argmax(ref.sum(axis=(1, 2))))
    return image[k].copy(), ref[k].copy(), pred[k].copy()


# -- report -------------------------------------------------------------------------------
def format_table(result: EvaluationResult) -> str:
    """Plain-text table: per ROI median [IQR] of each metric, then the mean Dice."""
    tol = f"SDice@{result.tolerance_mm:g}mm"
    header = f"{'ROI':<16}{'n':>4}  {'Dice':<22}{'HD95 mm':<22}{'MSD mm':<22}{tol}"
    lines = [header, "-" * len(header)]
    for roi, entry in result.summary().items():
        if not entry["cases"]:
            lines.append(f"{roi:<16}{0:>4}  (not contoured in any case)")
            continue
        cells = []
        for metric in METRIC_NAMES:
            m = entry[metric]
            d = 1 if metric.endswith("_mm") else 3
            cells.append(f"{m['median']:.{d}f} [{m['q1']:.{d}f}-{m['q3']:.{d}f}]".ljust(22))
        lines.append((f"{roi:<16}{entry['cases']:>4}  " + "".join(cells)).rstrip())
    lines.append(f"mean Dice over ROIs (mean per ROI): {result.mean_dice():.3f}")
    if result.skipped_cases:
        lines.append(
            f"left out, blank CT: {', '.join(result.skipped_cases)} "
            f"({len(result.skipped_cases)} of {len(result.skipped_cases) + len(result.cases)})"
        )
    lines.append("cells: median [first quartile - third quartile] over cases")
    return "\n".join(lines)


def write_report(result: EvaluationResult, out_dir: Path) -> Path:
    """Write the report files into ``out_dir``; return ``report.html``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    with open(out_dir / "metrics.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case", "roi", *METRIC_NAMES, "volume_pred_cc", "volume_ref_cc"])
        for case in result.cases:
            for roi, m in case.metrics.items():
                writer.writerow(
                    [case.case_id, roi, *(f"{getattr(m, k):.4f}" for k in METRIC_NAMES),
                     f"{m.volume_pred_cc:.2f}", f"{m.volume_ref_cc:.2f}"]
                )  # fmt: skip
    (out_dir / "summary.json").write_text(
        json.dumps(
            {
                "model": result.model,
                "dataset": result.dataset,
                "cases": len(result.cases),
                "tolerance_mm": result.tolerance_mm,
                "mean_dice": result.mean_dice(),
                "per_roi": summary,
            },
            indent=1,
        )  # fmt: skip
    )
    rois = [r for r in result.roi_names if summary[r]["cases"]]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.5))
    titles = ["Dice", "HD95 (mm)", "Mean surface distance (mm)", "Surface Dice"]
    for ax, metric, title in zip(axes, METRIC_NAMES, titles, strict=True):
        data = [v[np.isfinite(v)] for v in (result.values(r, metric) for r in rois)]
        ax.boxplot(data, showfliers=True)
        ax.set_xticks(range(1, len(rois) + 1), rois, rotation=45, ha="right", fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "boxplots.png", dpi=80)
    plt.close(fig)

    overlay_files: dict[str, str] = {}
    for roi in rois:
        entries = result.overlays.get(roi, [])
        dices = result.values(roi, "dice")
        if not entries or len(entries) != dices.size:
            continue
        order = np.argsort(dices)
        picks = [("worst", int(order[0])), ("median", int(order[len(order) // 2]))]
        fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
        for ax, (what, idx) in zip(axes, picks, strict=True):
            case_id, img, ref, pred = entries[idx]
            ax.imshow(np.clip(img, -160, 240), cmap="gray")
            if ref.any():
                ax.contour(ref.astype(float), levels=[0.5], colors="lime", linewidths=1)
            if pred.any():
                ax.contour(pred.astype(float), levels=[0.5], colors="red", linewidths=1)
            ax.set_title(f"{what}: case {case_id}, Dice {dices[idx]:.3f}", fontsize=9)
            ax.axis("off")
        fig.suptitle(f"{roi}: reference (green) vs model (red)", fontsize=10)
        fig.tight_layout()
        name = f"overlay_{''.join(c if c.isalnum() else '_' for c in roi)}.png"
        fig.savefig(out_dir / name, dpi=80)
        plt.close(fig)
        overlay_files[roi] = name

    table = format_table(result)
    md = [
        f"# Evaluation of {result.model} on {result.dataset}",
        "",
        f"{len(result.cases)} cases. Masks compared on each case's original grid. "
        "Definitions: docs/training.md (Dice; HD95 = max of the directed 95th percentiles "
        "of boundary-voxel distances; MSD = mean of pooled boundary distances; surface Dice "
        f"at {result.tolerance_mm:g} mm).",
        "",
        "```",
        table,
        "```",
        "",
        "![box plots](boxplots.png)",
        "",
    ]
    md += [f"![{roi}]({f})" for roi, f in overlay_files.items()]
    md += ["", "Per case and ROI: metrics.csv. Warnings from the pipeline:", ""]
    md += [f"- case {c.case_id}: {w}" for c in result.cases for w in c.warnings] or ["- none"]
    (out_dir / "report.md").write_text("\n".join(md) + "\n")

    rows = []
    for roi, entry in summary.items():
        if not entry["cases"]:
            continue
        cells = "".join(
            f"<td>{entry[m]['median']:.3f} [{entry[m]['q1']:.2f}&ndash;{entry[m]['q3']:.2f}]</td>"
            for m in METRIC_NAMES
        )
        rows.append(f"<tr><td>{html.escape(roi)}</td><td>{entry['cases']}</td>{cells}</tr>")
    images = "".join(
        f'<figure><img src="{f}" alt="{html.escape(r)}"></figure>' for r, f in overlay_files.items()
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>Evaluation of {html.escape(result.model)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}
td,th{{padding:3px 8px;border-bottom:1px solid #ccc}}</style></head><body>
<h1>Evaluation of {html.escape(result.model)} on {html.escape(result.dataset)}</h1>
<p>{len(result.cases)} cases; median [IQR] over cases; compared on the original grid.
Mean Dice over ROIs: {result.mean_dice():.3f}.</p>
<table><tr><th>ROI</th><th>n</th><th>Dice</th><th>HD95 mm</th><th>MSD mm</th>
<th>Surface Dice @{result.tolerance_mm:g} mm</th></tr>{"".join(rows)}</table>
<img src="boxplots.png" alt="box plots" style="width:100%">{images}
<p>Per case and ROI: <a href="metrics.csv">metrics.csv</a>.</p></body></html>
"""
    (out_dir / "report.html").write_text(page)
    return out_dir / "report.html"
