"""Helpers for the inference tests: a small CT phantom written as DICOM files.

The phantom is defined in patient coordinates (LPS mm) so that the same
anatomy can be scanned in any patient position: an elliptic body cylinder
(40 HU) with an air cavity on the patient's LEFT (+x) and a dense "bone" on
the RIGHT, lying on a couch slab that is separated from it in the image (the
couch is always at the bottom of the image, whatever the position).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

#: ImageOrientationPatient per patient position (row direction, column direction).
ORIENTATIONS = {
    "HFS": (1, 0, 0, 0, 1, 0),
    "FFS": (-1, 0, 0, 0, 1, 0),
    "HFP": (-1, 0, 0, 0, -1, 0),
    "FFP": (1, 0, 0, 0, -1, 0),
}


def shared_data() -> Path:
    """../shared/data, or skip with the reason when it is missing (also in CI:
    a clone outside the workspace has no ../shared)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs ../shared/data (not found at {SHARED_DATA})")
    return SHARED_DATA


def body_truth_lps(points: np.ndarray) -> np.ndarray:
    """True where LPS points ``(N, 3)`` mm lie inside the phantom's body."""
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    return ((x / 90.0) ** 2 + ((y - 5.0) / 60.0) ** 2 <= 1.0) & (np.abs(z) <= 200)


def hu_lps(points: np.ndarray) -> np.ndarray:
    """Phantom HU at LPS points (without the couch)."""
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    hu = np.full(points.shape[0], -1000.0)
    body = body_truth_lps(points)
    hu[body] = 40.0
    left_cavity = ((x - 45) / 25) ** 2 + (y / 25) ** 2 + (z / 30) ** 2 <= 1
    hu[body & left_cavity] = -850.0
    right_bone = ((x + 45) / 15) ** 2 + (y / 15) ** 2 + (z / 40) ** 2 <= 1
    hu[body & right_bone] = 900.0
    return hu


@dataclass
class WrittenSeries:
    """A phantom series on disk and its geometry."""

    paths: list[Path]
    affine: np.ndarray  # (col,row,slice,1)->LPS for the files sorted along the normal
    shape_zyx: tuple[int, int, int]
    series_uid: str


def write_ct_series(
    out_dir: Path,
    *,
    patient_position: str = "HFS",
    shape_zyx: tuple[int, int, int] = (16, 64, 64),
    pixel_mm: float = 4.0,
    slice_mm: float = 5.0,
    reverse_file_order: bool = False,
    tilt_deg: float = 0.0,
    hu_fn: Callable[[np.ndarray], np.ndarray] = hu_lps,
    couch: bool = True,
    extra: Callable[[FileDataset, int], None] | None = None,
    positions_mm: Sequence[float] | None = None,
) -> WrittenSeries:
    """Write the phantom as single-frame CT files (int16, intercept -1024)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    iop = np.array(ORIENTATIONS[patient_position], dtype=float)
    row_dir, col_dir = iop[:3], iop[3:]
    if tilt_deg:
        t = np.radians(tilt_deg)
        col_dir = col_dir * np.cos(t) + np.array([0, 0, -np.sign(col_dir[1]) * np.sin(t)])
    nz, ny, nx = shape_zyx
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    zs = (
        np.asarray(positions_mm, dtype=float)
        if positions_mm is not None
        else (np.arange(nz) - (nz - 1) / 2) * slice_mm
    )
    jj, ii = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    paths = []
    for k, z in enumerate(zs):
        # centre the image on the z axis whatever the orientation
        ipp = -(row_dir * (nx - 1) / 2 * pixel_mm) - (col_dir * (ny - 1) / 2 * pixel_mm)
        ipp = ipp + np.array([0.0, 0.0, z])
        pts = ipp + ii.reshape(-1, 1) * pixel_mm * row_dir + jj.reshape(-1, 1) * pixel_mm * col_dir
        hu = hu_fn(pts).reshape(ny, nx)
        if couch:
            hu[ny - 7 : ny - 4, :] = 300.0  # couch slab at the bottom of every image
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(out_dir / f"{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "CT"
        ds.PatientName = "PHANTOM^GEOMETRY"
        ds.PatientID = "PHANTOM"
        ds.PatientPosition = patient_position
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [pixel_mm, pixel_mm]
        ds.SliceThickness = slice_mm
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = np.round(hu + 1024).astype(np.int16).tobytes()
        if extra is not None:
            extra(ds, k)
        paths.append(out_dir / f"{k:03d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    if reverse_file_order:
        renamed = []
        for p, k in zip(paths, range(len(paths) - 1, -1, -1), strict=True):
            target = out_dir / f"r{k:03d}.dcm"
            p.rename(target)
            renamed.append(target)
        paths = renamed
    normal = np.cross(row_dir, col_dir)
    step = np.array([0.0, 0.0, 1.0]) * (slice_mm if normal[2] > 0 else -slice_mm)
    first = -(row_dir * (nx - 1) / 2 * pixel_mm) - (col_dir * (ny - 1) / 2 * pixel_mm)
    first = first + np.array([0.0, 0.0, zs.min() if normal[2] > 0 else zs.max()])
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = (
        row_dir * pixel_mm,
        col_dir * pixel_mm,
        step,
        first,
    )
    return WrittenSeries(paths, affine, (len(zs), ny, nx), series)


def grid_points_lps(affine: np.ndarray, shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """LPS of every voxel centre, ``(z*y*x, 3)`` in array order."""
    nz, ny, nx = shape_zyx
    kk, jj, ii = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    idx = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1).astype(float)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean arrays (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


@dataclass
class LocalModel:
    """An unregistered model package with ApprovedModel's reading interface.

    Used until tests go through ``model_store.registry``: ``card``,
    ``weights_sha256``, ``effective_rois()`` and ``load_state_dict()``.
    """

    card: Any
    weights_path: Path | None = None
    weights_sha256: str = "none"

    def effective_rois(self) -> list[Any]:
        return list(self.card.rois)

    def load_state_dict(self) -> dict[str, Any]:
        from safetensors.torch import load_file

        assert self.weights_path is not None
        return load_file(str(self.weights_path))


def load_body_model() -> LocalModel:
    """The built-in classical body model's card, as an unregistered package."""
    from model_store.card import parse_card

    path = Path(__file__).resolve().parents[2] / "model_store" / "builtin" / "body" / "model.yaml"
    return LocalModel(card=parse_card(path.read_text(encoding="utf-8"), str(path)))


def read_headers(paths: Sequence[Path]) -> list[pydicom.Dataset]:
    """Headers of ``paths`` without pixel data."""
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
