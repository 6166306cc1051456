"""Load a run's training and validation cases from a NIfTI or DICOM dataset.

The format is ``config.dataset_format`` or, with ``"auto"``, detected: a
folder with ``cases.json`` or ``*/ct.nii.gz`` is NIfTI (OpenKBP layout,
:mod:`training.openkbp_dataset`), a folder of DICOM case folders is a planning
system export (:mod:`training.dicom_dataset`). When ``validation_dir`` is
the same folder as ``train_dir``, the cases are split: a seeded shuffle puts
``validation_fraction`` of them (at least one) in the validation set.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from contourd.errors import TrainingError
from training.config import TrainingConfig
from training.dicom_dataset import is_dicom_dataset, load_dicom_dataset
from training.openkbp_dataset import TrainingCase, list_cases, load_dataset
from training.roi_mapping import RoiNameMapper

log = logging.getLogger(__name__)


def dataset_format(dataset_dir: Path, requested: str = "auto") -> str:
    """``"nifti"`` or ``"dicom"`` for a dataset folder.

    Raises
    ------
    TrainingError
        When the folder is missing or holds neither format.
    """
    if requested in ("nifti", "dicom"):
        return requested
    if not dataset_dir.is_dir():
        raise TrainingError(f"dataset folder {dataset_dir} does not exist")
    if (dataset_dir / "cases.json").is_file() or any(dataset_dir.glob("*/ct.nii.gz")):
        return "nifti"
    if is_dicom_dataset(dataset_dir):
        return "dicom"
    raise TrainingError(
        f"{dataset_dir} is neither a NIfTI dataset (cases.json, <case>/ct.nii.gz) nor a DICOM "
        "export (one folder per case with CT + RTSTRUCT); see docs/training.md"
    )


def nifti_roi_sources(
    dataset_dir: Path, roi_names: Sequence[str], mapping: dict[str, list[str]] | None = None
) -> list[list[str]]:
    """For each ROI name, the mask file stems of a NIfTI dataset that hold it.

    Stems are found in the first cases' folders and matched with
    :class:`training.roi_mapping.RoiNameMapper` (``LeftParotid`` -> ``Parotid_L``).
    """
    mapper = RoiNameMapper(roi_names, mapping)
    stems: set[str] = set()
    for case_id in list_cases(dataset_dir)[:50]:
        stems |= {p.name[: -len(".nii.gz")] for p in (dataset_dir / case_id).glob("*.nii.gz")}
    stems.discard("ct")
    sources = [[n for n in sorted(stems) if mapper.target_for(n) == roi] for roi in roi_names]
    missing = [roi for roi, src in zip(roi_names, sources, strict=True) if not src]
    if missing:
        raise TrainingError(
            f"no mask file in {dataset_dir} maps to {', '.join(missing)} (files: "
            f"{', '.join(sorted(stems)) or 'none'}); rename the ROIs or add roi_mapping"
        )
    return sources


def split_cases(
    cases: list[TrainingCase], fraction: float, seed: int
) -> tuple[list[TrainingCase], list[TrainingCase]]:
    """Seeded split into (train, validation); at least one case in each when possible."""
    if len(cases) < 2:
        raise TrainingError(
            f"{len(cases)} usable case(s); training needs at least 2 (one for validation)"
        )
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = min(max(1, round(fraction * len(cases))), len(cases) - 1)
    val_idx = set(int(i) for i in order[:n_val])
    train = [c for i, c in enumerate(cases) if i not in val_idx]
    val = [c for i, c in enumerate(cases) if i in val_idx]
    return train, val


def _load(
    dataset_dir: Path, config: TrainingConfig, fmt: str, cache: Path | None, limit: int | None
) -> list[TrainingCase]:
    if fmt == "dicom":
        return load_dicom_dataset(
            dataset_dir,
            config.roi_names,
            config.spacing_mm,
            mapping=config.roi_mapping,
            limit=limit,
        )
    return load_dataset(dataset_dir, config.roi_sources, config.spacing_mm, cache, limit)


def load_training_data(
    config: TrainingConfig, *, cache_dir: Path | None = None, limit: int | None = None
) -> tuple[list[TrainingCase], list[TrainingCase]]:
    """(train, validation) cases of a run at the model's spacing.

    Parameters
    ----------
    config
        The run's settings (``train_dir``, ``validation_dir``, format, ROIs).
    cache_dir
        Folder for npz caches of NIfTI datasets (none for DICOM).
    limit
        Use at most this many training cases (for quick runs).
    """
    fmt = dataset_format(config.train_dir, config.dataset_format)
    same = config.validation_dir.resolve() == config.train_dir.resolve()
    cache = cache_dir if fmt == "nifti" and limit is None else None
    if same:
        cases = _load(config.train_dir, config, fmt, cache and cache / "all.npz", None)
        train, val = split_cases(cases, config.validation_fraction, config.seed)
        train = train[:limit] if limit else train
    else:
        train = _load(config.train_dir, config, fmt, cache and cache / "train.npz", limit)
        val_fmt = dataset_format(config.validation_dir, config.dataset_format)
        val = _load(
            config.validation_dir, config, val_fmt, cache and cache / "validation.npz", None
        )
    log.info("%s dataset: %d training and %d validation cases", fmt, len(train), len(val))
    return train, val[: config.validation_cases]
