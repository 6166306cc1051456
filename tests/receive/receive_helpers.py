"""Helpers for the receive tests: synthetic series, DCMTK peers, waiting.

Data we make is generated here, small (64 x 64 pixels) unless a test needs
more; DCMTK tools skip the test when missing (fail under ``CI=true``).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from peer_tools import SHARED_DATA as SHARED_DATA
from peer_tools import free_port as free_port
from peer_tools import require_shared as require_shared
from peer_tools import require_tool as require_tool
from peer_tools import wait_for as wait_for
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

REPO_ROOT = Path(__file__).resolve().parents[2]


def make_ct_series(
    folder: Path,
    num_slices: int,
    *,
    rows: int = 64,
    columns: int = 64,
    study_uid: str | None = None,
    series_uid: str | None = None,
    modality: str = "CT",
    seed: int = 0,
    extra: dict[str, object] | None = None,
) -> list[Path]:
    """Write a synthetic axial CT series (int16 noise, 1 mm pixels, 2.5 mm slices).

    Returns the file paths in slice order. ``extra`` sets more attributes by
    keyword on every slice (e.g. ``{"SeriesInstanceUID": "bad"}``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_of_reference_uid = generate_uid()
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(num_slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop_uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PatientName = "SYNTHETIC^PHANTOM"
        ds.PatientID = "SYN0001"
        ds.Modality = modality
        ds.BodyPartExamined = "HEADNECK"
        ds.SeriesDescription = "synthetic test series"
        ds.SeriesNumber = 1
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [-32.0, -32.0, index * 2.5]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 2.5
        ds.Rows = rows
        ds.Columns = columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        for keyword, value in (extra or {}).items():
            setattr(ds, keyword, value)
        pixels = rng.integers(-1000, 2000, size=(rows, columns), dtype=np.int16)
        ds.PixelData = pixels.tobytes()
        path = folder / f"slice_{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def dcmtk_env() -> dict[str, str]:
    """Environment for DCMTK tools: TCP_NODELAY=1 (else 30x slower)."""
    return dict(os.environ, TCP_NODELAY="1")


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    calling_ae: str = "SCANNER",
    called_ae: str = "CONTOURD",
    extra_args: Sequence[str] = (),
    timeout_s: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Push ``files`` in one association with DCMTK storescu (verbose)."""
    binary = require_tool("storescu", "dcmtk")
    cmd = [
        binary,
        "-v",
        "-aet",
        calling_ae,
        "-aec",
        called_ae,
        *extra_args,
        "127.0.0.1",
        str(port),
        *[str(p) for p in files],
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout_s, env=dcmtk_env(), check=False
    )


def echoscu(
    port: int,
    *,
    calling_ae: str = "SCANNER",
    called_ae: str = "CONTOURD",
    extra_args: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """One C-ECHO with DCMTK echoscu."""
    binary = require_tool("echoscu", "dcmtk")
    cmd = [binary, "-v", "-aet", calling_ae, "-aec", called_ae, *extra_args, "127.0.0.1", str(port)]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=30, env=dcmtk_env(), check=False
    )


def pixel_bytes(path: Path) -> bytes:
    """The raw (undecoded) Pixel Data value of a file."""
    return bytes(dcmread(path).PixelData)


def sop_uid_of(path: Path) -> str:
    """SOP Instance UID of a file."""
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
