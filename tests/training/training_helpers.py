"""Helpers for the training tests: small DICOM CT + RTSTRUCT exports built in the test."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from inference.phantom import write_ct_series
from inference.roi_mask import AlgorithmInfo, RoiMask
from inference.rtstruct_writer import write_rtstruct

if TYPE_CHECKING:
    from training.trainer import TrainingConfig

#: Exported ROI name -> the TG-263 name it should map to (what a TPS might call them).
CLINIC_NAMES = {"Parotid L": "Parotid_L", "RT_Parotid": "Parotid_R", "Cord": "SpinalCord"}


def synthetic_case_volume(
    seed: int, shape_zyx: tuple[int, int, int] = (16, 48, 48)
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """HU volume with two 'parotids' and a 'cord' that differ in HU from soft tissue.

    The organs move a little with ``seed`` so cases differ. Arrays are
    ``[slice, row, column]``; column index runs to patient left for HFS.
    """
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape_zyx
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    cy, cx = ny / 2 + rng.integers(-2, 3), nx / 2 + rng.integers(-2, 3)
    body = ((y - cy) / (0.42 * ny)) ** 2 + ((x - cx) / (0.45 * nx)) ** 2 <= 1
    hu = np.where(body, 40.0, -1000.0) + rng.normal(0, 8, shape_zyx)
    zc = nz / 2
    left = ((x - (cx + 0.25 * nx)) / 5) ** 2 + ((y - cy) / 4) ** 2 + ((z - zc) / 4) ** 2 <= 1
    right = ((x - (cx - 0.25 * nx)) / 5) ** 2 + ((y - cy) / 4) ** 2 + ((z - zc) / 4) ** 2 <= 1
    cord = ((x - cx) / 3) ** 2 + ((y - (cy + 0.2 * ny)) / 3) ** 2 <= 1
    hu[left | right] = -90.0 + rng.normal(0, 8, int((left | right).sum()))  # fatty glands
    hu[cord] = 300.0 + rng.normal(0, 8, int(cord.sum()))
    masks = {"Parotid L": left, "RT_Parotid": right, "Cord": cord & body}
    return hu.astype(np.int16), masks


def write_dicom_case(
    case_dir: Path,
    seed: int,
    *,
    spacing_mm: tuple[float, float, float] = (4.0, 4.0, 5.0),
    shape_zyx: tuple[int, int, int] = (16, 48, 48),
    drop: tuple[str, ...] = (),
    empty: tuple[str, ...] = (),
) -> dict[str, np.ndarray]:
    """Write a CT series and an RTSTRUCT (our writer) for one case; return the masks.

    ``drop`` leaves ROIs out of the RTSTRUCT (not contoured); ``empty``
    writes them without contours.
    """
    hu, masks = synthetic_case_volume(seed, shape_zyx)
    affine = np.diag([*spacing_mm, 1.0])
    affine[:3, 3] = [-100.0 + seed, -90.0, 30.0]
    series = write_ct_series(case_dir / "CT", hu, affine, masks=masks, patient_id=f"TEST{seed}")
    rois = []
    for label, (name, mask) in enumerate(series.masks.items(), start=1):
        if name in drop:
            continue
        mask = np.zeros_like(mask) if name in empty else mask
        rois.append(RoiMask(name, mask, (255, 0, 0), "ORGAN", label))
    ds = write_rtstruct(
        series.headers,
        rois,
        AlgorithmInfo("clinic-tps", "1.0.0", None, "test"),
        structure_set_label="CLINICAL",
    )
    (case_dir / "RS").mkdir(parents=True, exist_ok=True)
    ds.save_as(case_dir / "RS" / "rtstruct.dcm", enforce_file_format=True)
    return {n: m for n, m in series.masks.items() if n not in drop and n not in empty}


def tiny_training_config(
    tmp_path: Path, roi_names: list[str], **overrides: object
) -> TrainingConfig:
    """A training config small enough for CPU tests: 16^3 patches, 4 channels, 3 levels.

    Each ROI is found under its own name; train and validation cases both in
    ``tmp_path``. ``overrides`` replace any field.
    """
    from training.trainer import TrainingConfig

    values: dict[str, object] = dict(
        roi_names=roi_names,
        roi_sources=[[n] for n in roi_names],
        train_dir=tmp_path,
        validation_dir=tmp_path,
        patch_size=(16, 16, 16),
        base_channels=4,
        levels=3,
        threads=1,
    )
    values.update(overrides)
    return TrainingConfig.model_validate(values)
