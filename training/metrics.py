"""Segmentation metrics on boolean masks with anisotropic voxels.

Every function takes masks indexed ``[z, y, x]`` (slice, row, column) on the
same grid and the voxel spacing in the SAME order, ``spacing_zyx_mm``.

Definitions (published implementations differ on each of these; ours are
fixed here and validated by known-answer tests in ``tests/training``):

Dice
    ``2 |A ∩ B| / (|A| + |B|)`` over voxels.
Surface
    The surface of a mask is its set of *boundary voxels*: voxels of the mask
    with at least one of their 6 face neighbours outside the mask, voxels on
    the array border counting as having an outside neighbour
    (``mask & ~binary_erosion(mask, face connectivity, border_value=0)``).
    A surface point is the boundary voxel's centre.
Surface distance
    For each boundary voxel of A, the Euclidean distance in mm from its centre
    to the nearest boundary-voxel centre of B
    (``scipy.ndimage.distance_transform_edt(~surface_B, sampling=spacing)``
    read at A's boundary voxels), and likewise from B to A. Distances are
    multiples of voxel steps, so they are exact for the grid, and identical
    masks give 0.
HD95 (95th-percentile Hausdorff distance)
    ``max(P95(d(A->B)), P95(d(B->A)))``: the larger of the two directed 95th
    percentiles (numpy's default linear interpolation between order
    statistics), each boundary voxel weighing the same. ``percentile=100`` gives
    the classical Hausdorff distance.
Mean surface distance (MSD, "average symmetric surface distance")
    The mean over the pooled distances of both directions:
    ``(sum d(A->B) + sum d(B->A)) / (|dA| + |dB|)``.
Surface Dice at tolerance tau (Nikolov et al. 2021, with voxel-count weights)
    ``(#{d(A->B) <= tau} + #{d(B->A) <= tau}) / (|dA| + |dB|)``: the share of
    both surfaces that lies within ``tau`` mm of the other surface.

Empty masks
    Both empty: Dice 1, distances 0, surface Dice 1 (nothing to find, nothing
    found). Exactly one empty: Dice 0, HD95 and MSD ``inf`` (there is no
    surface to reach), surface Dice 0.

Only the bounding box of ``A | B`` (plus one voxel where the array allows) is
processed, which gives the same result as the whole array, since every voxel
outside it is background and every nearest surface voxel lies inside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from contourd.errors import TrainingError

#: Face connectivity (6 neighbours) in 3D.
FACE_CONNECTIVITY = ndimage.generate_binary_structure(3, 1)


def _check_pair(a: np.ndarray, b: np.ndarray, spacing_zyx_mm: Sequence[float]) -> None:
    if a.shape != b.shape or a.ndim != 3:
        raise TrainingError(
            f"masks have shapes {a.shape} and {b.shape}; both must be the same 3D [z, y, x] shape"
        )
    if len(spacing_zyx_mm) != 3 or any(not s > 0 for s in spacing_zyx_mm):
        raise TrainingError(
            f"spacing {list(spacing_zyx_mm)} must be three positive values (z, y, x) in mm"
        )


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient ``2|A ∩ B| / (|A| + |B|)``; 1.0 when both masks are empty."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise TrainingError(f"masks have shapes {a.shape} and {b.shape}; they must match")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def volume_cc(mask: np.ndarray, spacing_zyx_mm: Sequence[float]) -> float:
    """Volume of a mask in cm^3 (voxel count times voxel volume)."""
    return float(np.count_nonzero(mask)) * float(np.prod(spacing_zyx_mm)) / 1000.0


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: mask voxels with a face neighbour outside the mask or the array."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros_like(mask)
    eroded = ndimage.binary_erosion(mask, structure=FACE_CONNECTIVITY, border_value=0)
    return mask & ~eroded


def _union_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, slice, slice]:
    union = a | b
    box = []
    for axis in range(3):
        hits = np.flatnonzero(union.any(axis=tuple(x for x in range(3) if x != axis)))
        box.append(slice(max(int(hits[0]) - 1, 0), min(int(hits[-1]) + 2, union.shape[axis])))
    return box[0], box[1], box[2]


@dataclass(frozen=True)
class SurfaceDistances:
    """Directed surface distances in mm (one value per boundary voxel).

    Attributes
    ----------
    a_to_b_mm
        For each boundary voxel of A, the distance to B's surface.
    b_to_a_mm
        For each boundary voxel of B, the distance to A's surface.
    """

    a_to_b_mm: np.ndarray
    b_to_a_mm: np.ndarray


def surface_distances(
    a: np.ndarray, b: np.ndarray, spacing_zyx_mm: Sequence[float]
) -> SurfaceDistances:
    """Directed distances between the boundary-voxel centres of two masks.

    Parameters
    ----------
    a, b
        Boolean masks ``[z, y, x]`` on the same grid.
    spacing_zyx_mm
        Voxel spacing ``(z, y, x)`` in mm.

    Returns
    -------
    SurfaceDistances
        Empty arrays for an empty mask's direction; ``inf`` values when the
        other mask is empty.
    """
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    _check_pair(a, b, spacing_zyx_mm)
    if not a.any() and not b.any():
        return SurfaceDistances(np.zeros(0), np.zeros(0))
    box = _union_box(a, b)
    surf_a = surface_voxels(a[box])
    surf_b = surface_voxels(b[box])
    sampling = [float(s) for s in spacing_zyx_mm]

    def directed(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        if not src.any():
            return np.zeros(0)
        if not dst.any():
            return np.full(int(src.sum()), math.inf)
        dist = ndimage.distance_transform_edt(~dst, sampling=sampling)
        return np.asarray(dist[src], dtype=np.float64)

    return SurfaceDistances(directed(surf_a, surf_b), directed(surf_b, surf_a))


def _distances_unless_empty(
    a: np.ndarray,
    b: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    distances: SurfaceDistances | None,
    *,
    both_empty: float,
    one_empty: float,
) -> SurfaceDistances | float:
    """The surface distances, or the metric's value when a mask has no surface."""
    d = distances if distances is not None else surface_distances(a, b, spacing_zyx_mm)
    if d.a_to_b_mm.size == 0 and d.b_to_a_mm.size == 0:
        return both_empty
    if d.a_to_b_mm.size == 0 or d.b_to_a_mm.size == 0:
        return one_empty
    return d


