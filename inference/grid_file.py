"""The image grid of a series, kept as a small JSON file beside a job's results.

A reviewed structure set can come back days after the images were deleted by
retention; comparing it with what contourd sent needs only the grid the
contours were drawn on: the 4x4 affine, the array shape and the SOP Instance
UID of each slice. :func:`write_grid` saves exactly that (no pixel data, no
patient identifiers) and :func:`read_grid` returns an
:class:`inference.volume.ImageVolume` whose array is a zero-strided view of
zeros (no memory) with minimal headers, which is all that
``training.rtstruct_reader.rasterise_roi`` needs.

Conventions are :class:`~inference.volume.ImageVolume`'s: shape
``[slice, row, column]``; the affine maps ``(column, row, slice, 1)`` to LPS mm.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from contourd.errors import SeriesGeometryError
from inference.volume import ImageVolume

GRID_FILENAME = "grid.json"
_FORMAT = "contourd-grid-1"


def write_grid(volume: ImageVolume, path: Path) -> Path:
    """Save the grid of ``volume`` (affine, shape, per-slice SOP Instance UIDs) atomically."""
    first = volume.headers[0] if volume.headers else Dataset()
    doc = {
        "format": _FORMAT,
        "series_uid": volume.series_uid,
        "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")),
        "modality": volume.modality,
        "shape_zyx": list(volume.shape),
        "affine": np.asarray(volume.affine, dtype=np.float64).tolist(),
        "sop_instance_uids": [str(h.get("SOPInstanceUID", "")) for h in volume.headers],
        "frame_numbers": volume.frame_numbers,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_grid(path: Path) -> ImageVolume:
    """The grid saved by :func:`write_grid` as an all-zero :class:`ImageVolume`.

    Raises
    ------
    SeriesGeometryError
        When the file is missing, unreadable or not a grid file.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != _FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, expected {_FORMAT!r}")
        shape = tuple(int(n) for n in doc["shape_zyx"])
        affine = np.asarray(doc["affine"], dtype=np.float64).reshape(4, 4)
        uids = [str(u) for u in doc["sop_instance_uids"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SeriesGeometryError(
            f"image grid file {path} cannot be read ({err}); it is written with each job's "
            "results, so the job predates it or its results folder was purged"
        ) from err
    if len(shape) != 3 or len(uids) != shape[0]:
        raise SeriesGeometryError(
            f"image grid file {path} has shape {shape} and {len(uids)} slice UIDs; "
            "expected three dimensions and one UID per slice"
        )
    headers = []
    for uid in uids:
        header = Dataset()
        header.SOPInstanceUID = uid
        header.FrameOfReferenceUID = doc.get("frame_of_reference_uid", "")
        headers.append(header)
    frames = doc.get("frame_numbers")
    return ImageVolume(
        array=np.broadcast_to(np.float32(0.0), shape),
        affine=affine,
        headers=headers,
        series_uid=str(doc.get("series_uid", "")),
        modality=str(doc.get("modality", "")),
        frame_numbers=[int(f) for f in frames] if frames else None,
    )
