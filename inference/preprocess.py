"""Source volume to network input, as the model card says.

The network sees an array ``[z, y, x]`` on an axis-aligned LPS grid (identity
direction: +x patient left, +y posterior, +z superior) at the card's
``spacing_mm`` (``[x, y, z]``), normalised as ``preprocessing.normalization``
asks (``ct_clip_scale``: clip HU to ``[min_hu, max_hu]`` and map linearly to
``[-1, 1]``; ``zscore``: subtract the mean and divide by the standard deviation
of the source image).

Reorientation and resampling are ONE linear interpolation with SimpleITK: the
source array is wrapped as an index-space image and an affine transform maps
every model-grid point (LPS mm) to a fractional source index. For series whose
axes are a signed permutation of LPS this gives the same voxels as
``sitk.DICOMOrient(image, "LPS")`` followed by ``sitk.Resample`` to the card
spacing; it also handles oblique and gantry-tilted (sheared) series, which
``DICOMOrient`` cannot, with a single interpolation instead of two.
:func:`to_sitk_image` offers the plain SimpleITK image (with ``DICOMOrient``)
for callers that want it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk  # noqa: N813 - the conventional alias

from contourd.errors import InferenceError
from inference.volume import ImageVolume
from model_store.card import CtClipScale, Preprocessing, ZScore

#: HU used outside the source field of view for CT (air).
CT_OUTSIDE_HU = -1024.0


@dataclass(frozen=True)
class ModelGrid:
    """An axis-aligned LPS grid (identity direction).

    Parameters
    ----------
    origin_lps_mm
        LPS position of voxel ``[0, 0, 0]``'s centre, ``(x, y, z)`` mm.
    spacing_mm
        Voxel size ``(x, y, z)`` mm.
    size_zyx
        Array shape ``(z, y, x)``.
    """

    origin_lps_mm: tuple[float, float, float]
    spacing_mm: tuple[float, float, float]
    size_zyx: tuple[int, int, int]

    @property
    def affine(self) -> np.ndarray:
        """4x4 mapping ``(x index, y index, z index, 1)`` to LPS mm."""
        affine = np.diag([*self.spacing_mm, 1.0])
        affine[:3, 3] = self.origin_lps_mm
        return affine


@dataclass
class PreparedInput:
    """Normalised network input on its grid.

    Parameters
    ----------
    array
        float32 ``[z, y, x]`` on :attr:`grid`.
    grid
        Where the array lies in LPS.
    """

    array: np.ndarray
    grid: ModelGrid


def model_grid_for(volume: ImageVolume, spacing_mm: tuple[float, float, float]) -> ModelGrid:
    """The axis-aligned grid at ``spacing_mm`` ``[x, y, z]`` covering the source volume.

    The grid spans the bounding box of the source voxel centres (all eight
    corners of the index box, so oblique and tilted volumes are fully covered).
    """
    nz, ny, nx = volume.shape
    corners = np.array(
        [[i, j, k] for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)], dtype=float
    )
    lps = volume.index_to_lps(corners)
    low, high = lps.min(axis=0), lps.max(axis=0)
    spacing = np.asarray(spacing_mm, dtype=float)
    size_xyz = np.floor((high - low) / spacing + 1e-6).astype(int) + 1
    centre = (low + high) / 2
    origin = centre - (size_xyz - 1) * spacing / 2
    return ModelGrid(
        origin_lps_mm=(float(origin[0]), float(origin[1]), float(origin[2])),
        spacing_mm=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        size_zyx=(int(size_xyz[2]), int(size_xyz[1]), int(size_xyz[0])),
    )


def _index_image(array: np.ndarray) -> sitk.Image:
    """``array`` ``[z, y, x]`` as an image whose physical space is its index space."""
    return sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))


def _affine_transform(matrix: np.ndarray, translation: np.ndarray) -> sitk.AffineTransform:
    transform = sitk.AffineTransform(3)
    transform.SetMatrix([float(v) for v in matrix.ravel()])
    transform.SetTranslation([float(v) for v in translation])
    return transform


def resample_to_grid(
    volume: ImageVolume,
    grid: ModelGrid,
    *,
    outside_value: float,
    array: np.ndarray | None = None,
) -> np.ndarray:
    """Linearly resample the source array onto ``grid``.

    Parameters
    ----------
    volume
        Source geometry (and values unless ``array`` is given).
    grid
        Target axis-aligned LPS grid.
    outside_value
        Value of grid voxels outside the source field of view.
    array
        Values on the source grid ``[slice, row, column]`` to use instead of
        ``volume.array``.

    Returns
    -------
    numpy.ndarray
        float32 ``[z, y, x]`` of shape ``grid.size_zyx``.
    """
    source = _index_image(volume.array if array is None else array)
    inverse = np.linalg.inv(volume.affine[:3, :3])
    # output point p (LPS) -> source index: A^-1 (p - origin)
    transform = _affine_transform(inverse, -inverse @ volume.affine[:3, 3])
    nz, ny, nx = grid.size_zyx
    out = sitk.Resample(
        source,
        [nx, ny, nz],
        transform,
        sitk.sitkLinear,
        list(grid.origin_lps_mm),
        list(grid.spacing_mm),
        [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        float(outside_value),
        sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(out)


def resample_from_grid(
    values: np.ndarray,
    grid: ModelGrid,
    volume: ImageVolume,
    *,
    start_zyx: tuple[int, int, int] = (0, 0, 0),
    size_zyx: tuple[int, int, int] | None = None,
    outside_value: float = 0.0,
) -> np.ndarray:
    """Linearly resample ``values`` on ``grid`` back onto (a box of) the source grid.

    Parameters
    ----------
    values
        float32 ``[z, y, x]`` on ``grid``.
    grid
        The grid ``values`` lie on.
    volume
        Source geometry.
    start_zyx, size_zyx
        Sub-box of the source array ``[slice, row, column]`` to fill (default:
        all of it).
    outside_value
        Value where the source voxel falls outside ``grid``.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``size_zyx``, indexed like the source array.
    """
    if size_zyx is None:
        size_zyx = volume.shape
    image = _index_image(values)
    image.SetOrigin(grid.origin_lps_mm)
    image.SetSpacing(grid.spacing_mm)
    # output point = source index (column, row, slice) -> LPS via the source affine
    transform = _affine_transform(volume.affine[:3, :3], volume.affine[:3, 3])
    out = sitk.Resample(
        image,
        [int(size_zyx[2]), int(size_zyx[1]), int(size_zyx[0])],
        transform,
        sitk.sitkLinear,
        [float(start_zyx[2]), float(start_zyx[1]), float(start_zyx[0])],
        [1.0, 1.0, 1.0],
        [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        float(outside_value),
        sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(out)


def to_sitk_image(volume: ImageVolume, *, reorient: str | None = "LPS") -> sitk.Image:
    """The volume as a SimpleITK image (physical space LPS mm).

    Parameters
    ----------
    volume
        Must have orthogonal axes (no gantry tilt: ITK directions are orthonormal).
    reorient
        Passed to ``sitk.DICOMOrient`` (e.g. ``"LPS"``), or ``None`` to keep
        the source axis order.

    Raises
    ------
    InferenceError
        If the volume is sheared (gantry tilt); use :func:`resample_to_grid`.
    """
    if volume.tilt_deg > 0.01:
        raise InferenceError(
            f"series {volume.series_uid} has a gantry tilt of {volume.tilt_deg:.2f} degrees; "
            "a SimpleITK image needs orthogonal axes; use resample_to_grid() instead"
        )
    image = sitk.GetImageFromArray(volume.array)
    spacing = np.array(volume.spacing_mm)
    direction = volume.affine[:3, :3] / spacing
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in volume.affine[:3, 3]])
    image.SetDirection([float(v) for v in direction.ravel()])
    if reorient:
        image = sitk.DICOMOrient(image, reorient)
    return image


def normalise(
    array: np.ndarray, normalization: CtClipScale | ZScore, *, mean: float, std: float
) -> np.ndarray:
    """Normalise intensities in place and return ``array``.

    ``ct_clip_scale`` maps ``[min_hu, max_hu]`` to ``[-1, 1]`` after clipping;
    ``zscore`` uses the given source ``mean`` and ``std``.
    """
    if isinstance(normalization, CtClipScale):
        lo, hi = normalization.min_hu, normalization.max_hu
        np.clip(array, lo, hi, out=array)
        array -= lo
        array *= 2.0 / (hi - lo)
        array -= 1.0
    else:
        array -= mean
        array /= max(std, 1e-6)
    return array


def preprocess(volume: ImageVolume, preprocessing: Preprocessing) -> PreparedInput:
    """Resample ``volume`` onto the card's grid and normalise it.

    Parameters
    ----------
    volume
        Source volume (HU for CT).
    preprocessing
        The card's ``preprocessing`` section (``spacing_mm`` is ``[x, y, z]``).

    Returns
    -------
    PreparedInput
        float32 ``[z, y, x]`` on an identity-direction LPS grid.
    """
    grid = model_grid_for(volume, preprocessing.spacing_mm)
    norm = preprocessing.normalization
    if isinstance(norm, ZScore):
        mean = float(volume.array.mean(dtype=np.float64))
        std = float(volume.array.std(dtype=np.float64))
        outside = mean
    else:
        mean, std = 0.0, 1.0
        outside = CT_OUTSIDE_HU if volume.modality == "CT" else float(volume.array.min())
    array = resample_to_grid(volume, grid, outside_value=outside)
    return PreparedInput(array=normalise(array, norm, mean=mean, std=std), grid=grid)
