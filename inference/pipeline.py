"""One series, one or more approved models -> ROI masks on the source grid.

:func:`segment_series` is the Python API the daemon's worker and
``contourd segment`` both call. Steps and their timing keys:

``load``           DICOM files -> :class:`~inference.volume.ImageVolume`
``<model>.preprocess``   resample onto the card's LPS grid, normalise
``<model>.network``      network output (warm predictor; U-Net or nnU-Net)
``<model>.postprocess``  probabilities -> source-grid masks, clean-up
``<model>.body_outline`` the classical body model (source grid directly)
Which runtime draws a model's masks follows its card's ``model_type``
(:mod:`inference.runtime`).

``sanity``         volume / field-of-view edge / laterality warnings
``total``

Several models: ROIs are merged in the order of ``models``; when two models
output the same ROI name (case-insensitive) the earlier model's ROI is kept
and a warning says which was dropped. ROI numbers (``RoiMask.label``) are
renumbered 1..N in output order when more than one model contributes, so
they stay unique in the RTSTRUCT. Empty ROIs are reported in
``empty_rois`` and ``warnings`` and are not returned as masks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from contourd.errors import InferenceError
from inference.outputs import identify_algorithm
from inference.predictor import Precision, PredictorCache
from inference.roi_mask import RoiMask
from inference.runtime import RunContext, run_model
from inference.sanity_checks import RoiExpectation, check_masks
from inference.volume import ImageVolume, load_series

log = logging.getLogger(__name__)


class SegmentationModel(Protocol):
    """What the pipeline needs of ``model_store.registry.ApprovedModel``."""

    @property
    def card(self) -> Any: ...

    @property
    def weights_sha256(self) -> str | None: ...

    def effective_rois(self) -> Sequence[Any]: ...

    def load_state_dict(self) -> Any: ...


@dataclass
class SegmentationResult:
    """Masks of one series.

    Parameters
    ----------
    volume
        The source volume (its ``headers`` go to the RTSTRUCT/SEG writers).
    rois
        Non-empty masks on the source grid, in output order.
    warnings
        Sanity-check findings, dropped name clashes, empty ROIs, load notes.
    timings_s
        Seconds per step (see the module docstring).
    models
        ``"name version"`` of each model that ran, in order.
    empty_rois
        Names of ROIs the models found nothing for.
    run_parameters
        ``"name version"`` -> how a runtime ran that model (``key=value``
        items, e.g. the nnU-Net mode); empty for models run as their card says
        with nothing to add.
    """

    volume: ImageVolume
    rois: list[RoiMask]
    warnings: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    empty_rois: list[str] = field(default_factory=list)
    run_parameters: dict[str, tuple[str, ...]] = field(default_factory=dict)


def collect_files(source: Path | Sequence[Path]) -> list[Path]:
    """Files under ``source`` (a file, a folder searched recursively, or a list of either)."""
    items = [source] if isinstance(source, (str, Path)) else list(source)
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise InferenceError(f"{path} is neither a file nor a folder; pass DICOM files")
    return files


def _effective_by_label(model: SegmentationModel) -> dict[int, Any]:
    return {int(roi.label): roi for roi in model.effective_rois()}


def segment_series(
    source: Path | Sequence[Path] | ImageVolume,
    models: SegmentationModel | Sequence[SegmentationModel],
    *,
    device: str = "auto",
    predictor_cache: PredictorCache | None = None,
    precision: Precision = "auto",
    num_threads: int | None = None,
    max_whole_volume_voxels: int | None = None,
    nnunet_mode: Literal["exact", "fast"] | None = None,
    nnunet_mirror: bool | None = None,
) -> SegmentationResult:
    """Segment one series with one or more approved models.

    Parameters
    ----------
    source
        A series folder, its files, or an already loaded volume.
    models
        Approved model(s) (``ApprovedModel`` from the registry).
    device
        ``"auto"``, ``"cpu"`` or ``"cuda[:n]"``.
    predictor_cache
        Keeps U-Nets warm between calls (the worker passes one; default: a
        fresh cache for this call).
    precision
        Autocast precision for the network (see :mod:`inference.predictor`).
    num_threads
        torch CPU threads (``None``: torch's default).
    max_whole_volume_voxels
        Overrides the card's ``inference`` strategy: padded inputs of at most
        this many voxels run in one pass, bigger ones by sliding window
        (``None``: the card decides; ``1`` forces the window).
    nnunet_mode
        ``"exact"`` or ``"fast"`` for nnU-Net models (``None``: each card's
        ``nnunet.mode``; a routing rule's ``nnunet_mode`` comes here).
    nnunet_mirror
        Mirrored test-time augmentation on or off for nnU-Net models
        (``None``: the mode's default).

    Raises
    ------
    SeriesGeometryError
        The series is not a volume.
    InferenceError
        A model does not fit the series (modality) or the network failed.
    """
    t_start = time.perf_counter()
    model_list = [models] if not isinstance(models, Sequence) else list(models)
    if not model_list:
        raise InferenceError("no model given; pass at least one approved model")
    timings: dict[str, float] = {}
    if isinstance(source, ImageVolume):
        volume = source
    else:
        t0 = time.perf_counter()
        volume = load_series(collect_files(source))
        timings["load"] = time.perf_counter() - t0
    warnings = list(volume.notes)
    cache = predictor_cache if predictor_cache is not None else PredictorCache()
    # RunContext's fields after the cache and timings are this function's options, in order.
    options = (device, precision, num_threads, max_whole_volume_voxels, nnunet_mode, nnunet_mirror)
    context = RunContext(cache, timings, *options)

    rois: list[RoiMask] = []
    expectations: list[tuple[RoiExpectation, RoiMask]] = []
    empty: list[str] = []
    used: list[str] = []
    for model in model_list:
        card = model.card
        tag = f"{card.name} {card.version}"
        if card.modality != volume.modality:
            raise InferenceError(
                f"model {tag} is for {card.modality} but series {volume.series_uid} is "
                f"{volume.modality}; route {volume.modality} series to a {volume.modality} model"
            )
        used.append(tag)
        effective = _effective_by_label(model)
        masks = run_model(model, volume, context)
        algorithm = identify_algorithm([model], context.run_parameters)
        taken = {r.name.lower(): r for r in rois}
        for label in sorted(masks):
            spec = effective.get(label) or card.roi(label)
            mask = masks[label]
            if spec.name.lower() in taken:
                warnings.append(
                    f"ROI name {spec.name!r} from model {tag} clashes with the same name from "
                    "an earlier model in the list; kept the earlier one"
                )
                continue
            if not mask.any():
                empty.append(spec.name)
                warnings.append(f"ROI {spec.name!r} from model {tag} is empty; not written")
                continue
            roi = RoiMask(
                name=spec.name,
                mask=mask,
                color_rgb=tuple(int(c) for c in spec.color),  # type: ignore[arg-type]
                interpreted_type=str(spec.interpreted_type),
                label=label,
                tg263_name=spec.tg263_name,
                algorithm=algorithm,
            )
            rois.append(roi)
            taken[spec.name.lower()] = roi
            expectations.append(
                (
                    RoiExpectation(
                        name=spec.name,
                        volume_range_cc=spec.volume_range_cc,
                        laterality=spec.laterality,
                        interpreted_type=str(spec.interpreted_type),
                    ),
                    roi,
                )
            )
    if len(model_list) > 1:
        rois = [replace(r, label=i) for i, r in enumerate(rois, start=1)]
    t0 = time.perf_counter()
    warnings.extend(check_masks([(e, r.mask) for e, r in expectations], volume))
    timings["sanity"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    for warning in warnings:
        log.warning("series %s: %s", volume.series_uid, warning)
    return SegmentationResult(
        volume,
        rois,
        warnings,
        timings,
        models=used,
        empty_rois=empty,
        run_parameters=dict(context.run_parameters),
    )
