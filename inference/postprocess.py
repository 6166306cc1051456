"""Network probabilities on the model grid to boolean masks on the SOURCE grid.

For each ROI (class ``c``) the margin ``p_c - max_{k != c} p_k`` is computed on
the model grid, where it is small, and resampled LINEARLY onto the source grid
(never nearest-neighbour labels); the mask is ``margin > 0``. Its zero level
set is the arg-max decision boundary, so no ``argmax`` over a full-resolution
multi-class array is ever formed: one class at a time, and only inside the
bounding box where that class can win (mapped through both affines), so small
organs cost little on a 512 x 512 x 200 source grid. Then, as the card's
``postprocessing`` says per label, the largest 3D connected component is kept
and holes are filled slice by slice (in the source image planes, where the
RTSTRUCT contours will lie).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from inference.preprocess import ModelGrid, resample_from_grid
from inference.volume import ImageVolume


@dataclass(frozen=True)
class Cleanup:
    """Per-ROI clean-up (mirrors the card's ``RoiPostprocessing``)."""

    largest_component: bool = False
    fill_holes: bool = False


def class_margins(probs: np.ndarray) -> np.ndarray:
    """``p_c - max_{k != c} p_k`` for every class, float32 ``[class, z, y, x]``."""
    tensor = torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float32))
    top2 = torch.topk(tensor, k=2, dim=0).values
    first, second = top2[0], top2[1]
    margins = torch.empty_like(tensor)
    for c in range(tensor.shape[0]):
        other = torch.where(tensor[c] >= first, second, first)
        torch.sub(tensor[c], other, out=margins[c])
    return margins.numpy()


def _source_box(
    bbox_zyx: tuple[np.ndarray, np.ndarray], grid: ModelGrid, volume: ImageVolume
) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """Source-array box ``(start, size)`` ``[slice, row, column]`` covering a grid box."""
    lo, hi = bbox_zyx
    corners_xyz = np.array(
        [[x, y, z] for z in (lo[0], hi[0]) for y in (lo[1], hi[1]) for x in (lo[2], hi[2])],
        dtype=float,
    )
    lps = corners_xyz @ grid.affine[:3, :3].T + grid.affine[:3, 3]
    idx = (lps - volume.affine[:3, 3]) @ np.linalg.inv(volume.affine[:3, :3]).T  # (col,row,slice)
    start_crs = np.maximum(np.floor(idx.min(axis=0)).astype(int) - 1, 0)
    shape_crs = np.array([volume.shape[2], volume.shape[1], volume.shape[0]])
    stop_crs = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 2, shape_crs)
    if np.any(stop_crs <= start_crs):
        return None
    start = (int(start_crs[2]), int(start_crs[1]), int(start_crs[0]))
    size = tuple(int(v) for v in (stop_crs - start_crs)[::-1])
    return start, (size[0], size[1], size[2])


def margin_to_source_mask(margin: np.ndarray, grid: ModelGrid, volume: ImageVolume) -> np.ndarray:
    """Resample one class margin linearly onto the source grid; mask where it is > 0.

    Returns a boolean ``[slice, row, column]`` array of the source shape.
    """
    mask = np.zeros(volume.shape, dtype=bool)
    positive = margin > 0
    if not positive.any():
        return mask
    nonzero = [
        np.flatnonzero(positive.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)
    ]
    lo = np.array([max(int(n[0]) - 1, 0) for n in nonzero])
    hi = np.array([min(int(n[-1]) + 1, s - 1) for n, s in zip(nonzero, margin.shape, strict=True)])
    box = _source_box((lo, hi), grid, volume)
    if box is None:
        return mask
    start, size = box
    values = resample_from_grid(
        margin, grid, volume, start_zyx=start, size_zyx=size, outside_value=-1.0
    )
    z0, y0, x0 = start
    mask[z0 : z0 + size[0], y0 : y0 + size[1], x0 : x0 + size[2]] = values > 0
    return mask


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected 3D component (works inside the mask's bounding box)."""
    box = mask_bounding_box(mask)
    if box is None:
        return mask
    sub = mask[box]
    labels, n = ndimage.label(sub, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    out = np.zeros_like(mask)
    out[box] = labels == int(sizes.argmax())
    return out


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Fill holes in each source slice (2D 4-connected background, one labelling pass).

    Background components of a slice that do not touch that slice's border
    (within the mask's bounding box, grown by one voxel) are holes.
    """
    box = mask_bounding_box(mask)
    if box is None:
        return mask
    grown = tuple(
        slice(max(b.start - 1, 0), min(b.stop + 1, n)) if ax else b
        for ax, (b, n) in enumerate(zip(box, mask.shape, strict=True))
    )
    sub = mask[grown]
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    labels, n = ndimage.label(~sub, structure=structure)
    if n == 0:
        return mask
    outside = np.zeros(n + 1, dtype=bool)
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        outside[np.unique(edge)] = True
    outside[0] = True
    out = mask.copy()
    out[grown] = sub | ~outside[labels]
    return out


def mask_bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Tight ``[z, y, x]`` slices around the True voxels; ``None`` when there are none."""
    if not mask.any():
        return None
    bounds = []
    for ax in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))
        bounds.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return bounds[0], bounds[1], bounds[2]


def clean_mask(mask: np.ndarray, cleanup: Cleanup) -> np.ndarray:
    """Apply the card's clean-up to one source-grid mask."""
    if cleanup.largest_component:
        mask = largest_component(mask)
    if cleanup.fill_holes:
        mask = fill_holes_per_slice(mask)
    return mask


def probabilities_to_masks(
    probs: np.ndarray,
    grid: ModelGrid,
    volume: ImageVolume,
    labels: list[int],
    cleanups: dict[int, Cleanup] | None = None,
) -> dict[int, np.ndarray]:
    """Masks on the source grid for ``labels`` from probabilities on ``grid``.

    Parameters
    ----------
    probs
        float32 ``[class, z, y, x]`` on ``grid`` (class 0 = background).
    grid
        The model grid.
    volume
        The source volume (geometry only).
    labels
        Classes to turn into masks.
    cleanups
        Per-label clean-up; missing labels get none.

    Returns
    -------
    dict[int, numpy.ndarray]
        label -> boolean ``[slice, row, column]`` (possibly empty).
    """
    margins = class_margins(probs)
    cleanups = cleanups or {}
    out = {}
    for label in labels:
        mask = margin_to_source_mask(margins[label], grid, volume)
        out[label] = clean_mask(mask, cleanups.get(label, Cleanup()))
    return out


def foreground_box(image_zyx: np.ndarray, margin_voxels: int) -> tuple[slice, slice, slice] | None:
    """Bounding box of the voxels above the image's minimum, grown by a margin.

    Returns ``None`` when the box would be the whole image (nothing to crop)
    or when every voxel equals the minimum (a blank input: the network runs on
    all of it and the caller sees what it makes of that).
    """
    tight = mask_bounding_box(image_zyx > image_zyx.min())
    if tight is None:
        return None
    box = [
        slice(max(b.start - margin_voxels, 0), min(b.stop + margin_voxels, n))
        for b, n in zip(tight, image_zyx.shape, strict=True)
    ]
    if all(b.start == 0 and b.stop == n for b, n in zip(box, image_zyx.shape, strict=True)):
        return None
    return box[0], box[1], box[2]
