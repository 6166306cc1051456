"""How much a clinician changed one ROI: the figures of the feedback loop.

One sent ROI (what contourd drew) is compared with its reviewed version (what
the clinician approved), both as masks on the same grid and as contours.

Definitions (fixed here, checked by known-answer tests in ``tests/training``):

Dice, surface Dice at tolerance, HD95
    :mod:`training.metrics` on the rasterised masks, sent = prediction,
    approved = reference (boundary voxels, 6-neighbour surfaces).
Volume change
    ``approved - sent`` in cm^3, and as a percentage of the sent volume.
Added path length (APL, Vaassen et al. 2020)
    The length, in mm, of the approved contours that does not lie within
    ``tolerance_mm`` of a sent contour on the same image plane: what the
    clinician had to draw. Computed on the polygons, not on voxels: each
    approved contour segment is cut into pieces of at most ``step_mm``; a
    piece counts when its midpoint is farther than the tolerance from the
    sent contours of its plane (exact point-to-segment distance; a k-d tree
    of points every ``step_mm`` along the sent contours finds the candidates),
    so the length is exact to within ``step_mm`` per place where the approved
    contour crosses the tolerance band. A plane with approved but no
    sent contours counts in full; deleted contours add nothing (deleting is
    quick). Summed over planes.
Classification
    ``unchanged``: the rasterised masks are identical (Dice exactly 1; an
    empty ROI sent and left empty or removed is unchanged too);
    ``edited``: both non-empty and not identical; ``deleted``: sent
    non-empty, approved missing or empty; ``added``: approved non-empty,
    nothing (or an empty ROI) sent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import chain
from typing import Any, Literal

import numpy as np
from scipy.spatial import cKDTree

from training.metrics import compute_metrics, volume_cc

Classification = Literal["unchanged", "edited", "deleted", "added"]

DEFAULT_STEP_MM = 0.1


def _closed_segments(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start points and vectors of the segments of a closed polygon ``(N, 3)``."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return pts, np.roll(pts, -1, axis=0) - pts


def contour_length_mm(points: np.ndarray) -> float:
    """Perimeter of a closed polygon ``(N, 3)`` in mm (last vertex joins the first)."""
    if len(points) < 2:
        return 0.0
    _, vectors = _closed_segments(points)
    return float(np.linalg.norm(vectors, axis=1).sum())


def _pieces(
    points: np.ndarray, step_mm: float, *, midpoints: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Points along a closed polygon every ``<= step_mm`` and the length each stands for."""
    starts, vectors = _closed_segments(points)
    lengths = np.linalg.norm(vectors, axis=1)
    counts = np.maximum(1, np.ceil(lengths / step_mm).astype(int))
    seg = np.repeat(np.arange(len(starts)), counts)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    index = np.arange(int(counts.sum())) - np.repeat(first, counts)
    t = (index + (0.5 if midpoints else 0.0)) / counts[seg]
    return starts[seg] + t[:, None] * vectors[seg], (lengths / counts)[seg]


def added_path_length_mm(
    approved: Sequence[np.ndarray],
    sent: Sequence[np.ndarray],
    tolerance_mm: float,
    *,
    step_mm: float = DEFAULT_STEP_MM,
) -> float:
    """Length of the ``approved`` contours farther than ``tolerance_mm`` from ``sent`` (one plane).

    Parameters
    ----------
    approved, sent
        Closed contours of one ROI on one image plane, each ``(N, 3)`` in mm
        (any common frame, e.g. LPS).
    tolerance_mm
        Distance up to which an approved piece counts as already drawn.
    step_mm
        Sampling step along the contours.
    """
    approved = [np.asarray(c, dtype=np.float64) for c in approved if len(c) >= 2]
    if not approved:
        return 0.0
    sent = [np.asarray(c, dtype=np.float64) for c in sent if len(c) >= 1]
    if not sent:
        return float(sum(contour_length_mm(c) for c in approved))
    segments = [_closed_segments(c) for c in sent]
    starts = np.concatenate([seg[0] for seg in segments])
    vectors = np.concatenate([seg[1] for seg in segments])
    samples, segment_of = [], []
    offset = 0
    for contour in sent:
        points, _ = _pieces(contour, step_mm, midpoints=False)
        samples.append(points)
        segment_of.append(offset + _piece_segments(contour, step_mm))
        offset += len(contour)
    tree = cKDTree(np.concatenate(samples))
    segment_ids = np.concatenate(segment_of)
    limit_mm = tolerance_mm + 1e-9
    total = 0.0
    for contour in approved:
        mids, lengths = _pieces(contour, step_mm, midpoints=True)
        sampled, _ = tree.query(mids, distance_upper_bound=tolerance_mm + step_mm)
        beyond = sampled > limit_mm
        # The sampled distance exceeds the true one by at most step_mm / 2:
        # settle the pieces in between against the segments themselves.
        unsure = np.flatnonzero(beyond & (sampled - step_mm / 2 <= limit_mm))
        if unsure.size:
            near = tree.query_ball_point(mids[unsure], tolerance_mm + step_mm)
            counts = np.fromiter((len(n) for n in near), dtype=np.intp, count=len(near))
            piece = np.repeat(np.arange(len(unsure)), counts)
            seg = segment_ids[np.fromiter(chain.from_iterable(near), dtype=np.intp)]
            distance = _distances_to_segments(mids[unsure][piece], starts[seg], vectors[seg])
            nearest = np.full(len(unsure), np.inf)
            np.minimum.at(nearest, piece, distance)
            beyond[unsure] = nearest > limit_mm
        total += float(lengths[beyond].sum())
    return total


