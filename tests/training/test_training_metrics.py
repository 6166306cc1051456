"""Known-answer tests of training.metrics (spheres, shifted cubes, empty masks)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from contourd.errors import TrainingError
from training.metrics import (
    compute_metrics,
    dice,
    hausdorff_distance,
    mean_surface_distance,
    surface_dice,
    surface_distances,
    surface_voxels,
)


def ball(
    shape: tuple[int, int, int], spacing_zyx_mm: tuple[float, ...], radius_mm: float
) -> np.ndarray:
    """A ball of ``radius_mm`` centred in the array (voxel centres inside it)."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing_zyx_mm, strict=True)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    return zz**2 + yy**2 + xx**2 <= radius_mm**2


def cube(shape: tuple[int, int, int], start: tuple[int, int, int], n: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    z, y, x = start
    mask[z : z + n, y : y + n, x : x + n] = True
    return mask


def test_identical_masks_have_dice_one_and_zero_distances() -> None:
    mask = ball((30, 40, 40), (2.5, 1.0, 1.0), 12.0)
    m = compute_metrics(mask, mask, (2.5, 1.0, 1.0))
    assert m.dice == 1.0
    assert m.hd95_mm == 0.0
    assert m.msd_mm == 0.0
    assert m.surface_dice == 1.0
    assert hausdorff_distance(mask, mask, (2.5, 1.0, 1.0), percentile=100) == 0.0


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3, 7])
def test_cube_shifted_by_k_voxels_has_dice_one_minus_k_over_n(axis: int, k: int) -> None:
    n = 20
    spacing = (3.0, 0.8, 1.25)
    shape = (40, 40, 40)
    start = [5, 5, 5]
    a = cube(shape, (5, 5, 5), n)
    start[axis] += k
    b = cube(shape, (start[0], start[1], start[2]), n)
    assert dice(a, b) == pytest.approx(1 - k / n, abs=1e-12)
    # The faces normal to the shift are k voxels apart; nothing is further away,
    # and those faces hold more than 5% of each surface, so HD95 = HD = k * spacing.
    expected_mm = k * spacing[axis]
    assert hausdorff_distance(a, b, spacing, percentile=100) == pytest.approx(expected_mm)
    assert hausdorff_distance(a, b, spacing) == pytest.approx(expected_mm)
    m = compute_metrics(a, b, spacing, tolerance_mm=expected_mm)
    assert m.surface_dice == 1.0
    assert 0 < m.msd_mm < expected_mm


def test_surface_dice_below_one_voxel_counts_shared_surface_voxels() -> None:
    spacing = (2.0, 1.0, 1.0)
    a = cube((30, 30, 30), (5, 5, 5), 12)
    b = cube((30, 30, 30), (5, 5, 8), 12)
    sa, sb = surface_voxels(a), surface_voxels(b)
    shared = int((sa & sb).sum())
    expected = 2 * shared / (int(sa.sum()) + int(sb.sum()))
    assert surface_dice(a, b, spacing, tolerance_mm=0.5) == pytest.approx(expected)


@pytest.mark.parametrize(
    "spacing", [(1.0, 1.0, 1.0), (2.0, 0.7, 0.7), (2.5, 1.0, 0.5)], ids=["iso", "ct", "aniso"]
)
def test_concentric_spheres_hd95_and_msd_equal_radius_difference(
    spacing: tuple[float, float, float],
) -> None:
    r1, r2 = 10.0, 18.0
    shape = tuple(int(round(48 / s)) for s in spacing)
    inner = ball(shape, spacing, r1)  # type: ignore[arg-type]
    outer = ball(shape, spacing, r2)  # type: ignore[arg-type]
    m = compute_metrics(inner, outer, spacing, tolerance_mm=2.0)
    # Boundary voxels sit within one voxel of the true sphere.
    assert m.hd95_mm == pytest.approx(r2 - r1, abs=max(spacing))
    assert m.msd_mm == pytest.approx(r2 - r1, abs=max(spacing))
    assert m.surface_dice == 0.0
    assert (
        compute_metrics(inner, outer, spacing, tolerance_mm=r2 - r1 + 2 * max(spacing)).surface_dice
        == 1.0
    )
    analytic_dice = 2 * r1**3 / (r1**3 + r2**3)
    assert m.dice == pytest.approx(analytic_dice, abs=0.02)
    assert m.volume_ref_cc == pytest.approx(4 / 3 * math.pi * r2**3 / 1000, rel=0.03)


