"""Training cases from what a clinic exports from its planning system.

Layout (what ``contourd train --dataset`` accepts for DICOM data)::

    DATASET/
      case_a/            one folder per case (name it with an anonymous key:
        *.dcm            folder names end up in local reports, never in packages)
        ...              the CT series and its RTSTRUCT, in any sub-folders,
                         any file names; other objects (RTPLAN, RTDOSE...) are ignored

In each case folder the RTSTRUCT is paired with the CT series it references
(RT Referenced Series Sequence, else the Frame of Reference, else the only
CT series there). When a case holds several structure sets for that series
the newest (Structure Set Date/Time) is used. Contours are rasterised onto
the CT grid by :mod:`training.rtstruct_reader` and ROI names are mapped to
the model's ROI names by :mod:`training.roi_mapping` (TG-263 names by default,
plus a clinic's YAML mapping).

An organ that has no ROI in a case, or whose ROI holds no contour, is
*unknown* there (``known[label] = False``): the loss does not treat it as
background. The case is then resampled onto an LPS identity grid at the
model's spacing with :mod:`inference.preprocess` (CT linearly, masks by
linear interpolation thresholded at 0.5), giving the same
:class:`training.openkbp_dataset.TrainingCase` objects as the NIfTI loader.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from contourd.errors import SeriesGeometryError, TrainingError
from inference.preprocess import CT_OUTSIDE_HU, model_grid_for, resample_to_grid
from inference.volume import ImageVolume, load_series
from training.openkbp_dataset import TrainingCase
from training.roi_mapping import RoiNameMapper
from training.rtstruct_reader import StructureSet, rasterise_roi, read_rtstruct

log = logging.getLogger(__name__)


@dataclass
class DicomCaseFiles:
    """The files of one case: the CT series and its structure set."""

    case_id: str
    image_paths: list[Path]
    rtstruct_path: Path
    notes: list[str] = field(default_factory=list)


@dataclass
class SourceCase:
    """A case on its ORIGINAL CT grid (for evaluation on the source grid).

    Attributes
    ----------
    case_id
        Folder name.
    volume
        The CT series (HU, geometry, headers).
    masks
        Target ROI name -> boolean ``[slice, row, column]`` for the organs
        contoured in this case (unknown organs are absent).
    notes
        What was skipped or chosen on the way.
    """

    case_id: str
    volume: ImageVolume
    masks: dict[str, np.ndarray]
    notes: list[str] = field(default_factory=list)


def _read_header(path: Path) -> Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError):
        return None


def is_dicom_dataset(dataset_dir: Path) -> bool:
    """Whether ``dataset_dir`` looks like a DICOM export (no NIfTI ``*/ct.nii.gz``)."""
    if (dataset_dir / "cases.json").is_file() or any(dataset_dir.glob("*/ct.nii.gz")):
        return False
    return any(p.is_file() and _read_header(p) is not None for p in dataset_dir.rglob("*"))


def find_case_files(case_dir: Path) -> DicomCaseFiles:
    """Pair the RTSTRUCT of a case folder with its CT series.

    Raises
    ------
    TrainingError
        When the folder has no RTSTRUCT, no CT series, or the RTSTRUCT
        references none of the series present.
    """
    series: dict[str, list[Path]] = defaultdict(list)
    series_for: dict[str, str] = {}
    structs: list[tuple[str, Path, Dataset]] = []
    for path in sorted(p for p in case_dir.rglob("*") if p.is_file()):
        ds = _read_header(path)
        if ds is None:
            continue
        modality = str(ds.get("Modality", ""))
        if modality == "RTSTRUCT":
            stamp = f"{ds.get('StructureSetDate', '')}{ds.get('StructureSetTime', '')}"
            structs.append((stamp, path, ds))
        elif modality in ("CT", "MR") and "SeriesInstanceUID" in ds:
            uid = str(ds.SeriesInstanceUID)
            series[uid].append(path)
            series_for[uid] = str(ds.get("FrameOfReferenceUID", ""))
    if not structs:
        raise TrainingError(
            f"case folder {case_dir} holds no RTSTRUCT; export the structure set with the CT"
        )
    if not series:
        raise TrainingError(f"case folder {case_dir} holds no CT series; export the CT images too")
    candidates: list[tuple[str, Path, str]] = []
    for stamp, path, ds in structs:
        parsed = read_rtstruct(ds)
        picked = _pick_series(parsed, series, series_for)
        if picked is not None:
            candidates.append((stamp, path, picked))
    if not candidates:
        raise TrainingError(
            f"no RTSTRUCT in {case_dir} references one of its {len(series)} image series; "
            "export the CT series the structures were drawn on"
        )
    candidates.sort()
    stamp, path, uid = candidates[-1]
    notes = []
    if len(candidates) > 1:
        notes.append(f"{len(candidates)} structure sets; used the newest ({path.name})")
    return DicomCaseFiles(case_dir.name, series[uid], path, notes)


def _pick_series(
    parsed: StructureSet, series: Mapping[str, list[Path]], series_for: Mapping[str, str]
) -> str | None:
    for uid in parsed.referenced_series_uids:
        if uid in series:
            return uid
    by_for = [u for u, f in series_for.items() if f and f in parsed.frame_of_reference_uids]
    if len(by_for) == 1:
        return by_for[0]
    if len(series) == 1 and not parsed.referenced_series_uids:
        return next(iter(series))
    return None


def load_source_case(files: DicomCaseFiles, mapper: RoiNameMapper) -> SourceCase:
    """Read the CT and rasterise the mapped ROIs on the CT grid."""
    try:
        volume = load_series(files.image_paths)
    except SeriesGeometryError as err:
        raise TrainingError(f"case {files.case_id}: the CT series cannot be used: {err}") from err
    structure_set = read_rtstruct(files.rtstruct_path)
    notes = list(files.notes)
    masks: dict[str, np.ndarray] = {}
    for roi in structure_set.rois:
        target = mapper.target_for(roi.name)
        if target is None:
            continue
        if target in masks:
            notes.append(f"ROI {roi.name!r} also maps to {target}; kept the first")
            continue
        mask = rasterise_roi(roi, volume, notes=notes)
        if mask.any():
            masks[target] = mask
        else:
            notes.append(f"ROI {roi.name!r} ({target}) has no contour; unknown in this case")
    return SourceCase(files.case_id, volume, masks, notes)


def to_training_case(
    source: SourceCase, roi_names: Sequence[str], spacing_mm: Sequence[float]
) -> TrainingCase:
    """Resample a source case onto the model grid (LPS identity, ``spacing_mm`` [x, y, z])."""
    spacing = (float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2]))
    grid = model_grid_for(source.volume, spacing)
    image = resample_to_grid(source.volume, grid, outside_value=CT_OUTSIDE_HU)
    image_hu = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    labels = np.zeros(image_hu.shape, dtype=np.uint8)
    known = np.zeros(len(roi_names) + 1, dtype=bool)
    known[0] = True
    for label, name in enumerate(roi_names, start=1):
        mask = source.masks.get(name)
        if mask is None:
            continue
        res = resample_to_grid(
            source.volume, grid, outside_value=0.0, array=mask.astype(np.float32)
        )
        labels[res >= 0.5] = label
        known[label] = True
    return TrainingCase(source.case_id, image_hu, labels, known)


def list_case_dirs(dataset_dir: Path) -> list[Path]:
    """Sub-folders of ``dataset_dir`` holding at least one file, sorted by name."""
    if not dataset_dir.is_dir():
        raise TrainingError(f"dataset folder {dataset_dir} does not exist")
    dirs = sorted(
        p for p in dataset_dir.iterdir() if p.is_dir() and any(q.is_file() for q in p.rglob("*"))
    )
    if not dirs:
        raise TrainingError(
            f"{dataset_dir} has no case folders; a DICOM dataset holds one folder per case "
            "with the CT series and its RTSTRUCT"
        )
    return dirs


def load_source_cases(
    dataset_dir: Path,
    roi_names: Sequence[str],
    *,
    mapping: Mapping[str, Sequence[str]] | None = None,
    limit: int | None = None,
) -> list[SourceCase]:
    """Every case of a DICOM dataset on its own CT grid."""
    mapper = RoiNameMapper(roi_names, mapping)
    out = []
    for case_dir in list_case_dirs(dataset_dir)[:limit]:
        source = load_source_case(find_case_files(case_dir), mapper)
        for note in source.notes:
            log.info("case %s: %s", source.case_id, note)
        if not source.masks:
            log.warning(
                "case %s: none of its ROIs maps to %s; skipped (add a mapping file?)",
                source.case_id,
                ", ".join(roi_names),
            )
            continue
        out.append(source)
    return out


def load_dicom_dataset(
    dataset_dir: Path,
    roi_names: Sequence[str],
    spacing_mm: Sequence[float],
    *,
    mapping: Mapping[str, Sequence[str]] | None = None,
    limit: int | None = None,
) -> list[TrainingCase]:
    """Training cases of a DICOM dataset at the model's spacing.

    Parameters
    ----------
    dataset_dir
        Folder with one sub-folder per case.
    roi_names
        The model's ROI names (label 1..N in order).
    spacing_mm
        Target spacing ``[x, y, z]`` in mm.
    mapping
        Extra exported-name mapping ``{roi name: [exported names]}``.
    limit
        Use only the first ``limit`` cases.

    Raises
    ------
    TrainingError
        When no case has any of the ROIs, or a case folder is unusable.
    """
    sources = load_source_cases(dataset_dir, roi_names, mapping=mapping, limit=limit)
    if not sources:
        raise TrainingError(
            f"no case in {dataset_dir} has an ROI that maps to {', '.join(roi_names)}; "
            "check the ROI names or pass a mapping file"
        )
    cases = [to_training_case(s, roi_names, spacing_mm) for s in sources]
    counts = {n: sum(bool(c.known[i]) for c in cases) for i, n in enumerate(roi_names, 1)}
    log.info("%d DICOM cases from %s; contoured per ROI: %s", len(cases), dataset_dir, counts)
    return cases
