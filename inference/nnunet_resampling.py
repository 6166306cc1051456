"""nnU-Net v2's resampling, written for contourd (no ``nnunetv2`` import).

Behaviour of ``resample_data_or_seg_to_shape`` for images and logits:

- the new shape of an axis is ``round(old_spacing / new_spacing * old_size)``;
- when the larger of the old or new spacing has one axis more than
  ``anisotropy_threshold`` times coarser than the finest (a thick-slice
  series), that axis is resampled on its own: each plane with a spline of
  ``order`` (``skimage.transform.resize``, edge mode, no anti-aliasing), then
  along the axis with a spline of ``order_z`` (0: nearest), pixel centres
  aligned (``align_corners=False``), edge values repeated;
- otherwise the whole volume is resized in 3D with a spline of ``order``.

Arrays are ``[channel, a0, a1, a2]`` in nnU-Net's (transposed) array order;
spacings in mm in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.ndimage import affine_transform
from skimage.transform import resize

from model_store.nnunet_card import NnunetResampling


def new_shape_for(
    shape: Sequence[int], spacing_mm: Sequence[float], target_spacing_mm: Sequence[float]
) -> tuple[int, ...]:
    """``round(spacing / target * size)`` per axis (nnU-Net's ``compute_new_shape``)."""
    return tuple(
        int(round(s / t * n)) for s, t, n in zip(spacing_mm, target_spacing_mm, shape, strict=True)
    )


def _lowres_axes(spacing: Sequence[float], threshold: float) -> list[int] | None:
    """Axes with the coarsest spacing when the spacing is anisotropic, else ``None``."""
    arr = np.asarray(spacing, dtype=float)
    if arr.max() / arr.min() <= threshold:
        return None
    return [int(i) for i in np.where(arr.max() / arr == 1)[0]]


def separate_axis(
    settings: NnunetResampling, spacing_mm: Sequence[float], new_spacing_mm: Sequence[float]
) -> int | None:
    """The axis resampled on its own, or ``None`` for a plain 3D resize."""
    if settings.force_separate_z is False:
        return None
    axes: list[int] | None
    if settings.force_separate_z:
        axes = [int(i) for i in np.where(max(spacing_mm) / np.asarray(spacing_mm) == 1)[0]]
    else:
        axes = _lowres_axes(spacing_mm, settings.anisotropy_threshold) or _lowres_axes(
            new_spacing_mm, settings.anisotropy_threshold
        )
    if not axes or len(axes) != 1:
        return None
    return axes[0]


def _resize_along(volume: np.ndarray, axis: int, size: int, order: int) -> np.ndarray:
    """Spline-resample one axis with centre-aligned coordinates and edge repetition."""
    old = volume.shape[axis]
    scale = old / size
    matrix = np.ones(3)
    matrix[axis] = scale
    offset = np.zeros(3)
    offset[axis] = 0.5 * scale - 0.5
    out_shape = list(volume.shape)
    out_shape[axis] = size
    return affine_transform(
        volume, matrix, offset=offset, output_shape=tuple(out_shape), order=order, mode="nearest"
    )


def resample_to_shape(
    data: np.ndarray,
    new_shape: Sequence[int],
    spacing_mm: Sequence[float],
    new_spacing_mm: Sequence[float],
    settings: NnunetResampling,
) -> np.ndarray:
    """Resample ``[c, a0, a1, a2]`` to ``new_shape`` as nnU-Net does (module docstring).

    Returns a float32 array (the input unchanged when the shape already fits).
    """
    new_shape = tuple(int(n) for n in new_shape)
    if tuple(data.shape[1:]) == new_shape:
        return data.astype(np.float32, copy=False)
    axis = separate_axis(settings, spacing_mm, new_spacing_mm)
    out = np.empty((data.shape[0], *new_shape), dtype=np.float32)
    for c in range(data.shape[0]):
        out[c] = _resample_channel(data[c], new_shape, axis, settings)
    return out


def _resample_channel(
    channel: np.ndarray, new_shape: tuple[int, ...], axis: int | None, settings: NnunetResampling
) -> np.ndarray:
    """One ``[a0, a1, a2]`` channel resampled as :func:`resample_to_shape` does (float64)."""
    channel = channel.astype(np.float64, copy=False)
    if axis is None:
        return np.asarray(
            resize(channel, new_shape, settings.order, mode="edge", anti_aliasing=False)
        )
    plane = [n for i, n in enumerate(new_shape) if i != axis]
    moved = np.moveaxis(channel, axis, 0)
    planes = np.stack(
        [resize(s, plane, settings.order, mode="edge", anti_aliasing=False) for s in moved]
    )
    planes = np.moveaxis(planes, 0, axis)
    if planes.shape[axis] != new_shape[axis]:
        planes = _resize_along(planes, axis, new_shape[axis], settings.order_z)
    return planes


def argmax_of_resampled(
    logits: np.ndarray,
    new_shape: Sequence[int],
    spacing_mm: Sequence[float],
    new_spacing_mm: Sequence[float],
    settings: NnunetResampling,
    *,
    linear: bool = False,
) -> np.ndarray:
    """``argmax`` over classes of ``logits`` ``[c, a0, a1, a2]`` resampled to ``new_shape``.

    The same labels as ``np.argmax(resample_to_shape(...), axis=0)`` (ties go to
    the lower class), one class at a time, so only the running maximum (float32)
    and the labels (uint8) are held at the new shape, not every class.
    ``linear``: with torch instead (:func:`resample_linear_torch`, the thick-slice
    axis nearest-neighbour as ``settings`` has nnU-Net do it).
    """
    new_shape = tuple(int(n) for n in new_shape)
    axis = separate_axis(settings, spacing_mm, new_spacing_mm)
    nearest = linear_nearest_axis(settings, spacing_mm, new_spacing_mm)
    best: np.ndarray | None = None
    labels = np.zeros(new_shape, dtype=np.uint8)
    for c in range(logits.shape[0]):
        if linear:
            value = resample_linear_torch(logits[c : c + 1], new_shape, nearest)[0]
        elif tuple(logits.shape[1:]) == new_shape:
            value = logits[c].astype(np.float32, copy=False)
        else:
            value = _resample_channel(logits[c], new_shape, axis, settings).astype(np.float32)
        if best is None:
            best = np.array(value, dtype=np.float32, copy=True)
            continue
        higher = value > best
        labels[higher] = c
        np.maximum(best, value, out=best)
        del value, higher
    return labels


def resample_linear_torch(
    data: np.ndarray, new_shape: Sequence[int], nearest_axis: int | None = None
) -> np.ndarray:
    """Linear resize of ``[c, a0, a1, a2]`` with torch (centre-aligned, edge-clamped).

    The same sampling positions as a first-order spline resize, on all CPU
    threads; ``fast`` mode uses it for the input and the logits. With
    ``nearest_axis`` that axis is resampled nearest-neighbour after the other
    two bilinearly, as nnU-Net treats a thick-slice axis (``order_z`` 0):
    output ``i`` takes input ``floor((i + 0.5) * old / new)``, which is where
    a zero-order spline at centre-aligned positions lands.
    """
    new_shape = tuple(int(n) for n in new_shape)
    if tuple(data.shape[1:]) == new_shape:
        return data.astype(np.float32, copy=False)
    tensor = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    if nearest_axis is None:
        out = torch.nn.functional.interpolate(
            tensor[None], size=new_shape, mode="trilinear", align_corners=False
        )
        return out[0].numpy()
    moved = tensor.movedim(nearest_axis + 1, 0)  # [A, c, p, q]: the planes as a batch
    plane = tuple(n for i, n in enumerate(new_shape) if i != nearest_axis)
    if tuple(moved.shape[2:]) != plane:
        moved = torch.nn.functional.interpolate(
            moved, size=plane, mode="bilinear", align_corners=False
        )
    old, new = int(moved.shape[0]), new_shape[nearest_axis]
    if old != new:
        index = np.minimum(np.floor((np.arange(new) + 0.5) * old / new).astype(np.int64), old - 1)
        moved = moved.index_select(0, torch.from_numpy(index))
    return np.ascontiguousarray(moved.movedim(0, nearest_axis + 1).numpy())


def linear_nearest_axis(
    settings: NnunetResampling, spacing_mm: Sequence[float], new_spacing_mm: Sequence[float]
) -> int | None:
    """The axis :func:`resample_linear_torch` takes nearest-neighbour: nnU-Net's separate
    axis when its ``order_z`` is 0, else ``None`` (all three axes linear)."""
    axis = separate_axis(settings, spacing_mm, new_spacing_mm)
    return axis if axis is not None and settings.order_z == 0 else None