def test_distances_match_brute_force_on_irregular_blobs() -> None:
    rng = np.random.default_rng(7)
    spacing = (2.5, 0.9, 1.3)
    a = np.zeros((12, 20, 20), dtype=bool)
    b = np.zeros_like(a)
    a[2:9, 3:15, 4:12] = rng.random((7, 12, 8)) > 0.3
    b[4:11, 6:19, 2:14] = rng.random((7, 13, 12)) > 0.4
    d = surface_distances(a, b, spacing)
    pa = np.argwhere(surface_voxels(a)) * np.array(spacing)
    pb = np.argwhere(surface_voxels(b)) * np.array(spacing)
    pair = cdist(pa, pb)
    np.testing.assert_allclose(np.sort(d.a_to_b_mm), np.sort(pair.min(axis=1)))
    np.testing.assert_allclose(np.sort(d.b_to_a_mm), np.sort(pair.min(axis=0)))
    pooled = np.concatenate([pair.min(axis=1), pair.min(axis=0)])
    assert mean_surface_distance(a, b, spacing) == pytest.approx(pooled.mean())
    assert hausdorff_distance(a, b, spacing) == pytest.approx(
        max(np.percentile(pair.min(axis=1), 95), np.percentile(pair.min(axis=0), 95))
    )


def test_metrics_are_symmetric() -> None:
    a = ball((20, 30, 30), (2.0, 1.0, 1.0), 9.0)
    b = np.roll(ball((20, 30, 30), (2.0, 1.0, 1.0), 7.0), 3, axis=2)
    ab = compute_metrics(a, b, (2.0, 1.0, 1.0))
    ba = compute_metrics(b, a, (2.0, 1.0, 1.0))
    assert ab.dice == ba.dice
    assert ab.hd95_mm == ba.hd95_mm
    assert ab.msd_mm == pytest.approx(ba.msd_mm)
    assert ab.surface_dice == pytest.approx(ba.surface_dice)


def test_surface_is_the_face_connected_boundary() -> None:
    block = cube((7, 7, 7), (2, 2, 2), 3)
    assert int(surface_voxels(block).sum()) == 26  # the centre voxel is interior
    single = cube((5, 5, 5), (2, 2, 2), 1)
    assert int(surface_voxels(single).sum()) == 1
    full = np.ones((4, 4, 4), dtype=bool)  # the array border is outside
    assert int(surface_voxels(full).sum()) == 64 - 8


def test_empty_mask_conventions() -> None:
    empty = np.zeros((10, 10, 10), dtype=bool)
    some = cube((10, 10, 10), (2, 2, 2), 4)
    both = compute_metrics(empty, empty, (1.0, 1.0, 1.0))
    assert (both.dice, both.hd95_mm, both.msd_mm, both.surface_dice) == (1.0, 0.0, 0.0, 1.0)
    for pred, ref in ((empty, some), (some, empty)):
        one = compute_metrics(pred, ref, (1.0, 1.0, 1.0))
        assert one.dice == 0.0
        assert one.hd95_mm == math.inf
        assert one.msd_mm == math.inf
        assert one.surface_dice == 0.0


def test_mismatched_shapes_and_bad_spacing_are_refused() -> None:
    with pytest.raises(TrainingError, match="shapes"):
        compute_metrics(np.zeros((3, 3, 3), bool), np.zeros((3, 3, 4), bool), (1, 1, 1))
    with pytest.raises(TrainingError, match="spacing"):
        compute_metrics(np.ones((3, 3, 3), bool), np.ones((3, 3, 3), bool), (1, 0, 1))
