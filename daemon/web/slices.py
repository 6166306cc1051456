"""The job page's images: the received series with the job's RTSTRUCT contours on it.

The series is read from the spool (:func:`inference.volume.load_series`), the
job's RTSTRUCT read back and rasterised on that grid
(:mod:`training.rtstruct_reader`), and each slice drawn as a PNG with
:func:`inference.preview.slice_png`, the same drawing as the worker's preview.
The few most recently viewed jobs stay in memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from contourd.errors import JobError
from daemon.job_queue import Job
from inference.preview import slice_png
from inference.roi_mask import RoiMask
from inference.volume import ImageVolume, load_series
from training.rtstruct_reader import RTSTRUCT_SOP_CLASS, rasterise_roi, read_rtstruct

DEFAULT_COLOR_RGB = (255, 255, 0)


@dataclass(frozen=True)
class JobImages:
    """A job's series and contours, ready to draw."""

    volume: ImageVolume
    rois: list[RoiMask]
    notes: list[str]

    @property
    def num_slices(self) -> int:
        """Slices of the series (the page's scroll range)."""
        return int(self.volume.shape[0])

    def busiest_slice(self) -> int:
        """The slice with most contoured pixels (where the page opens); the middle one when none."""
        if not self.rois:
            return self.num_slices // 2
        counts = sum(r.mask.reshape(r.mask.shape[0], -1).sum(axis=1) for r in self.rois)
        return int(np.argmax(counts))

    def png(self, k: int) -> bytes:
        """Slice ``k`` (0-based) with the contours, as PNG."""
        if not 0 <= k < self.num_slices:
            raise JobError(f"slice {k} is outside 0..{self.num_slices - 1}")
        return slice_png(self.volume.array, self.rois, k)


def rtstruct_of(job: Job) -> Path | None:
    """The job's RTSTRUCT result file, or ``None`` when it wrote none."""
    for path in job.result_files:
        if not Path(path).is_file():
            continue
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        if str(header.get("SOPClassUID", "")) == RTSTRUCT_SOP_CLASS:
            return Path(path)
    return None


def load_job_images(job: Job) -> JobImages:
    """Read the job's series and rasterise its RTSTRUCT (no RTSTRUCT: the images alone).

    Raises
    ------
    JobError
        When the images were deleted by retention.
    """
    if job.images_deleted_at is not None:
        raise JobError(
            f"job {job.id}'s images were deleted by retention; its result files are still "
            f"listed below and can be resent"
        )
    volume = load_series(job.instance_paths)
    notes: list[str] = list(volume.notes)
    rois: list[RoiMask] = []
    path = rtstruct_of(job)
    if path is not None:
        for number, roi in enumerate(read_rtstruct(path).rois, start=1):
            mask = rasterise_roi(roi, volume, notes=notes)
            rois.append(
                RoiMask(
                    name=roi.name,
                    mask=mask,
                    color_rgb=roi.color_rgb or DEFAULT_COLOR_RGB,
                    interpreted_type=roi.interpreted_type or "ORGAN",
                    label=roi.number or number,
                )
            )
    return JobImages(volume, rois, notes)


class JobImageCache:
    """The last ``size`` jobs' images, keyed by job id and result file."""

    def __init__(self, size: int = 3) -> None:
        self.size = size
        self._items: OrderedDict[tuple[int, str], JobImages] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, job: Job) -> JobImages:
        """The job's images, loaded on first use."""
        key = (job.id, "|".join(str(p) for p in job.result_files))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        images = load_job_images(job)
        with self._lock:
            self._items[key] = images
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return images
