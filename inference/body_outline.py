"""The classical ``body`` model: the patient's outline from HU, on the source grid.

Voxels above ``threshold_hu`` (default -350 HU) are tissue; a small opening
(radius ``opening_radius_mm`` in the image plane, per slice) detaches the
couch, immobilisation devices and thin cables; the largest 3D connected
component is the patient; holes (lungs, airways, bowel gas) are filled in each
slice. Works directly on ``[slice, row, column]`` without resampling, so the
mask is exact on the source grid for any patient position or orientation.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from inference.postprocess import fill_holes_per_slice
from inference.volume import ImageVolume


def _square_filter(mask: np.ndarray, radius_px: tuple[int, int], erode: bool) -> np.ndarray:
    """In-plane erosion/dilation by a (2 ry + 1) x (2 rx + 1) square, separably (fast)."""
    func = ndimage.minimum_filter1d if erode else ndimage.maximum_filter1d
    out = mask.view(np.uint8)
    for axis, radius in ((1, radius_px[0]), (2, radius_px[1])):
        if radius >= 1:
            out = func(out, 2 * radius + 1, axis=axis, mode="constant", cval=0 if not erode else 1)
    return out.view(bool)


def body_outline(
    volume: ImageVolume,
    *,
    threshold_hu: float = -350.0,
    keep_largest_component: bool = True,
    fill_holes: bool = True,
    opening_radius_mm: float = 3.0,
) -> np.ndarray:
    """Boolean body mask ``[slice, row, column]`` on the source grid.

    Parameters
    ----------
    volume
        CT volume in HU.
    threshold_hu
        Tissue threshold (HU).
    keep_largest_component
        Keep only the largest 3D 6-connected component (removes the couch).
    fill_holes
        Fill enclosed air per slice.
    opening_radius_mm
        In-plane radius of the opening before the component search (0: none).
    """
    mask = volume.array > threshold_hu
    col_mm, row_mm, _ = volume.spacing_mm
    radius = (int(round(opening_radius_mm / row_mm)), int(round(opening_radius_mm / col_mm)))
    if opening_radius_mm > 0 and max(radius) >= 1:
        opened = _square_filter(_square_filter(mask, radius, True), radius, False)
    else:
        opened = mask
    if keep_largest_component and opened.any():
        labels, n = ndimage.label(opened)
        if n > 1:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            opened = labels == int(sizes.argmax())
        # give back the boundary voxels the opening removed from the patient
        if opened is not mask and max(radius) >= 1:
            grown = _square_filter(opened, radius, False)
            opened = grown & mask
    if fill_holes:
        opened = fill_holes_per_slice(opened)
    return np.asarray(opened, dtype=bool)