def hausdorff_distance(
    a: np.ndarray,
    b: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    percentile: float = 95.0,
    *,
    distances: SurfaceDistances | None = None,
) -> float:
    """Symmetric percentile Hausdorff distance in mm (HD95 by default).

    ``max(P(d(A->B)), P(d(B->A)))``; 0 when both masks are empty, ``inf``
    when exactly one is.
    """
    d = _distances_unless_empty(a, b, spacing_zyx_mm, distances, both_empty=0.0, one_empty=math.inf)
    if isinstance(d, float):
        return d
    return float(
        max(np.percentile(d.a_to_b_mm, percentile), np.percentile(d.b_to_a_mm, percentile))
    )


def mean_surface_distance(
    a: np.ndarray,
    b: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    *,
    distances: SurfaceDistances | None = None,
) -> float:
    """Mean of the pooled directed surface distances in mm (0 both empty, inf one empty)."""
    d = _distances_unless_empty(a, b, spacing_zyx_mm, distances, both_empty=0.0, one_empty=math.inf)
    if isinstance(d, float):
        return d
    n = d.a_to_b_mm.size + d.b_to_a_mm.size
    return float((d.a_to_b_mm.sum() + d.b_to_a_mm.sum()) / n)


def surface_dice(
    a: np.ndarray,
    b: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    tolerance_mm: float = 2.0,
    *,
    distances: SurfaceDistances | None = None,
) -> float:
    """Share of both surfaces within ``tolerance_mm`` of the other (1 both empty, 0 one empty)."""
    d = _distances_unless_empty(a, b, spacing_zyx_mm, distances, both_empty=1.0, one_empty=0.0)
    if isinstance(d, float):
        return d
    n = d.a_to_b_mm.size + d.b_to_a_mm.size
    within = int((d.a_to_b_mm <= tolerance_mm).sum()) + int((d.b_to_a_mm <= tolerance_mm).sum())
    return within / n


@dataclass(frozen=True)
class MaskMetrics:
    """All metrics of one predicted mask against its reference.

    Attributes
    ----------
    dice
        Volumetric Dice.
    hd95_mm
        95th-percentile symmetric Hausdorff distance, mm.
    msd_mm
        Mean (symmetric, pooled) surface distance, mm.
    surface_dice
        Surface Dice at :attr:`tolerance_mm`.
    tolerance_mm
        Tolerance used for the surface Dice, mm.
    volume_pred_cc, volume_ref_cc
        Volumes in cm^3.
    """

    dice: float
    hd95_mm: float
    msd_mm: float
    surface_dice: float
    tolerance_mm: float
    volume_pred_cc: float
    volume_ref_cc: float

    def as_dict(self) -> dict[str, float]:
        """Plain dict (for JSON/CSV)."""
        return asdict(self)


def compute_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    tolerance_mm: float = 2.0,
) -> MaskMetrics:
    """Dice, HD95, MSD, surface Dice and volumes of ``pred`` against ``ref``.

    ``pred`` and ``ref`` are boolean masks ``[z, y, x]`` on one grid of
    spacing ``spacing_zyx_mm`` (as for :func:`surface_distances`);
    ``tolerance_mm`` is the surface Dice tolerance in mm.
    """
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    d = surface_distances(pred, ref, spacing_zyx_mm)
    return MaskMetrics(
        dice=dice(pred, ref),
        hd95_mm=hausdorff_distance(pred, ref, spacing_zyx_mm, 95.0, distances=d),
        msd_mm=mean_surface_distance(pred, ref, spacing_zyx_mm, distances=d),
        surface_dice=surface_dice(pred, ref, spacing_zyx_mm, tolerance_mm, distances=d),
        tolerance_mm=float(tolerance_mm),
        volume_pred_cc=volume_cc(pred, spacing_zyx_mm),
        volume_ref_cc=volume_cc(ref, spacing_zyx_mm),
    )
