"""Voxel-edge tracing: exact areas, holes, islands, thin and single voxels, geometry."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.path import Path as MplPath
from pydicom.dataset import Dataset

from contourd.errors import OutputWriterError
from inference.contour_extraction import (
    PlanarContours,
    SliceGeometry,
    smooth_contours,
    trace_mask,
)


def rasterise_even_odd(contours: PlanarContours, shape: tuple[int, int, int]) -> np.ndarray:
    """Independent pixel-centre rasteriser (matplotlib), loops XOR-combined per slice."""
    out = np.zeros(shape, dtype=bool)
    rows, cols = np.mgrid[0 : shape[1], 0 : shape[2]]
    centres = np.c_[cols.ravel(), rows.ravel()]
    for k in range(contours.n_loops):
        inside = MplPath(contours.loop(k)).contains_points(centres).reshape(shape[1:])
        out[contours.loop_slice[k]] ^= inside
    return out


def test_random_masks_round_trip_exactly_through_pixel_centre_rasterisation() -> None:
    rng = np.random.default_rng(1)
    for _ in range(60):
        mask = rng.random((3, 11, 13)) < rng.uniform(0.1, 0.9)
        contours = trace_mask(mask)
        assert np.array_equal(rasterise_even_odd(contours, mask.shape), mask)


def test_loop_areas_equal_pixel_count_per_slice() -> None:
    rng = np.random.default_rng(2)
    mask = rng.random((4, 20, 17)) < 0.5
    contours = trace_mask(mask)
    areas = contours.signed_areas_px()
    for z in range(mask.shape[0]):
        assert areas[contours.loop_slice == z].sum() == pytest.approx(mask[z].sum(), abs=1e-9)


def test_single_voxel_becomes_square_on_its_edges() -> None:
    mask = np.zeros((1, 5, 6), dtype=bool)
    mask[0, 2, 3] = True
    contours = trace_mask(mask)
    assert contours.n_loops == 1
    loop = contours.loop(0)
    assert sorted(map(tuple, loop.tolist())) == [(2.5, 1.5), (2.5, 2.5), (3.5, 1.5), (3.5, 2.5)]


def test_hole_is_separate_loop_with_opposite_orientation() -> None:
    mask = np.zeros((1, 7, 7), dtype=bool)
    mask[0, 1:6, 1:6] = True
    mask[0, 3, 3] = False
    contours = trace_mask(mask)
    assert contours.n_loops == 2
    areas = sorted(contours.signed_areas_px().tolist())
    assert areas == [-1.0, 25.0]


def test_diagonal_pixels_are_separate_simple_loops() -> None:
    mask = np.zeros((1, 4, 4), dtype=bool)
    mask[0, 1, 1] = mask[0, 2, 2] = True
    contours = trace_mask(mask)
    assert contours.n_loops == 2
    assert all(len(contours.loop(k)) == 4 for k in range(2))


def test_thin_line_and_islands_keep_all_voxels() -> None:
    mask = np.zeros((2, 9, 9), dtype=bool)
    mask[0, 4, 1:8] = True  # horizontal line 1 voxel thick
    mask[1, 1, 1] = mask[1, 7, 7] = True  # two islands
    mask[1, 2:7, 4] = True  # vertical line
    contours = trace_mask(mask)
    assert np.array_equal(rasterise_even_odd(contours, mask.shape), mask)
    assert (contours.loop_slice == 1).sum() == 3


def test_empty_mask_gives_no_loops() -> None:
    contours = trace_mask(np.zeros((3, 4, 4), dtype=bool))
    assert contours.n_loops == 0
    assert contours.vertices_cr.shape == (0, 2)


def test_loops_are_sorted_by_slice_and_keep_only_corners() -> None:
    mask = np.zeros((3, 10, 10), dtype=bool)
    mask[2, 2:8, 2:8] = True
    mask[0, 1:3, 1:9] = True
    contours = trace_mask(mask)
    assert contours.loop_slice.tolist() == [0, 2]
    assert [len(contours.loop(k)) for k in range(2)] == [4, 4]


def test_smoothing_moves_no_vertex_beyond_the_fraction_and_keeps_centres() -> None:
    rng = np.random.default_rng(3)
    mask = rng.random((2, 15, 15)) < 0.6
    exact = trace_mask(mask)
    smooth = smooth_contours(exact, 0.3)
    shift = np.abs(smooth.vertices_cr - exact.vertices_cr)
    assert shift.max() <= 0.3 + 1e-12
    assert shift.max() > 0.1  # it did smooth something
    assert np.array_equal(rasterise_even_odd(smooth, mask.shape), mask)


def test_smoothing_fraction_of_half_voxel_or_more_is_refused() -> None:
    with pytest.raises(OutputWriterError, match="0.5"):
        smooth_contours(trace_mask(np.ones((1, 2, 2), dtype=bool)), 0.5)


def _header(ipp: list[float], iop: list[float], spacing: list[float]) -> Dataset:
    ds = Dataset()
    ds.ImagePositionPatient = ipp
    ds.ImageOrientationPatient = iop
    ds.PixelSpacing = spacing
    return ds


def test_pixel_edges_map_to_patient_space_with_row_and_column_spacing() -> None:
    # FFP orientation (normal -z, so sorted positions decrease in z), anisotropic
    # pixels: row spacing 2 mm, column spacing 0.5 mm.
    headers = [_header([10.0, 20.0, z], [1, 0, 0, 0, -1, 0], [2.0, 0.5]) for z in (0.0, -2.5, -5.0)]
    geometry = SliceGeometry.from_headers(headers)
    points = geometry.to_patient_mm(np.array([[-0.5, -0.5], [3.5, 1.5]]), np.array([0, 2]))
    assert points.tolist() == [[9.75, 21.0, 0.0], [11.75, 17.0, -5.0]]


def test_unsorted_headers_are_refused_with_the_fix() -> None:
    headers = [_header([0.0, 0.0, z], [1, 0, 0, 0, 1, 0], [1.0, 1.0]) for z in (2.5, 0.0)]
    with pytest.raises(OutputWriterError, match="not sorted"):
        SliceGeometry.from_headers(headers)


def test_mixed_orientation_is_refused() -> None:
    headers = [
        _header([0.0, 0.0, 0.0], [1, 0, 0, 0, 1, 0], [1.0, 1.0]),
        _header([0.0, 0.0, 2.0], [0, 1, 0, 0, 0, -1], [1.0, 1.0]),
    ]
    with pytest.raises(OutputWriterError, match="orientation"):
        SliceGeometry.from_headers(headers)
