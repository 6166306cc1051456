"""Training cases from a folder of NIfTI CTs with per-organ masks (OpenKBP layout).

Layout (the format ``contourd train --dataset`` accepts for NIfTI data)::

    DATASET/
      cases.json              {"pt_1": {"structures": ["Brainstem", ...]}, ...}
      pt_1/ct.nii.gz          CT in HU (any integer or float type)
      pt_1/<ROI>.nii.gz       binary mask per contoured organ, same grid as ct

An organ listed for no case file is *unknown* in that case (not background):
the loss ignores it there (see :mod:`training.losses`).

Every case is reoriented to LPS with identity direction (array ``[z, y, x]``:
+x patient left, +y posterior, +z superior) and resampled to the model's
target spacing; CT linearly, masks by linear interpolation of the binary mask
thresholded at 0.5.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from contourd.errors import BlankImageError, TrainingError

if TYPE_CHECKING:  # SimpleITK is imported where NIfTI is read, so preprocessed
    # caches load on a machine without it (the GPU training bundle).
    import SimpleITK as sitk

log = logging.getLogger(__name__)


BLANK_CT_MAX_HU = -1000.0
"""A CT whose every voxel is at or below this is blank (air or padding only)."""


def is_blank_ct(image_hu: np.ndarray) -> bool:
    """Whether a CT holds no anatomy at all (every voxel <= -1000 HU).

    Such files exist in real exports (30 of OpenKBP's 200 training CTs and 7 of
    its 40 validation CTs as converted here); their contours would teach the
    network to draw organs in air, so datasets and evaluations leave them out.
    """
    return bool(np.max(image_hu) <= BLANK_CT_MAX_HU)


@dataclass
class TrainingCase:
    """One case on the model's grid.

    Attributes
    ----------
    case_id
        Folder name (an anonymous case key, never a patient identifier).
    image_hu
        int16 HU, ``[z, y, x]``, LPS identity direction, target spacing.
    labels
        uint8 label map, same shape; 0 = background or unknown organ.
    known
        bool per class (index 0 = background, always True): whether the organ
        was contoured in this case.
    """

    case_id: str
    image_hu: np.ndarray
    labels: np.ndarray
    known: np.ndarray


def resample_to_spacing(
    image: sitk.Image, spacing_mm: Sequence[float], interpolator: int, default_value: float
) -> sitk.Image:
    """Reorient to LPS identity and resample to ``spacing_mm`` (x, y, z) over the same extent."""
    import SimpleITK as sitk

    image = sitk.DICOMOrient(image, "LPS")
    in_size = np.array(image.GetSize(), dtype=float)
    in_spacing = np.array(image.GetSpacing(), dtype=float)
    out_spacing = np.array(spacing_mm, dtype=float)
    out_size = np.maximum(1, np.round(in_size * in_spacing / out_spacing)).astype(int)
    # Keep the physical centre of the field of view.
    in_centre = np.array(image.GetOrigin()) + (in_size - 1) / 2 * in_spacing
    out_origin = in_centre - (out_size - 1) / 2 * out_spacing
    return sitk.Resample(
        image,
        [int(s) for s in out_size],
        sitk.Transform(),
        interpolator,
        [float(v) for v in out_origin],
        [float(v) for v in out_spacing],
        image.GetDirection(),
        default_value,
        image.GetPixelID(),
    )


def load_case(
    case_dir: Path,
    roi_sources: Sequence[Sequence[str]],
    spacing_mm: Sequence[float],
) -> TrainingCase:
    """Load one case folder.

    Parameters
    ----------
    case_dir
        Folder with ``ct.nii.gz`` and ``<ROI>.nii.gz`` masks.
    roi_sources
        For each label 1..N, the file stems that may hold it (first found wins).
    spacing_mm
        Target spacing (x, y, z) in mm.
    """
    import SimpleITK as sitk

    ct_path = case_dir / "ct.nii.gz"
    if not ct_path.is_file():
        raise TrainingError(f"case {case_dir} has no ct.nii.gz; every case folder needs one")
    ct = sitk.ReadImage(str(ct_path), sitk.sitkFloat32)
    ct_res = resample_to_spacing(ct, spacing_mm, sitk.sitkLinear, -1024.0)
    image = np.clip(np.rint(sitk.GetArrayFromImage(ct_res)), -1024, 3071).astype(np.int16)
    if is_blank_ct(image):
        raise BlankImageError(
            f"case {case_dir.name}: ct.nii.gz is blank (no voxel above {BLANK_CT_MAX_HU} HU); "
            "the case is left out; re-export its CT"
        )
    labels = np.zeros(image.shape, dtype=np.uint8)
    known = np.zeros(len(roi_sources) + 1, dtype=bool)
    known[0] = True
    for label, stems in enumerate(roi_sources, start=1):
        for stem in stems:
            path = case_dir / f"{stem}.nii.gz"
            if path.is_file():
                mask = sitk.ReadImage(str(path), sitk.sitkFloat32)
                res = resample_to_spacing(mask, spacing_mm, sitk.sitkLinear, 0.0)
                labels[sitk.GetArrayFromImage(res) >= 0.5] = label
                known[label] = True
                break
    return TrainingCase(case_dir.name, image, labels, known)


def list_cases(dataset_dir: Path) -> list[str]:
    """Case ids from ``cases.json`` (or every sub-folder with a ct.nii.gz)."""
    cases_json = dataset_dir / "cases.json"
    if cases_json.is_file():
        return sorted(json.loads(cases_json.read_text()), key=_natural_key)
    found = sorted((p.parent.name for p in dataset_dir.glob("*/ct.nii.gz")), key=_natural_key)
    if not found:
        raise TrainingError(
            f"{dataset_dir} has neither cases.json nor */ct.nii.gz; see the dataset "
            "format in training/openkbp_dataset.py"
        )
    return found


def _natural_key(name: str) -> tuple[str, int]:
    head = name.rstrip("0123456789")
    tail = name[len(head) :]
    return head, int(tail) if tail else -1


def load_dataset(
    dataset_dir: Path,
    roi_sources: Sequence[Sequence[str]],
    spacing_mm: Sequence[float],
    cache_file: Path | None = None,
    limit: int | None = None,
) -> list[TrainingCase]:
    """Load every case of a split, using ``cache_file`` (npz) when present."""
    if cache_file is not None and cache_file.is_file():
        with np.load(cache_file) as data:
            ids = [str(x) for x in data["case_ids"]]
            cases = [
                TrainingCase(cid, data[f"img_{cid}"], data[f"lab_{cid}"], data[f"known_{cid}"])
                for cid in ids
                if not is_blank_ct(data[f"img_{cid}"])  # caches written before the check
            ]
        log.info("loaded %d cases from cache %s", len(cases), cache_file)
        return cases[:limit] if limit else cases
    ids = list_cases(dataset_dir)[:limit] if limit else list_cases(dataset_dir)
    cases = []
    for i, cid in enumerate(ids):
        try:
            cases.append(load_case(dataset_dir / cid, roi_sources, spacing_mm))
        except BlankImageError as err:
            log.warning("%s", err)
            continue
        if (i + 1) % 20 == 0:
            log.info("preprocessed %d/%d cases of %s", i + 1, len(ids), dataset_dir)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"case_ids": np.array([c.case_id for c in cases])}
        for c in cases:
            arrays[f"img_{c.case_id}"] = c.image_hu
            arrays[f"lab_{c.case_id}"] = c.labels
            arrays[f"known_{c.case_id}"] = c.known
        np.savez(cache_file, **arrays)  # type: ignore[arg-type]
    return cases
