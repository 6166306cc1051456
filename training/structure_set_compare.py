"""Compare the structure set contourd sent with the one the clinician approved.

ROIs are paired by name through a :class:`training.roi_mapping.RoiNameMapper`
whose targets are the sent ROI names (the model's names with the clinic's
overrides applied) and whose exact aliases the caller supplies (the card's
original names, TG-263 names, the clinic's TPS names). Each approved ROI that
stands for a sent ROI is compared with it (:func:`training.edit_metrics.compare_roi`);
an approved ROI that stands for none (or for one already paired) is
``added``; a sent ROI nobody paired is ``deleted``. Both sets are rasterised
on the grid the sent set was drawn on (:func:`training.rtstruct_reader.rasterise_roi`
with its scanline fill, so that a 20-ROI set takes seconds, not minutes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from inference.volume import ImageVolume
from training.edit_metrics import DEFAULT_STEP_MM, RoiEdit, compare_roi
from training.roi_mapping import RoiNameMapper
from training.rtstruct_reader import (
    CLOSED_TYPES,
    PlaneLocator,
    RoiContours,
    StructureSet,
    rasterise_roi,
)


@dataclass
class SetComparison:
    """ROI-by-ROI result, sent ROIs first (in their order), then added ones."""

    rois: list[RoiEdit]
    notes: list[str] = field(default_factory=list)


def contours_by_plane(
    roi: RoiContours, locator: PlaneLocator, notes: list[str] | None = None
) -> dict[int, list[np.ndarray]]:
    """Closed contours of one ROI grouped by image plane, points ``(N, 3)`` LPS mm."""
    planes: dict[int, list[np.ndarray]] = {}
    for contour in roi.contours:
        if contour.geometric_type not in CLOSED_TYPES:
            continue
        k, _ = locator.locate(contour)
        if k is None:
            if notes is not None:
                notes.append(f"ROI {roi.name!r}: a contour off every image plane was left out")
            continue
        planes.setdefault(k, []).append(contour.points_lps_mm)
    return planes


def roi_mapper(
    sent_names: Sequence[str], aliases: Mapping[str, Sequence[str]] | None = None
) -> RoiNameMapper:
    """Mapper onto ``sent_names``, with ``aliases`` (sent name -> other names) of sent names."""
    kept = {k: list(v) for k, v in (aliases or {}).items() if k in sent_names}
    return RoiNameMapper(list(sent_names), kept)


def compare_structure_sets(
    sent: StructureSet,
    approved: StructureSet,
    volume: ImageVolume,
    mapper: RoiNameMapper,
    *,
    tolerance_mm: float = 2.0,
    step_mm: float = DEFAULT_STEP_MM,
) -> SetComparison:
    """Compare ``approved`` with ``sent`` ROI by ROI on ``volume``'s grid.

    Parameters
    ----------
    sent, approved
        Parsed structure sets (:func:`training.rtstruct_reader.read_rtstruct`).
    volume
        The grid the sent set was drawn on (e.g. :func:`inference.grid_file.read_grid`).
    mapper
        Maps approved names onto sent names (:func:`roi_mapper`).
    tolerance_mm
        Surface Dice and added-path-length tolerance, mm.
    step_mm
        Sampling step of the added path length, mm.
    """
    notes: list[str] = []
    locator = PlaneLocator(volume)
    spacing_zyx = tuple(reversed(volume.spacing_mm))
    sent_by_name = {roi.name: roi for roi in sent.rois}
    paired: dict[str, RoiContours] = {}
    added: list[RoiContours] = []
    for roi in approved.rois:
        target = mapper.target_for(roi.name)
        if target is not None and target in sent_by_name and target not in paired:
            paired[target] = roi
        else:
            if target is not None and target in paired:
                notes.append(
                    f"approved ROIs {paired[target].name!r} and {roi.name!r} both stand for "
                    f"{target!r}; the first is compared, the second counted as added"
                )
            added.append(roi)
    empty = np.zeros(volume.shape, dtype=bool)

    def mask(roi: RoiContours) -> np.ndarray:
        return rasterise_roi(roi, volume, notes=notes, scanline=True)

    results: list[RoiEdit] = []
    for name, roi in sent_by_name.items():
        mine = paired.get(name)
        results.append(
            compare_roi(
                name,
                mine.name if mine is not None else None,
                mask(roi),
                mask(mine) if mine is not None else None,
                contours_by_plane(roi, locator, notes),
                contours_by_plane(mine, locator, notes) if mine is not None else {},
                spacing_zyx,
                tolerance_mm=tolerance_mm,
                step_mm=step_mm,
            )
        )
    for roi in added:
        results.append(
            compare_roi(
                roi.name,
                roi.name,
                empty,
                mask(roi),
                {},
                contours_by_plane(roi, locator, notes),
                spacing_zyx,
                tolerance_mm=tolerance_mm,
                step_mm=step_mm,
            )
        )
    return SetComparison(results, notes)