def _piece_segments(points: np.ndarray, step_mm: float) -> np.ndarray:
    """Segment index of each point :func:`_pieces` returns for a closed polygon."""
    _, vectors = _closed_segments(points)
    counts = np.maximum(1, np.ceil(np.linalg.norm(vectors, axis=1) / step_mm).astype(int))
    return np.repeat(np.arange(len(vectors)), counts)


def _distances_to_segments(
    points: np.ndarray, starts: np.ndarray, vectors: np.ndarray
) -> np.ndarray:
    """Distance from each point to its segment ``starts + t * vectors``, t in [0, 1] (rows pair)."""
    squared = np.maximum((vectors**2).sum(axis=1), 1e-300)
    t = np.clip(((points - starts) * vectors).sum(axis=1) / squared, 0.0, 1.0)
    return np.asarray(np.linalg.norm(starts + t[:, None] * vectors - points, axis=1))


def roi_added_path_length_mm(
    approved_by_plane: dict[int, list[np.ndarray]],
    sent_by_plane: dict[int, list[np.ndarray]],
    tolerance_mm: float,
    *,
    step_mm: float = DEFAULT_STEP_MM,
) -> float:
    """:func:`added_path_length_mm` summed over image planes (``{plane: contours}``)."""
    return float(
        sum(
            added_path_length_mm(contours, sent_by_plane.get(k, []), tolerance_mm, step_mm=step_mm)
            for k, contours in approved_by_plane.items()
        )
    )


@dataclass(frozen=True)
class RoiEdit:
    """The comparison of one ROI as sent with its approved version.

    Attributes
    ----------
    roi
        The model's ROI name (as sent, clinic overrides applied).
    approved_name
        The name in the approved set (``None`` when deleted).
    classification
        ``unchanged``, ``edited``, ``deleted`` or ``added``.
    dice, surface_dice, hd95_mm
        Sent against approved; ``hd95_mm`` is ``None`` when one side is empty
        (infinite).
    tolerance_mm
        Tolerance of the surface Dice and the added path length, mm.
    volume_sent_cc, volume_approved_cc, volume_change_cc, volume_change_pct
        Volumes and their change (approved - sent); the percentage is ``None``
        when nothing was sent.
    added_path_length_mm
        Length the clinician drew (see the module doc), mm.
    sent_path_length_mm
        Total length of the sent contours, mm (to put the APL in proportion).
    """

    roi: str
    approved_name: str | None
    classification: Classification
    dice: float
    surface_dice: float
    hd95_mm: float | None
    tolerance_mm: float
    volume_sent_cc: float
    volume_approved_cc: float
    volume_change_cc: float
    volume_change_pct: float | None
    added_path_length_mm: float
    sent_path_length_mm: float

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready: no infinities)."""
        return asdict(self)


def classify(sent_mask: np.ndarray, approved_mask: np.ndarray | None) -> Classification:
    """``unchanged`` / ``edited`` / ``deleted`` / ``added`` (see the module doc)."""
    sent_any = bool(np.any(sent_mask))
    approved_any = approved_mask is not None and bool(np.any(approved_mask))
    if not sent_any:
        return "added" if approved_any else "unchanged"
    if not approved_any:
        return "deleted"
    assert approved_mask is not None
    return "unchanged" if np.array_equal(sent_mask, approved_mask) else "edited"


def compare_roi(
    roi: str,
    approved_name: str | None,
    sent_mask: np.ndarray,
    approved_mask: np.ndarray | None,
    sent_by_plane: dict[int, list[np.ndarray]],
    approved_by_plane: dict[int, list[np.ndarray]],
    spacing_zyx_mm: Sequence[float],
    *,
    tolerance_mm: float = 2.0,
    step_mm: float = DEFAULT_STEP_MM,
) -> RoiEdit:
    """All figures of one ROI (masks ``[z, y, x]`` on one grid; contours ``{plane: [(N, 3)]}``).

    ``approved_mask`` is ``None`` (and ``approved_by_plane`` empty) when the
    clinician deleted the ROI; ``sent_mask`` is all False for an added one.
    """
    approved = approved_mask if approved_mask is not None else np.zeros_like(sent_mask)
    classification = classify(sent_mask, approved_mask)
    if classification == "unchanged":  # identical masks: the figures are known exactly
        dice, surface, hd95 = 1.0, 1.0, 0.0
    else:
        metrics = compute_metrics(sent_mask, approved, spacing_zyx_mm, tolerance_mm)
        dice, surface, hd95 = metrics.dice, metrics.surface_dice, metrics.hd95_mm
    sent_cc = volume_cc(sent_mask, spacing_zyx_mm)
    approved_cc = volume_cc(approved, spacing_zyx_mm)
    return RoiEdit(
        roi=roi,
        approved_name=approved_name,
        classification=classification,
        dice=dice,
        surface_dice=surface,
        hd95_mm=hd95 if math.isfinite(hd95) else None,
        tolerance_mm=float(tolerance_mm),
        volume_sent_cc=sent_cc,
        volume_approved_cc=approved_cc,
        volume_change_cc=approved_cc - sent_cc,
        volume_change_pct=(100.0 * (approved_cc - sent_cc) / sent_cc) if sent_cc > 0 else None,
        added_path_length_mm=roi_added_path_length_mm(
            approved_by_plane, sent_by_plane, tolerance_mm, step_mm=step_mm
        ),
        sent_path_length_mm=float(
            sum(contour_length_mm(c) for cs in sent_by_plane.values() for c in cs)
        ),
    )
