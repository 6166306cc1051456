"""Model runtimes: how each ``model_type`` turns a series into ROI masks.

A runtime is a function ``(model, volume, context) -> {label: mask}`` that
returns boolean masks on the source grid (``[slice, row, column]``), keyed by
the card's ROI labels. :data:`RUNTIMES` maps a card's ``model_type`` to its
runtime; :func:`run_model` picks it. The pipeline, the worker, ``segment``,
``evaluate`` and the RTSTRUCT/SEG writers see only the masks, so they do not
care which runtime drew them.

- ``unet``: contourd's own 3D U-Net (:mod:`inference.predictor`), probabilities
  resampled back to the source grid;
- ``classical``: the body outline (:mod:`inference.body_outline`);
- ``nnunet``: an imported nnU-Net v2 model (:mod:`inference.nnunet_runtime`),
  ``exact`` or ``fast`` mode.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk  # noqa: N813 - the conventional alias

from contourd.errors import InferenceError
from inference.body_outline import body_outline
from inference.postprocess import Cleanup, clean_mask, probabilities_to_masks
from inference.predictor import Precision, PredictorCache
from inference.preprocess import preprocess, to_sitk_image
from inference.volume import ImageVolume

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """What a runtime needs besides the model and the volume.

    Parameters
    ----------
    cache
        Warm networks between calls.
    timings
        Seconds per step; a runtime adds ``<model>.<step>`` keys.
    device, precision, num_threads
        As :func:`inference.pipeline.segment_series`.
    max_whole_volume_voxels
        U-Net strategy override (``None``: the card decides).
    nnunet_mode
        nnU-Net mode override (``None``: the card's ``nnunet.mode``).
    nnunet_mirror
        nnU-Net mirroring override (``None``: the mode's default).
    run_parameters
        A runtime adds ``"name version"`` -> how it ran that model
        (``key=value`` items; they go into the outputs' Algorithm Parameters).
    """

    cache: PredictorCache
    timings: dict[str, float] = field(default_factory=dict)
    device: str = "auto"
    precision: Precision = "auto"
    num_threads: int | None = None
    max_whole_volume_voxels: int | None = None
    nnunet_mode: Literal["exact", "fast"] | None = None
    nnunet_mirror: bool | None = None
    run_parameters: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def predictor_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :meth:`PredictorCache.get`."""
        kwargs: dict[str, Any] = {
            "device": self.device,
            "precision": self.precision,
            "num_threads": self.num_threads,
        }
        if self.max_whole_volume_voxels is not None:
            kwargs["max_whole_volume_voxels"] = self.max_whole_volume_voxels
        return kwargs


Runtime = Callable[[Any, ImageVolume, RunContext], dict[int, np.ndarray]]


def _cleanups(card: Any) -> dict[int, Cleanup]:
    return {
        roi.label: Cleanup(
            largest_component=card.postprocessing_for(roi.label).largest_component,
            fill_holes=card.postprocessing_for(roi.label).fill_holes,
        )
        for roi in card.rois
    }


def run_classical(model: Any, volume: ImageVolume, ctx: RunContext) -> dict[int, np.ndarray]:
    """The classical body outline (source grid directly)."""
    card = model.card
    if card.algorithm != "body_outline":
        raise InferenceError(f"model {card.name}: unknown classical algorithm {card.algorithm!r}")
    params = card.parameters
    t0 = time.perf_counter()
    mask = body_outline(
        volume,
        threshold_hu=params.threshold_hu,
        keep_largest_component=params.keep_largest_component,
        fill_holes=params.fill_holes,
    )
    ctx.timings[f"{card.name}.body_outline"] = time.perf_counter() - t0
    return {card.rois[0].label: mask}


def _network_error(card: Any, volume: ImageVolume, shape: Any, device: Any, err: Exception) -> Any:
    return InferenceError(
        f"model {card.name} {card.version} failed on series {volume.series_uid} "
        f"(input {list(shape)} on {device}): {err}"
    )


def run_unet(model: Any, volume: ImageVolume, ctx: RunContext) -> dict[int, np.ndarray]:
    """contourd's U-Net: preprocess to the card's grid, network, resample back, clean up."""
    card = model.card
    name = card.name
    t0 = time.perf_counter()
    prepared = preprocess(volume, card.preprocessing)
    ctx.timings[f"{name}.preprocess"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    predictor = ctx.cache.get(model, **ctx.predictor_kwargs())
    try:
        probs = predictor.predict_proba(prepared.array)
    except RuntimeError as err:  # torch reports OOM and kernel failures this way
        raise _network_error(card, volume, prepared.array.shape, predictor.device, err) from err
    ctx.timings[f"{name}.network"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    labels = [roi.label for roi in card.rois]
    masks = probabilities_to_masks(probs, prepared.grid, volume, labels, _cleanups(card))
    ctx.timings[f"{name}.postprocess"] = time.perf_counter() - t0
    return masks


def run_nnunet(model: Any, volume: ImageVolume, ctx: RunContext) -> dict[int, np.ndarray]:
    """An imported nnU-Net model: the series in the card's orientation, nnU-Net's steps
    (:mod:`inference.nnunet_runtime`), the label map oriented back to the source grid."""
    card = model.card
    settings = card.nnunet
    name = card.name
    mode = ctx.nnunet_mode or settings.mode
    t0 = time.perf_counter()
    source = to_sitk_image(volume, reorient=None)
    source_code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
        source.GetDirection()
    )
    image = sitk.DICOMOrient(source, settings.orientation)
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    spacing_zyx = tuple(float(s) for s in reversed(image.GetSpacing()))
    ctx.timings[f"{name}.preprocess"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    kwargs = ctx.predictor_kwargs()
    kwargs.pop("max_whole_volume_voxels", None)
    predictor = ctx.cache.get(model, **kwargs)
    run = predictor.run_settings(mode, mirror=ctx.nnunet_mirror)
    try:
        labels = predictor.segment(array, spacing_zyx, run)  # type: ignore[arg-type]
    except RuntimeError as err:
        raise _network_error(card, volume, array.shape, predictor.device, err) from err
    ctx.timings[f"{name}.network"] = time.perf_counter() - t0
    ctx.run_parameters[f"{name} {card.version}"] = (
        f"nnunet_mode={mode}",
        f"nnunet_folds={','.join(str(f) for f in settings.folds)}",
        f"nnunet_step={run.tile_step_size:g}",
        f"nnunet_mirror_axes={','.join(str(a) for a in run.mirror_axes) or 'none'}",
    )
    log.info(
        "model %s %s ran as nnU-Net %s mode (step %g, mirror axes %s)",
        name, card.version, mode, run.tile_step_size, list(run.mirror_axes) or "none",
    )  # fmt: skip
    t0 = time.perf_counter()
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(image)
    back = sitk.GetArrayFromImage(sitk.DICOMOrient(label_image, source_code))
    if back.shape != volume.shape:
        raise InferenceError(
            f"model {name}: label map {back.shape} does not fit series {volume.shape} after "
            "reorientation; report this with the series geometry"
        )
    cleanups = _cleanups(card)
    masks = {label: clean_mask(back == label, cleanup) for label, cleanup in cleanups.items()}
    ctx.timings[f"{name}.postprocess"] = time.perf_counter() - t0
    return masks


#: model_type -> runtime.
RUNTIMES: dict[str, Runtime] = {
    "unet": run_unet,
    "classical": run_classical,
    "nnunet": run_nnunet,
}


def run_model(model: Any, volume: ImageVolume, ctx: RunContext) -> dict[int, np.ndarray]:
    """label -> boolean source-grid mask from the runtime of the card's ``model_type``."""
    model_type = model.card.model_type
    runtime = RUNTIMES.get(model_type)
    if runtime is None:
        raise InferenceError(
            f"model {model.card.name}: no runtime for model_type {model_type!r} "
            f"(known: {', '.join(sorted(RUNTIMES))})"
        )
    return runtime(model, volume, ctx)
