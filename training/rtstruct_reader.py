"""Read an RTSTRUCT and rasterise its contours onto the CT grid it was drawn on.

Rasterisation rule (documented because readers differ):

- Each ``CLOSED_PLANAR`` (or ``CLOSED_PLANAR_XOR``) contour is assigned to one
  image plane: the image its Contour Image Sequence references when that
  image is in the volume, otherwise the plane nearest to the contour's
  points (the points are mapped through the inverse of the volume's affine,
  so tilted and feet-first series work; a contour more than
  ``max_plane_offset`` slices away from every plane is skipped with a note).
- In its plane, the polygon's vertices become fractional (row, column)
  indices and the pixels whose CENTRE lies inside the polygon are set
  (``skimage.draw.polygon``, even-odd rule).
- All the contours of one ROI on one plane are combined by XOR, so a contour
  inside another is a hole (the convention of most planning systems and of
  the DICOM ``CLOSED_PLANAR_XOR`` type), and nested islands inside holes work.
- ``POINT``, ``OPEN_PLANAR`` and ``OPEN_NONPLANAR`` contours have no inside
  and are skipped.

Masks are boolean ``[slice, row, column]`` on the volume's grid (the
:class:`inference.volume.ImageVolume` convention).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from skimage.draw import polygon as fill_polygon

from contourd.errors import TrainingError
from inference.volume import ImageVolume

log = logging.getLogger(__name__)

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
CLOSED_TYPES = ("CLOSED_PLANAR", "CLOSED_PLANAR_XOR")


@dataclass(frozen=True)
class Contour:
    """One contour.

    Attributes
    ----------
    points_lps_mm
        ``(N, 3)`` float64 vertices in LPS mm.
    geometric_type
        Contour Geometric Type (``CLOSED_PLANAR``, ``POINT``...).
    referenced_sop_uid
        SOP Instance UID of the image it was drawn on, when given.
    """

    points_lps_mm: np.ndarray
    geometric_type: str
    referenced_sop_uid: str | None


@dataclass
class RoiContours:
    """One ROI of a structure set with its contours."""

    number: int
    name: str
    interpreted_type: str | None
    color_rgb: tuple[int, int, int] | None
    contours: list[Contour] = field(default_factory=list)


@dataclass
class StructureSet:
    """What :func:`read_rtstruct` returns.

    Attributes
    ----------
    referenced_series_uids
        Image series the structure set references (may be empty).
    frame_of_reference_uids
        Referenced frames of reference.
    rois
        ROIs in the order of the Structure Set ROI Sequence.
    label
        Structure Set Label.
    """

    referenced_series_uids: list[str]
    frame_of_reference_uids: list[str]
    rois: list[RoiContours]
    label: str = ""


def read_rtstruct(source: Path | Dataset) -> StructureSet:
    """Parse an RTSTRUCT file or dataset.

    Raises
    ------
    TrainingError
        When the object is not an RT Structure Set or its sequences are broken.
    """
    ds = pydicom.dcmread(source) if isinstance(source, Path) else source
    where = str(source) if isinstance(source, Path) else "dataset"
    if ds.get("Modality") != "RTSTRUCT" and ds.get("SOPClassUID") != RTSTRUCT_SOP_CLASS:
        raise TrainingError(
            f"{where} is a {ds.get('Modality', '?')} object, not an RTSTRUCT; pass the "
            "structure set exported with the CT"
        )
    series_uids: list[str] = []
    for_uids: list[str] = []
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        if "FrameOfReferenceUID" in frame:
            for_uids.append(str(frame.FrameOfReferenceUID))
        for study in frame.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                if "SeriesInstanceUID" in series:
                    series_uids.append(str(series.SeriesInstanceUID))
    rois: dict[int, RoiContours] = {}
    for item in ds.get("StructureSetROISequence", []):
        number = int(item.ROINumber)
        rois[number] = RoiContours(number, str(item.get("ROIName", f"ROI-{number}")), None, None)
    for obs in ds.get("RTROIObservationsSequence", []):
        roi = rois.get(int(obs.get("ReferencedROINumber", -1)))
        if roi is not None and obs.get("RTROIInterpretedType"):
            roi.interpreted_type = str(obs.RTROIInterpretedType)
    for item in ds.get("ROIContourSequence", []):
        number = int(item.get("ReferencedROINumber", -1))
        roi = rois.get(number)
        if roi is None:
            log.warning("%s: ROI Contour for ROI number %s has no Structure Set ROI", where, number)
            continue
        if "ROIDisplayColor" in item:
            rgb = [int(v) for v in item.ROIDisplayColor]
            if len(rgb) == 3:
                roi.color_rgb = (rgb[0], rgb[1], rgb[2])
        for contour in item.get("ContourSequence", []):
            data = np.asarray([float(v) for v in contour.get("ContourData", [])], dtype=np.float64)
            if data.size == 0 or data.size % 3:
                raise TrainingError(
                    f"{where}: ROI {roi.name!r} has a contour with {data.size} coordinates; "
                    "Contour Data must hold x, y, z triplets"
                )
            ref = None
            images = contour.get("ContourImageSequence", [])
            if images and "ReferencedSOPInstanceUID" in images[0]:
                ref = str(images[0].ReferencedSOPInstanceUID)
            roi.contours.append(
                Contour(data.reshape(-1, 3), str(contour.get("ContourGeometricType", "")), ref)
            )
    return StructureSet(
        series_uids, for_uids, list(rois.values()), str(ds.get("StructureSetLabel", ""))
    )


class PlaneLocator:
    """Assigns contours to the image planes of a volume (the rule in the module doc).

    Parameters
    ----------
    volume
        The image series the contours were drawn on.
    max_plane_offset
        Largest distance, in slices, between a contour and the plane it is
        assigned to when it is placed by position.
    """

    def __init__(self, volume: ImageVolume, *, max_plane_offset: float = 0.5) -> None:
        self.num_slices = volume.shape[0]
        self.max_plane_offset = max_plane_offset
        self._sop_to_slice = {
            str(h.get("SOPInstanceUID", "")): k
            for k, h in enumerate(volume.headers)
            if volume.frame_numbers is None
        }
        self._inverse = np.linalg.inv(volume.affine[:3, :3])
        self._origin = volume.affine[:3, 3]

    def locate(self, contour: Contour) -> tuple[int | None, np.ndarray]:
        """``(slice index or None, (N, 3) fractional (column, row, slice) indices)``."""
        crs = (contour.points_lps_mm - self._origin) @ self._inverse.T
        k = self._sop_to_slice.get(contour.referenced_sop_uid or "")
        if k is None:
            slice_pos = float(np.mean(crs[:, 2]))
            k = int(round(slice_pos))
            if not (0 <= k < self.num_slices) or abs(slice_pos - k) > self.max_plane_offset:
                return None, crs
        return k, crs


def scanline_fill(
    rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels whose centre lies inside a polygon (even-odd), by scanlines.

    The same pixels as ``skimage.draw.polygon`` wherever no pixel centre lies
    exactly on the outline (e.g. contourd's own contours, whose vertices sit
    on pixel corners); on the outline, centres on a non-horizontal edge or
    on a horizontal edge count as inside, an isolated vertex does not. Cost
    O(rows x edges) instead of O(bounding-box pixels x edges): large, finely
    traced outlines (a body contour) fill hundreds of times faster.

    Parameters
    ----------
    rows, cols
        Fractional vertex indices (pixel centre ``(r, c)`` at ``(r, c)``).
    shape
        ``(rows, columns)`` of the plane; pixels outside it are dropped.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        Row and column indices of the pixels inside.
    """
    ny, nx = shape
    r0 = np.asarray(rows, dtype=np.float64)
    c0 = np.asarray(cols, dtype=np.float64)
    empty = (np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp))
    if r0.size < 3:
        return empty
    r1, c1 = np.roll(r0, -1), np.roll(c0, -1)
    first = max(int(np.ceil(r0.min())), 0)
    last = min(int(np.floor(r0.max())), ny - 1)
    if first > last:
        return empty
    ys = np.arange(first, last + 1, dtype=np.float64)[:, None]
    lo, hi = np.minimum(r0, r1), np.maximum(r0, r1)
    sloped = r0 != r1
    crossing = sloped & (lo <= ys) & (ys < hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(crossing, c0 + (ys - r0) * (c1 - c0) / np.where(sloped, r1 - r0, 1.0), np.inf)
    x.sort(axis=1)
    runs = np.zeros((len(ys), nx + 1), dtype=np.int32)
    width = int(crossing.sum(axis=1).max(initial=0)) // 2 * 2
    if width:
        left = np.clip(np.ceil(x[:, 0:width:2]), 0, nx)
        right = np.clip(np.floor(x[:, 1:width:2]) + 1, 0, nx)
        valid = np.isfinite(x[:, 1:width:2]) & (right > left)
        row_idx = np.broadcast_to(np.arange(len(ys))[:, None], left.shape)
        np.add.at(runs, (row_idx[valid], left[valid].astype(np.intp)), 1)
        np.add.at(runs, (row_idx[valid], right[valid].astype(np.intp)), -1)
    inside = np.cumsum(runs[:, :nx], axis=1) > 0
    flat = ~sloped & (r0 == np.round(r0)) & (r0 >= first) & (r0 <= last)
    for k in np.flatnonzero(flat):  # horizontal edges on a row of centres
        a = max(int(np.ceil(min(c0[k], c1[k]))), 0)
        b = min(int(np.floor(max(c0[k], c1[k]))), nx - 1)
        if a <= b:
            inside[int(r0[k]) - first, a : b + 1] = True
    rr, cc = np.nonzero(inside)
    return rr + first, cc


def rasterise_roi(
    roi: RoiContours,
    volume: ImageVolume,
    *,
    max_plane_offset: float = 0.5,
    notes: list[str] | None = None,
    scanline: bool = False,
) -> np.ndarray:
    """Boolean mask ``[slice, row, column]`` of one ROI on ``volume``'s grid.

    Parameters
    ----------
    roi
        Contours in LPS mm.
    volume
        The image series the contours were drawn on (geometry and headers).
    max_plane_offset
        Largest distance, in slices, between a contour and the plane it is
        assigned to when it is placed by position.
    notes
        Receives one line per skipped contour.
    scanline
        Fill with :func:`scanline_fill` instead of ``skimage.draw.polygon``
        (same pixels unless a pixel centre lies exactly on the outline; much
        faster for long outlines).
    """
    nz, ny, nx = volume.shape
    mask = np.zeros((nz, ny, nx), dtype=bool)
    locator = PlaneLocator(volume, max_plane_offset=max_plane_offset)
    for i, contour in enumerate(roi.contours):
        if contour.geometric_type not in CLOSED_TYPES:
            continue
        k, crs = locator.locate(contour)
        if k is None:
            if notes is not None:
                notes.append(
                    f"ROI {roi.name!r} contour {i + 1} lies at slice position "
                    f"{float(np.mean(crs[:, 2])):.2f}, not on one of the {nz} image planes; "
                    "skipped"
                )
            continue
        fill = scanline_fill if scanline else fill_polygon
        rr, cc = fill(crs[:, 1], crs[:, 0], shape=(ny, nx))
        plane = np.zeros((ny, nx), dtype=bool)
        plane[rr, cc] = True
        mask[k] ^= plane
    return mask


def rasterise(
    structure_set: StructureSet,
    volume: ImageVolume,
    names: list[str] | None = None,
    *,
    notes: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Masks of the named ROIs (all ROIs when ``names`` is None), keyed by ROI name."""
    out = {}
    for roi in structure_set.rois:
        if names is None or roi.name in names:
            out[roi.name] = rasterise_roi(roi, volume, notes=notes)
    return out
