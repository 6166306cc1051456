"""Synthetic CT series with known masks, for tests, the demo and benchmarks.

``make_phantom_series`` draws a body ellipse on a couch with a few "organs"
(one with an internal cavity so some slices have a hole, a ring, two islands
under one ROI, a single voxel, a one-voxel-thin diagonal wire) in patient
coordinates, for any of the patient positions HFS, FFS, HFP, FFP, and writes
a realistic single-frame CT series. ``write_ct_series`` writes a CT series
from any volume + affine (e.g. an OpenKBP NIfTI case read by SimpleITK).

Conventions: volumes and masks are indexed ``[slice, row, column]``; the
4x4 affine maps ``(column, row, slice, 1)`` to DICOM LPS mm. Everything
returned is in the order sorted by increasing position along the slice
normal ``IOP[0:3] x IOP[3:6]`` (the order the writers expect).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from contourd.errors import SeriesGeometryError
from inference.roi_mask import RoiMask

#: ImageOrientationPatient (row direction X, column direction Y) per patient position.
ORIENTATION_BY_POSITION: dict[
    str, tuple[tuple[float, float, float], tuple[float, float, float]]
] = {
    "HFS": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "FFS": ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "HFP": ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "FFP": ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
}


@dataclass(frozen=True)
class PhantomSeries:
    """A CT series on disk with its ground truth.

    Attributes
    ----------
    directory : Path
        Folder holding only this series.
    paths : list[Path]
        Files in order of increasing position along the slice normal.
    headers : list[pydicom.Dataset]
        The datasets written (with pixel data), same order as ``paths``.
    volume_hu : numpy.ndarray
        int16 HU ``[slice, row, column]``, same slice order.
    affine : numpy.ndarray
        4x4, ``(column, row, slice, 1)`` -> LPS mm, for that order.
    masks : dict[str, numpy.ndarray]
        Ground-truth boolean masks ``[slice, row, column]``, same order.
    rois : list[RoiMask]
        The masks as writer input (names, colours, interpreted types, labels).
    """

    directory: Path
    paths: list[Path]
    headers: list[Dataset]
    volume_hu: np.ndarray
    affine: np.ndarray
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    rois: list[RoiMask] = field(default_factory=list)


def affine_from_sitk(image: Any) -> np.ndarray:
    """4x4 affine ``(column, row, slice, 1)`` -> LPS mm of a SimpleITK image.

    SimpleITK's physical space is LPS, its index order is (x=column, y=row, z=slice).
    """
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(np.array(image.GetSpacing(), dtype=np.float64))
    affine[:3, 3] = np.array(image.GetOrigin(), dtype=np.float64)
    return affine


def _ds(values: np.ndarray | list[float]) -> list[str]:
    return [format_number_as_ds(float(v)) for v in values]


def write_ct_series(
    out_dir: Path,
    volume_hu: np.ndarray,
    affine: np.ndarray,
    *,
    masks: dict[str, np.ndarray] | None = None,
    patient_position: str = "HFS",
    reverse_file_order: bool = False,
    patient_name: str = "Phantom^Contourd",
    patient_id: str = "CONTOURD-PHANTOM",
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_description: str = "contourd phantom CT",
) -> PhantomSeries:
    """Write a volume as a single-frame CT series (one file per slice).

    Parameters
    ----------
    out_dir : Path
        Folder to create and fill (``CT0001.dcm``, ...).
    volume_hu : numpy.ndarray
        HU ``[slice, row, column]`` in any slice order.
    affine : numpy.ndarray
        4x4 ``(column, row, slice, 1)`` -> LPS mm of ``volume_hu``. The slice
        axis must be parallel to the row x column normal (no gantry tilt).
    masks : dict or None
        Masks on the same grid; returned re-ordered like the series.
    patient_position : str
        Patient Position written in the headers (HFS, FFS, HFP, FFP...).
    reverse_file_order : bool
        Number files and InstanceNumber against the slice normal, so readers
        that trust file names or instance numbers get it wrong.

    Returns
    -------
    PhantomSeries
        Everything in order of increasing position along the slice normal.
    """
    volume = np.asarray(volume_hu)
    if volume.ndim != 3:
        raise SeriesGeometryError(f"volume shape {volume.shape} is not [slice, row, column]")
    col_vec, row_vec, slice_vec = affine[:3, 0], affine[:3, 1], affine[:3, 2]
    dc, dr, dz = (float(np.linalg.norm(v)) for v in (col_vec, row_vec, slice_vec))
    x_dir, y_dir = col_vec / dc, row_vec / dr
    normal = np.cross(x_dir, y_dir)
    if abs(abs(float(slice_vec @ normal)) / dz - 1.0) > 1e-6:
        raise SeriesGeometryError(
            f"slice axis {slice_vec.tolist()} is not along the normal {normal.tolist()}; "
            "tilted stacks cannot be written as a plain CT series"
        )
    origin = affine[:3, 3].astype(np.float64)
    masks = dict(masks or {})
    if float(slice_vec @ normal) < 0:  # reorder along the normal
        origin = origin + (volume.shape[0] - 1) * slice_vec
        slice_vec = -slice_vec
        volume = volume[::-1]
        masks = {k: v[::-1] for k, v in masks.items()}
    sorted_affine = np.eye(4)
    sorted_affine[:3, 0], sorted_affine[:3, 1], sorted_affine[:3, 2] = col_vec, row_vec, slice_vec
    sorted_affine[:3, 3] = origin

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = frame_of_reference_uid or generate_uid()
    now = dt.datetime.now()
    date, tm = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    stored = np.clip(np.rint(volume).astype(np.int32) + 1024, -32768, 32767).astype(np.int16)
    n = volume.shape[0]
    paths: list[Path] = []
    headers: list[Dataset] = []
    for k in range(n):
        number = n - k if reverse_file_order else k + 1
        ipp = origin + k * slice_vec
        sop_uid = generate_uid()
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceCreationDate, ds.InstanceCreationTime = date, tm
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate, ds.SeriesDate, ds.ContentDate = date, date, date
        ds.StudyTime, ds.SeriesTime, ds.ContentTime = tm, tm, tm
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = "contourd phantom"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "contourd phantom"
        ds.SeriesDescription = series_description
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.BodyPartExamined = "ABDOMEN"
        ds.SliceThickness = format_number_as_ds(dz)
        ds.KVP = "120"
        ds.PatientPosition = patient_position
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 2
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = number
        ds.ImagePositionPatient = _ds(ipp)
        ds.ImageOrientationPatient = _ds(np.r_[x_dir, y_dir])
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = format_number_as_ds(float(ipp @ normal))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[2])
        ds.PixelSpacing = _ds([dr, dc])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        path = out_dir / f"CT{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        headers.append(ds)
    return PhantomSeries(
        directory=out_dir,
        paths=paths,
        headers=headers,
        volume_hu=(stored.astype(np.int32) - 1024).astype(np.int16),  # exactly what is on disk
        affine=sorted_affine,
        masks={k: np.ascontiguousarray(v, dtype=bool) for k, v in masks.items()},
    )


#: name -> (colour, interpreted type, label) of the phantom's ROIs.
PHANTOM_ROIS: dict[str, tuple[tuple[int, int, int], str, int]] = {
    "BODY": ((0, 128, 255), "EXTERNAL", 1),
    "Stomach": ((255, 128, 0), "ORGAN", 2),
    "Ring": ((0, 255, 0), "ORGAN", 3),
    "Kidneys": ((255, 0, 255), "ORGAN", 4),
    "Marker": ((255, 255, 0), "MARKER", 5),
    "Wire": ((0, 255, 255), "AVOIDANCE", 6),
}


def make_phantom_series(
    out_dir: Path,
    *,
    patient_position: str = "HFS",
    shape_zyx: tuple[int, int, int] = (40, 128, 128),
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 2.5),
    reverse_file_order: bool = False,
    offset_mm: tuple[float, float, float] = (3.3, -12.7, 50.0),
    seed: int = 0,
) -> PhantomSeries:
    """Write a synthetic CT with known masks.

    Parameters
    ----------
    out_dir : Path
        Folder for the series.
    patient_position : str
        HFS, FFS, HFP or FFP: sets ImageOrientationPatient (and thus where
        anatomy lands on the image grid) and Patient Position.
    shape_zyx : tuple[int, int, int]
        Slices, rows, columns.
    spacing_mm : tuple[float, float, float]
        Column spacing x, row spacing y, slice spacing z in mm.
    reverse_file_order : bool
        See :func:`write_ct_series`.
    offset_mm : tuple[float, float, float]
        LPS position of the grid centre (not 0 so sign errors show).
    seed : int
        Seed of the small noise added to the HU values.

    Returns
    -------
    PhantomSeries
        With masks for BODY (excludes the couch), Stomach (cavity: some slices
        have a hole), Ring, Kidneys (two islands), Marker (one voxel) and Wire
        (one-voxel-thin diagonal line).
    """
    if patient_position not in ORIENTATION_BY_POSITION:
        raise SeriesGeometryError(
            f"patient position {patient_position!r} unknown; use one of "
            f"{sorted(ORIENTATION_BY_POSITION)}"
        )
    nz, nr, nc = shape_zyx
    dx, dy, dz = spacing_mm
    x_dir, y_dir = (np.array(v) for v in ORIENTATION_BY_POSITION[patient_position])
    normal = np.cross(x_dir, y_dir)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = x_dir * dx, y_dir * dy, normal * dz
    centre = np.array(offset_mm, dtype=np.float64)
    affine[:3, 3] = centre - affine[:3, :3] @ (np.array([nc, nr, nz], dtype=np.float64) - 1) / 2

    # LPS coordinates of voxel centres relative to the grid centre (broadcast:
    # no (z, y, x, 3) array, so large grids stay cheap).
    k, r, c = np.ogrid[0:nz, 0:nr, 0:nc]
    shift = affine[:3, 3] - centre
    x, y, z = (affine[i, 0] * c + affine[i, 1] * r + affine[i, 2] * k + shift[i] for i in range(3))
    x, y, z = (np.broadcast_to(v, shape_zyx) for v in (x, y, z))
    ax, ay, az = nc * dx / 2, nr * dy / 2, nz * dz / 2
    small = min(ax, ay)

    body = (x / (0.8 * ax)) ** 2 + ((y + 0.05 * ay) / (0.6 * ay)) ** 2 <= 1
    couch = (y >= 0.62 * ay) & (y <= 0.72 * ay) & (np.abs(x) <= 0.9 * ax)
    outer = ((x + 0.35 * ax) / (0.22 * ax)) ** 2 + (y / (0.25 * ay)) ** 2 + (
        z / (0.6 * az)
    ) ** 2 <= 1
    cavity = ((x + 0.35 * ax) / (0.1 * ax)) ** 2 + (y / (0.1 * ay)) ** 2 + (
        z / (0.3 * az)
    ) ** 2 <= 1
    stomach = outer & ~cavity
    rho = np.hypot(x - 0.35 * ax, y + 0.1 * ay)
    ring = (rho <= 0.18 * small) & (rho >= 0.09 * small) & (np.abs(z) <= 0.4 * az)
    kidneys = (np.hypot(np.abs(x) - 0.3 * ax, y - 0.35 * ay) ** 2 + z**2) <= (0.1 * small) ** 2
    marker = np.zeros(shape_zyx, dtype=bool)
    marker[nz // 2, nr // 2 + 3, nc // 2 - 4] = True
    wire = np.zeros(shape_zyx, dtype=bool)
    length = max(3, min(nr, nc) // 8)
    for t in range(length):  # diagonal: consecutive voxels touch only at corners
        wire[nz // 2 - 2 : nz // 2 + 3, nr // 2 - length + t, nc // 2 + t] = True

    rng = np.random.default_rng(seed)
    hu = np.full(shape_zyx, -1000.0)
    hu[couch] = -300.0
    hu[body] = 0.0
    hu[stomach] = 40.0
    hu[ring] = 200.0
    hu[kidneys] = 30.0
    hu[wire] = 800.0
    hu[marker] = 1500.0
    hu += rng.normal(0.0, 5.0, size=shape_zyx)

    masks = {
        "BODY": body,
        "Stomach": stomach,
        "Ring": ring,
        "Kidneys": kidneys,
        "Marker": marker,
        "Wire": wire,
    }
    series = write_ct_series(
        out_dir,
        hu,
        affine,
        masks=masks,
        patient_position=patient_position,
        reverse_file_order=reverse_file_order,
    )
    rois = [
        RoiMask(
            name=name,
            mask=series.masks[name],
            color_rgb=PHANTOM_ROIS[name][0],
            interpreted_type=PHANTOM_ROIS[name][1],
            label=PHANTOM_ROIS[name][2],
        )
        for name in masks
    ]
    return replace(series, rois=rois)
