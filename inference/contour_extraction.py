"""Boolean mask planes to closed planar polygons on voxel edges.

Conventions
-----------
* Masks are indexed ``[slice, row, column]``. Pixel coordinates are
  ``(column, row)`` with the CENTRE of pixel ``(c, r)`` at ``(c, r)``; the
  pixel covers ``[c - 0.5, c + 0.5] x [r - 0.5, r + 0.5]``.
* Polygons run along the boundary between inside and outside pixels, so
  every vertex lies on a pixel corner (half-integer coordinates) and the
  polygon area equals the number of pixels exactly. A rasteriser that tests
  pixel centres against the polygon reproduces the mask exactly.
* Outer boundaries and hole boundaries are separate loops (XOR / even-odd
  convention, as Eclipse, RayStation and Monaco read RTSTRUCT): a pixel is
  inside when it is enclosed by an odd number of loops. Outer loops have a
  positive shoelace area in ``(column, row)`` coordinates (clockwise on
  screen, rows pointing down), holes a negative one.
* Pixels touching only diagonally belong to different loops (4-connected
  foreground): at a corner shared by two diagonal inside pixels each loop
  turns around its own pixel, so every outer loop is a simple polygon.
  Single pixels become 4-vertex squares; 1-pixel-thin lines become thin
  rectangles or chains of squares.
* Collinear vertices are dropped; only direction changes remain.
* Patient coordinates: DICOM LPS in mm. The centre of pixel ``(c, r)`` of a
  slice is ``IPP + c * dc * X + r * dr * Y`` with ``X = IOP[0:3]`` (direction
  of increasing column), ``Y = IOP[3:6]`` (increasing row), ``dr, dc =
  PixelSpacing`` (row spacing first), so voxel edges sit at ``c - 0.5`` and
  ``r - 0.5``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from contourd.errors import OutputWriterError

# Direction codes of boundary edges in (column, row): 0 right, 1 down, 2 left, 3 up.
_D_ROW = np.array([0, 1, 0, -1], dtype=np.int64)
_D_COL = np.array([1, 0, -1, 0], dtype=np.int64)


@dataclass(frozen=True)
class PlanarContours:
    """Closed polygons of one mask, all slices together.

    Attributes
    ----------
    vertices_cr : numpy.ndarray
        ``(M, 2)`` float64 vertex coordinates ``(column, row)`` in pixels
        (pixel centres at integers, vertices at half-integers unless smoothed).
    loop_offsets : numpy.ndarray
        ``(L + 1,)`` int64; loop ``k`` is ``vertices_cr[loop_offsets[k]:loop_offsets[k + 1]]``.
        The closing edge from the last vertex back to the first is implicit.
    loop_slice : numpy.ndarray
        ``(L,)`` int64 slice index (axis 0 of the mask) of each loop; loops are
        sorted by slice.
    """

    vertices_cr: np.ndarray
    loop_offsets: np.ndarray
    loop_slice: np.ndarray

    @property
    def n_loops(self) -> int:
        """Number of closed loops."""
        return int(self.loop_slice.shape[0])

    def loop(self, k: int) -> np.ndarray:
        """Vertices ``(N, 2)`` ``(column, row)`` of loop ``k``."""
        return self.vertices_cr[self.loop_offsets[k] : self.loop_offsets[k + 1]]

    def signed_areas_px(self) -> np.ndarray:
        """Shoelace area of each loop in pixels (positive outer, negative hole)."""
        x = self.vertices_cr[:, 0]
        y = self.vertices_cr[:, 1]
        nxt = _next_in_loop(self.loop_offsets)
        cross = x * y[nxt] - x[nxt] * y
        sums = np.add.reduceat(cross, self.loop_offsets[:-1]) if self.n_loops else cross[:0]
        return 0.5 * sums


def _empty() -> PlanarContours:
    return PlanarContours(
        vertices_cr=np.zeros((0, 2), dtype=np.float64),
        loop_offsets=np.zeros(1, dtype=np.int64),
        loop_slice=np.zeros(0, dtype=np.int64),
    )


def _next_in_loop(loop_offsets: np.ndarray) -> np.ndarray:
    """Index of the following vertex within the same loop (wrapping)."""
    n = int(loop_offsets[-1])
    nxt = np.arange(1, n + 1, dtype=np.int64)
    if n:
        nxt[loop_offsets[1:] - 1] = loop_offsets[:-1]
    return nxt


def _prev_in_loop(loop_offsets: np.ndarray) -> np.ndarray:
    """Index of the preceding vertex within the same loop (wrapping)."""
    n = int(loop_offsets[-1])
    prv = np.arange(-1, n - 1, dtype=np.int64)
    if n:
        prv[loop_offsets[:-1]] = loop_offsets[1:] - 1
    return prv


def trace_mask(mask: np.ndarray) -> PlanarContours:
    """Trace the boundary of a mask into closed loops on voxel edges.

    Parameters
    ----------
    mask : numpy.ndarray
        Boolean array ``[slice, row, column]`` (or ``[row, column]`` for one
        plane, reported as slice 0).

    Returns
    -------
    PlanarContours
        Loops of every slice, vertices in pixel coordinates ``(column, row)``.
        The area of the loops of a slice, combined with the even-odd rule,
        equals that slice's pixel count exactly.
    """
    mask = np.asarray(mask)
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise OutputWriterError(
            f"mask has shape {mask.shape}; expected [slice, row, column] (3-D) or "
            "[row, column]; pass one boolean array per ROI"
        )
    mask = mask.astype(bool, copy=False)
    slices_any = np.flatnonzero(mask.any(axis=(1, 2)))
    if slices_any.size == 0:
        return _empty()
    z0, z1 = int(slices_any[0]), int(slices_any[-1]) + 1
    sub = mask[z0:z1]
    footprint = np.logical_or.reduce(sub, axis=0)  # (rows, cols): cheaper than any(axis=(0, 2))
    rows = np.flatnonzero(footprint.any(axis=1))
    cols = np.flatnonzero(footprint.any(axis=0))
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    c0, c1 = int(cols[0]), int(cols[-1]) + 1
    nz, h, w = z1 - z0, r1 - r0, c1 - c0

    padded = np.zeros((nz, h + 2, w + 2), dtype=bool)
    padded[:, 1:-1, 1:-1] = sub[:, r0:r1, c0:c1]
    wp = w + 2

    # Horizontal boundary edges between padded rows i and i + 1 (corner row R = i + 1).
    # (bool arrays + flatnonzero: several times faster than int8 diff + nonzero)
    flat = np.flatnonzero(padded[:, 1:, :] != padded[:, :-1, :])
    vz, rem = np.divmod(flat, (h + 1) * wp)
    vi, vc = np.divmod(rem, wp)
    v_top = padded[vz, vi + 1, vc]
    # top edge of pixel (i+1, c): (R, c) -> (R, c+1), dir right; bottom edge of
    # pixel (i, c): (R, c+1) -> (R, c), dir left.
    e_z = [vz]
    e_r = [vi + 1]
    e_c = [np.where(v_top, vc, vc + 1)]
    e_d = [np.where(v_top, 0, 2)]
    # Vertical boundary edges between padded columns j and j + 1 (corner column C = j + 1).
    flat = np.flatnonzero(padded[:, :, 1:] != padded[:, :, :-1])
    hz, rem = np.divmod(flat, (h + 2) * (w + 1))
    hr, hj = np.divmod(rem, w + 1)
    h_left = padded[hz, hr, hj + 1]
    # left edge of pixel (r, j+1): (r+1, C) -> (r, C), dir up; right edge of
    # pixel (r, j): (r, C) -> (r+1, C), dir down.
    e_z.append(hz)
    e_r.append(np.where(h_left, hr + 1, hr))
    e_c.append(hj + 1)
    e_d.append(np.where(h_left, 3, 1))
    del padded, flat

    ez = np.concatenate(e_z).astype(np.int64)
    er = np.concatenate(e_r).astype(np.int64)
    ec = np.concatenate(e_c).astype(np.int64)
    ed = np.concatenate(e_d).astype(np.int64)
    n_edges = ez.shape[0]

    stride_r = w + 3
    stride_z = (h + 3) * stride_r
    start_key = ez * stride_z + er * stride_r + ec
    end_key = ez * stride_z + (er + _D_ROW[ed]) * stride_r + (ec + _D_COL[ed])

    by_start = np.argsort(start_key, kind="stable")
    sorted_keys = start_key[by_start]
    pos = np.searchsorted(sorted_keys, end_key)
    nxt = by_start[pos]
    # Saddle corners have two outgoing edges; take the right turn (stay around
    # the same pixel), which keeps diagonal pixels in separate loops.
    pos2 = np.minimum(pos + 1, n_edges - 1)
    saddle = (pos + 1 < n_edges) & (sorted_keys[pos2] == end_key)
    right_turn = (ed + 1) % 4
    take_second = saddle & (ed[nxt] != right_turn)
    nxt[take_second] = by_start[pos2[take_second]]

    # Label each cycle by its smallest edge index (pointer jumping).
    label = np.arange(n_edges, dtype=np.int64)
    jump = nxt.copy()
    while True:
        new_label = np.minimum(label, label[jump])
        jump = jump[jump]
        if np.array_equal(new_label, label):
            break
        label = new_label
    # Rank within the cycle: distance to the edge just before the leader.
    tail = nxt == label
    dist = np.where(tail, 0, 1).astype(np.int64)
    succ = np.where(tail, np.arange(n_edges), nxt)
    while True:
        succ_succ = succ[succ]
        if np.array_equal(succ_succ, succ):
            break
        dist = dist + dist[succ]
        succ = succ_succ
    order = np.lexsort((-dist, label))
    lab_sorted = label[order]
    starts = np.flatnonzero(np.r_[True, lab_sorted[1:] != lab_sorted[:-1]])
    edge_offsets = np.r_[starts, n_edges].astype(np.int64)

    d_sorted = ed[order]
    prev = _prev_in_loop(edge_offsets)
    keep = d_sorted != d_sorted[prev]
    kept_idx = order[keep]
    loop_of_edge = np.repeat(np.arange(starts.size), np.diff(edge_offsets))
    counts = np.bincount(loop_of_edge[keep], minlength=starts.size)
    loop_z = ez[order[starts]] + z0

    # Sort loops by slice (stable: keeps a deterministic order within a slice).
    loop_order = np.argsort(loop_z, kind="stable")
    kept_loop = loop_of_edge[keep]
    rank = np.empty_like(loop_order)
    rank[loop_order] = np.arange(loop_order.size)
    vert_order = np.argsort(rank[kept_loop], kind="stable")
    kept_idx = kept_idx[vert_order]
    counts = counts[loop_order]

    vertices = np.empty((kept_idx.size, 2), dtype=np.float64)
    # corner (R, C) of the padded crop is the top-left corner of original
    # pixel (R - 1 + r0, C - 1 + c0), i.e. at (col - 0.5, row - 0.5).
    vertices[:, 0] = ec[kept_idx] + (c0 - 1.5)
    vertices[:, 1] = er[kept_idx] + (r0 - 1.5)
    return PlanarContours(
        vertices_cr=vertices,
        loop_offsets=np.r_[0, np.cumsum(counts)].astype(np.int64),
        loop_slice=loop_z[loop_order].astype(np.int64),
    )


def smooth_contours(
    contours: PlanarContours, max_shift_fraction: float, *, iterations: int = 3
) -> PlanarContours:
    """Round staircase corners without moving any vertex far.

    Laplacian smoothing of each loop, after which every vertex is clamped so
    that it lies within ``max_shift_fraction`` of a pixel of its original
    position along each axis (column and row separately). Since edges are
    straight lines between vertices, no point of the contour moves more than
    that fraction of a voxel along either axis.

    Parameters
    ----------
    contours : PlanarContours
        Loops from :func:`trace_mask`.
    max_shift_fraction : float
        Largest displacement per axis as a fraction of the pixel spacing
        along that axis, in ``[0, 0.5)``. Below 0.5 no pixel centre can cross
        a straight edge, so a pixel-centre rasteriser still sees the mask
        apart from rare corner cases of diagonal contacts.
    iterations : int
        Laplacian passes before clamping.
    """
    if not 0.0 <= max_shift_fraction < 0.5:
        raise OutputWriterError(
            f"smoothing fraction {max_shift_fraction!r} is outside [0, 0.5); "
            "use e.g. 0.25 (a quarter voxel) or 0 for exact voxel edges"
        )
    if max_shift_fraction == 0.0 or contours.n_loops == 0:
        return contours
    original = contours.vertices_cr
    nxt = _next_in_loop(contours.loop_offsets)
    prv = _prev_in_loop(contours.loop_offsets)
    pts = original.copy()
    for _ in range(iterations):
        pts = 0.5 * pts + 0.25 * (pts[nxt] + pts[prv])
    shift = np.clip(pts - original, -max_shift_fraction, max_shift_fraction)
    return PlanarContours(
        vertices_cr=original + shift,
        loop_offsets=contours.loop_offsets,
        loop_slice=contours.loop_slice,
    )


@dataclass(frozen=True)
class SliceGeometry:
    """Where each plane of a mask lies in patient space (LPS, mm).

    Attributes
    ----------
    positions_mm : numpy.ndarray
        ``(Z, 3)`` ImagePositionPatient of each plane (centre of pixel (0, 0)).
    column_direction : numpy.ndarray
        ``(3,)`` unit vector of increasing column index, ``IOP[0:3]``.
    row_direction : numpy.ndarray
        ``(3,)`` unit vector of increasing row index, ``IOP[3:6]``.
    row_spacing_mm : float
        PixelSpacing[0]: distance between adjacent rows.
    column_spacing_mm : float
        PixelSpacing[1]: distance between adjacent columns.
    """

    positions_mm: np.ndarray
    column_direction: np.ndarray
    row_direction: np.ndarray
    row_spacing_mm: float
    column_spacing_mm: float

    @classmethod
    def from_headers(cls, headers: Sequence[object], *, tolerance: float = 1e-4) -> SliceGeometry:
        """Read the geometry of a sorted single-orientation series.

        Raises
        ------
        OutputWriterError
            When headers lack geometry, mix orientations or spacings, or are
            not sorted by increasing position along the slice normal.
        """
        if not headers:
            raise OutputWriterError("no source headers; pass the CT/MR headers of the series")
        try:
            iops = np.array([[float(v) for v in h.ImageOrientationPatient] for h in headers])  # type: ignore[attr-defined]
            ipps = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])  # type: ignore[attr-defined]
            spacings = np.array([[float(v) for v in h.PixelSpacing] for h in headers])  # type: ignore[attr-defined]
        except (AttributeError, TypeError, ValueError) as err:
            raise OutputWriterError(
                f"source header lacks usable ImageOrientationPatient, ImagePositionPatient "
                f"or PixelSpacing ({err}); contours need the geometry of every slice"
            ) from err
        if np.abs(iops - iops[0]).max() > tolerance or np.abs(spacings - spacings[0]).max() > (
            tolerance
        ):
            raise OutputWriterError(
                "source slices differ in ImageOrientationPatient or PixelSpacing; expected one "
                "orientation and pixel spacing per series; split the series first"
            )
        x_dir, y_dir = iops[0, :3], iops[0, 3:]
        normal = np.cross(x_dir, y_dir)
        along = ipps @ normal
        if len(headers) > 1 and np.any(np.diff(along) <= 0):
            raise OutputWriterError(
                f"source headers are not sorted by increasing position along the slice normal "
                f"{np.round(normal, 4).tolist()} (positions {np.round(along, 3).tolist()[:6]}...); "
                "sort them (and the mask planes) with the series loader's order"
            )
        return cls(
            positions_mm=ipps,
            column_direction=x_dir,
            row_direction=y_dir,
            row_spacing_mm=float(spacings[0, 0]),
            column_spacing_mm=float(spacings[0, 1]),
        )

    def to_patient_mm(self, vertices_cr: np.ndarray, slice_index: np.ndarray) -> np.ndarray:
        """Map pixel coordinates of given planes to LPS mm.

        Parameters
        ----------
        vertices_cr : numpy.ndarray
            ``(N, 2)`` ``(column, row)`` in pixels, centre of pixel (0, 0) at (0, 0).
        slice_index : numpy.ndarray
            ``(N,)`` plane index of each vertex.

        Returns
        -------
        numpy.ndarray
            ``(N, 3)`` LPS coordinates in mm.
        """
        col_mm = vertices_cr[:, 0:1] * self.column_spacing_mm
        row_mm = vertices_cr[:, 1:2] * self.row_spacing_mm
        return (
            self.positions_mm[slice_index]
            + col_mm * self.column_direction[None, :]
            + row_mm * self.row_direction[None, :]
        )
