"""Plausibility checks on finished masks; each finding is a warning string.

- volume outside the card's ``volume_range_cc``;
- mask touching the edge of the field of view (the organ may be cut off);
- left/right organs on the wrong side: in LPS, +x is the patient's LEFT, so a
  ROI with laterality ``"L"`` must have its centroid at larger x than the
  patient's midline (and than its ``"R"`` partner when both are present).

Nothing here changes a mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from inference.volume import ImageVolume


@dataclass(frozen=True)
class RoiExpectation:
    """What the card expects of one ROI (from ``RoiSpec``)."""

    name: str
    volume_range_cc: tuple[float, float] | None = None
    laterality: str | None = None
    interpreted_type: str = "ORGAN"


def voxel_volume_cc(volume: ImageVolume) -> float:
    """Volume of one source voxel in cm^3 (|det| of the affine's 3x3 part / 1000)."""
    return float(abs(np.linalg.det(volume.affine[:3, :3])) / 1000.0)


def centroid_lps(mask: np.ndarray, volume: ImageVolume) -> np.ndarray:
    """Centroid of a non-empty mask in LPS mm."""
    z, y, x = (float(np.mean(a)) for a in np.nonzero(mask))
    return volume.index_to_lps(np.array([[x, y, z]]))[0]


def midline_x_mm(volume: ImageVolume, threshold: float | None = None) -> float:
    """LPS x of the patient's midline: centroid of voxels above ``threshold``.

    ``threshold`` defaults to -350 HU for CT and the image mean for MR; a
    4-voxel subsample keeps it cheap.
    """
    sub = volume.array[::2, ::4, ::4]
    if threshold is None:
        threshold = -350.0 if volume.modality == "CT" else float(sub.mean())
    z, y, x = np.nonzero(sub > threshold)
    if x.size == 0:
        centre = np.array([[volume.shape[2] / 2, volume.shape[1] / 2, volume.shape[0] / 2]])
        return float(volume.index_to_lps(centre)[0, 0])
    idx = np.array([[x.mean() * 4, y.mean() * 4, z.mean() * 2]])
    return float(volume.index_to_lps(idx)[0, 0])


def touched_edges(mask: np.ndarray) -> list[str]:
    """Names of the array faces the mask touches."""
    faces = {
        "first slice": mask[0],
        "last slice": mask[-1],
        "first row": mask[:, 0],
        "last row": mask[:, -1],
        "first column": mask[:, :, 0],
        "last column": mask[:, :, -1],
    }
    return [name for name, face in faces.items() if face.any()]


def check_masks(
    masks: Sequence[tuple[RoiExpectation, np.ndarray]], volume: ImageVolume
) -> list[str]:
    """Warnings for non-empty masks; see the module docstring."""
    warnings: list[str] = []
    voxel_cc = voxel_volume_cc(volume)
    midline = None
    centroids: dict[str, tuple[str, float]] = {}
    for roi, mask in masks:
        if not mask.any():
            continue
        volume_cc = float(mask.sum()) * voxel_cc
        if roi.volume_range_cc is not None:
            lo, hi = roi.volume_range_cc
            if not lo <= volume_cc <= hi:
                warnings.append(
                    f"ROI {roi.name!r}: volume {volume_cc:.1f} cc is outside the expected "
                    f"range {lo:g}-{hi:g} cc from the model card; review it carefully"
                )
        edges = touched_edges(mask)
        if roi.interpreted_type == "EXTERNAL":
            edges = [e for e in edges if "slice" not in e]
        if edges:
            warnings.append(
                f"ROI {roi.name!r} touches the edge of the field of view ({', '.join(edges)}); "
                "it may be cut off by the scan range or reconstruction field"
            )
        if roi.laterality in ("L", "R"):
            if midline is None:
                midline = midline_x_mm(volume)
            x = float(centroid_lps(mask, volume)[0])
            centroids[roi.name] = (roi.laterality, x)
            side = "L" if x > midline else "R"
            if side != roi.laterality:
                warnings.append(
                    f"ROI {roi.name!r} is labelled {roi.laterality} but its centroid "
                    f"(LPS x = {x:.1f} mm) lies on the patient's "
                    f"{'left' if side == 'L' else 'right'} of the midline (x = {midline:.1f} mm); "
                    "left and right may be swapped (check the patient position in the header)"
                )
    lefts = [(n, x) for n, (s, x) in centroids.items() if s == "L"]
    rights = [(n, x) for n, (s, x) in centroids.items() if s == "R"]
    for ln, lx in lefts:
        for rn, rx in rights:
            if lx < rx:
                warnings.append(
                    f"ROI {ln!r} (left, x = {lx:.1f} mm) lies to the right of ROI {rn!r} "
                    f"(right, x = {rx:.1f} mm) in LPS; left and right are swapped"
                )
    return warnings
