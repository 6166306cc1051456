"""Known-answer tests of the feedback figures (training.edit_metrics, structure_set_compare).

Every expected value below is worked out by hand in the comment beside it.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from inference.volume import ImageVolume
from training.edit_metrics import (
    added_path_length_mm,
    classify,
    compare_roi,
    contour_length_mm,
)
from training.rtstruct_reader import Contour, RoiContours, StructureSet
from training.structure_set_compare import compare_structure_sets, roi_mapper


def square(x0: float, y0: float, side: float, z: float = 0.0) -> np.ndarray:
    """Closed square (4 vertices) in the plane ``z``, mm."""
    return np.array(
        [[x0, y0, z], [x0 + side, y0, z], [x0 + side, y0 + side, z], [x0, y0 + side, z]]
    )


def test_contour_length_of_a_square_is_its_perimeter() -> None:
    assert contour_length_mm(square(0, 0, 20)) == pytest.approx(80.0)


def test_square_shifted_3_mm_with_2_mm_tolerance_adds_38_mm() -> None:
    # Sent [0,20]^2, approved [3,23]x[0,20]. Approved edges and their distance to
    # the sent square: x=3 edge is 3 mm from x=0 except within 2 mm of the
    # sent top/bottom edges (y<=2, y>=18): 16 mm drawn. x=23 edge: >= 3 mm
    # everywhere: 20 mm. Top and bottom edges: on the sent edges for x<=20,
    # x-20 mm from the sent corner beyond: drawn for x in (22, 23]: 1 mm each.
    # 16 + 20 + 1 + 1 = 38 mm.
    apl = added_path_length_mm([square(3, 0, 20)], [square(0, 0, 20)], 2.0, step_mm=0.01)
    assert apl == pytest.approx(38.0, abs=0.05)


def test_shift_within_the_tolerance_adds_nothing_and_identical_adds_nothing() -> None:
    assert added_path_length_mm([square(1, 0, 20)], [square(0, 0, 20)], 2.0) == 0.0
    assert added_path_length_mm([square(0, 0, 20)], [square(0, 0, 20)], 0.0) == 0.0


def test_a_contour_on_a_plane_with_nothing_sent_counts_in_full() -> None:
    assert added_path_length_mm([square(0, 0, 20), square(50, 50, 5)], [], 2.0) == pytest.approx(
        100.0
    )


def test_deleting_a_contour_adds_no_path() -> None:
    assert added_path_length_mm([], [square(0, 0, 20)], 2.0) == 0.0


def test_growing_one_side_counts_only_the_new_side() -> None:
    # Sent [0,20]^2, approved [0,30]x[0,20]: the new x=30 edge (20 mm) plus the
    # parts of the top/bottom edges beyond x=22 (8 mm each): 36 mm.
    apl = added_path_length_mm([np.array(square(0, 0, 20)) * [1.5, 1, 1]], [square(0, 0, 20)], 2.0)
    assert apl == pytest.approx(36.0, abs=0.2)


def _single_slice_squares(shift: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros((1, 40, 40), dtype=bool)
    a[0, 10:20, 10:20] = True
    return a, np.roll(a, shift, axis=2)


def test_single_slice_square_shifted_3_pixels_by_hand() -> None:
    # One slice: every voxel is a surface voxel. A = columns 10..19, B = 13..22.
    # Dice = 2*70/200 = 0.7. A's column 10 is 3 mm from B, 11 and 12 are 2 and
    # 1 mm: only column 10 (10 voxels) is beyond 2 mm; B's column 22 likewise.
    # Surface Dice = (200 - 20) / 200 = 0.9; HD95: 10 of 100 distances are 3 mm,
    # so the 95th percentile of each direction is 3 mm.
    sent, approved = _single_slice_squares(3)
    edit = compare_roi("R", "R", sent, approved, {}, {}, (1.0, 1.0, 1.0), tolerance_mm=2.0)
    assert edit.dice == pytest.approx(0.7)
    assert edit.surface_dice == pytest.approx(0.9)
    assert edit.hd95_mm == pytest.approx(3.0)
    assert edit.classification == "edited"
    assert edit.volume_change_cc == pytest.approx(0.0)


def test_prism_shifted_3_voxels_surface_dice_by_hand() -> None:
    # Three slices (z 1..3) of the 10x10 square, 1 mm voxels. Surface of A:
    # slices 1 and 3 whole (100 each) + the ring of slice 2 (36) = 236 voxels;
    # B the same. A beyond 2 mm of B's surface: column 10 of slices 1 and 3
    # (3 mm, 20 voxels) and column 10 of slice 2's ring (3 mm in plane,
    # sqrt(10) mm to B's slice 1 or 3: 10 voxels); column 19 of the ring is
    # 1 mm from B's slice 1, and rows 10/19 are within 2 mm of B's ring.
    # 30 beyond per side: surface Dice = (472 - 60) / 472.
    a = np.zeros((5, 40, 40), dtype=bool)
    a[1:4, 10:20, 10:20] = True
    b = np.roll(a, 3, axis=2)
    edit = compare_roi("R", "R", a, b, {}, {}, (1.0, 1.0, 1.0), tolerance_mm=2.0)
    assert edit.surface_dice == pytest.approx(412 / 472)
    assert edit.dice == pytest.approx(0.7)


def test_classification_rules() -> None:
    sent, approved = _single_slice_squares(0)
    empty = np.zeros_like(sent)
    assert classify(sent, approved) == "unchanged"
    assert classify(sent, np.roll(sent, 1, axis=1)) == "edited"
    assert classify(sent, None) == "deleted"
    assert classify(sent, empty) == "deleted"
    assert classify(empty, sent) == "added"
    assert classify(empty, None) == "unchanged"  # an empty ROI sent and removed


def _grid(nz: int = 4, n: int = 64, spacing_mm: float = 1.0, dz_mm: float = 2.5) -> ImageVolume:
    affine = np.diag([spacing_mm, spacing_mm, dz_mm, 1.0])
    headers = []
    for k in range(nz):
        h = Dataset()
        h.SOPInstanceUID = f"1.2.3.{k + 1}"
        headers.append(h)
    return ImageVolume(np.zeros((nz, n, n), np.float32), affine, headers, "1.2.3", "CT")


def _roi(number: int, name: str, x0: float, y0: float, side: float, planes: range) -> RoiContours:
    roi = RoiContours(number, name, "ORGAN", None)
    for k in planes:
        roi.contours.append(Contour(square(x0, y0, side, z=2.5 * k), "CLOSED_PLANAR", None))
    return roi


def test_structure_sets_compared_roi_by_roi_with_names_mapped() -> None:
    grid = _grid()
    sent = StructureSet(
        ["1.2.3"],
        ["1.2.9"],
        [
            _roi(1, "Parotid_L", 10, 10, 20, range(4)),
            _roi(2, "SpinalCord", 40, 40, 10, range(4)),
            _roi(3, "Brainstem", 5, 40, 10, range(1, 3)),
        ],
    )
    approved = StructureSet(
        ["1.2.3"],
        ["1.2.9"],
        [
            _roi(7, "PAROTID LT", 13, 10, 20, range(4)),  # moved 3 mm in x
            _roi(8, "Cord", 40, 40, 10, range(4)),  # via the alias below
            _roi(9, "GTV", 30, 5, 4, range(2)),  # drawn by the clinician
        ],
    )
    mapper = roi_mapper(["Parotid_L", "SpinalCord", "Brainstem"], {"SpinalCord": ["Cord"]})
    result = compare_structure_sets(sent, approved, grid, mapper, tolerance_mm=2.0)
    by_roi = {r.roi: r for r in result.rois}
    assert [r.roi for r in result.rois] == ["Parotid_L", "SpinalCord", "Brainstem", "GTV"]
    assert by_roi["SpinalCord"].classification == "unchanged"
    assert by_roi["SpinalCord"].dice == 1.0 and by_roi["SpinalCord"].added_path_length_mm == 0.0
    moved = by_roi["Parotid_L"]
    assert moved.classification == "edited" and moved.approved_name == "PAROTID LT"
    assert moved.added_path_length_mm == pytest.approx(4 * 38.0, abs=0.5)  # 38 mm per plane
    # 1 mm pixels; skimage's polygon fill takes the centres on the edge too:
    # columns 10..30 vs 13..33 (21 each), rows alike -> Dice 18/21.
    assert moved.dice == pytest.approx(18 / 21)
    assert by_roi["Brainstem"].classification == "deleted"
    assert by_roi["Brainstem"].added_path_length_mm == 0.0 and by_roi["Brainstem"].dice == 0.0
    added = by_roi["GTV"]
    assert added.classification == "added"
    assert added.added_path_length_mm == pytest.approx(2 * 16.0)
    assert added.volume_sent_cc == 0.0 and added.volume_change_pct is None


def _skimage_pixels(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> set:
    from skimage.draw import polygon

    rr, cc = polygon(rows, cols, shape=shape)
    return set(zip(rr.tolist(), cc.tolist(), strict=True))


def test_scanline_fill_matches_skimage_off_the_outline() -> None:
    from training.rtstruct_reader import scanline_fill

    rng = np.random.default_rng(7)
    for _ in range(40):  # random star polygons, self-intersecting ones included
        n = int(rng.integers(3, 40))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n)) if n % 2 else rng.uniform(0, 7, n)
        radius = rng.uniform(2, 30, n)
        rows = 32 + radius * np.sin(angles) + rng.uniform(-0.3, 0.3)
        cols = 30 + radius * np.cos(angles) + rng.uniform(-0.3, 0.3)
        rr, cc = scanline_fill(rows, cols, (64, 60))
        assert set(zip(rr.tolist(), cc.tolist(), strict=True)) == _skimage_pixels(
            rows, cols, (64, 60)
        )
    # Pixel-corner outlines (contourd's own contours): a staircase and a clipped square.
    stairs_r = np.array([-0.5, -0.5, 2.5, 2.5, 5.5, 5.5]) + 3
    stairs_c = np.array([-0.5, 6.5, 6.5, 3.5, 3.5, -0.5]) + 3
    corner_r, corner_c = np.array([-5.5, -5.5, 4.5, 4.5]), np.array([-5.5, 4.5, 4.5, -5.5])
    for rows, cols in ((stairs_r, stairs_c), (corner_r, corner_c)):
        rr, cc = scanline_fill(rows, cols, (20, 20))
        assert set(zip(rr.tolist(), cc.tolist(), strict=True)) == _skimage_pixels(
            rows, cols, (20, 20)
        )


def test_scanline_fill_counts_centres_on_the_outline() -> None:
    from training.rtstruct_reader import scanline_fill

    # A square through pixel centres 2..5: its outline pixels count (as in skimage).
    rows, cols = np.array([2.0, 2.0, 5.0, 5.0]), np.array([2.0, 5.0, 5.0, 2.0])
    rr, cc = scanline_fill(rows, cols, (8, 8))
    assert len(rr) == 16 and set(zip(rr.tolist(), cc.tolist(), strict=True)) == _skimage_pixels(
        rows, cols, (8, 8)
    )
