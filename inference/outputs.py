"""The result files of a segmentation: one naming scheme, written atomically.

Every caller that writes results goes through here: the worker
(``results/<job_id>/``) and ``contourd segment`` (``OUT/<SeriesInstanceUID>/``).

Names in an output folder:

- ``RS.<SOPInstanceUID>.dcm``: the RT Structure Set;
- ``SEG.<SOPInstanceUID>.dcm``: the DICOM Segmentation, when asked for;
- ``preview.png``: a montage of slices with the contours over them.

Each file is written as ``.<name>.tmp`` in the same folder, flushed to disk
and renamed over its final name (:func:`save_atomically`), so a reader (the
dispatcher, a script watching ``OUT``, a planning system's import folder)
never sees a partial file, and a crash leaves at most a hidden ``.tmp`` file.

The algorithm identification that both writers put in the objects (model
name(s), version(s), weights sha256, contourd version) is built here too
(:func:`identify_algorithm`), also for each ROI of a multi-model result by
:func:`inference.pipeline.segment_series`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset

from contourd import __version__
from inference.preview import draw_slice
from inference.roi_mask import AlgorithmInfo, RoiMask

if TYPE_CHECKING:
    from inference.pipeline import SegmentationResult

RTSTRUCT_PREFIX = "RS."
SEG_PREFIX = "SEG."
PREVIEW_FILENAME = "preview.png"
OUTPUT_KINDS = ("rtstruct", "seg")
"""What a result can hold besides the preview (a rule's ``outputs``)."""

SEG_SKIPPED_WARNING = "no ROI was found, so no SEG was written (a SEG needs at least one segment)"


def identify_algorithm(
    models: Sequence[Any], run_parameters: Mapping[str, Sequence[str]] | None = None
) -> AlgorithmInfo:
    """The identification written into an RTSTRUCT or SEG made by ``models``.

    Parameters
    ----------
    models
        Models with a ``card`` (name, version) and ``weights_sha256``
        (``ApprovedModel``), in run order.
    run_parameters
        ``"name version"`` -> how that model ran (``key=value`` items, from
        :attr:`inference.pipeline.SegmentationResult.run_parameters`); with
        several models each item is prefixed ``name:``.

    Returns
    -------
    AlgorithmInfo
        Names and versions joined with ``+`` in run order; the weights'
        sha256 only for a single model (several have no single hash).
    """
    parameters: list[str] = []
    for m in models:
        items = (run_parameters or {}).get(f"{m.card.name} {m.card.version}", ())
        parameters += [p if len(models) == 1 else f"{m.card.name}:{p}" for p in items]
    return AlgorithmInfo(
        model_name="+".join(m.card.name for m in models),
        model_version="+".join(str(m.card.version) for m in models),
        weights_sha256=models[0].weights_sha256 if len(models) == 1 else None,
        software_version=__version__,
        parameters=tuple(parameters),
    )


def rtstruct_name(sop_instance_uid: str) -> str:
    """File name of an RTSTRUCT: ``RS.<SOPInstanceUID>.dcm``."""
    return f"{RTSTRUCT_PREFIX}{sop_instance_uid}.dcm"


def seg_name(sop_instance_uid: str) -> str:
    """File name of a SEG: ``SEG.<SOPInstanceUID>.dcm``."""
    return f"{SEG_PREFIX}{sop_instance_uid}.dcm"


def rtstruct_uid(path: Path) -> str | None:
    """The SOP Instance UID in an RTSTRUCT file name; ``None`` for any other file."""
    name = Path(path).name
    if not (name.startswith(RTSTRUCT_PREFIX) and name.endswith(".dcm")):
        return None
    return name[len(RTSTRUCT_PREFIX) : -len(".dcm")]


def save_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """Have ``write(tmp)`` write a file, flush it to disk, then rename it to ``path``.

    ``tmp`` is ``.<name>.tmp`` next to ``path`` (same file system, so the rename
    is atomic). When ``write`` fails the temporary file is removed and the
    error propagates; ``path`` is then untouched.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_dataset(dataset: Dataset, out_dir: Path, name: str) -> Path:
    """Save a DICOM object (Part 10 file, its own transfer syntax) as ``out_dir/name``."""
    return save_atomically(
        out_dir / name, lambda tmp: dataset.save_as(tmp, enforce_file_format=True)
    )


@dataclass
class WrittenOutputs:
    """What :func:`write_results` wrote.

    Attributes
    ----------
    files
        The DICOM files, RTSTRUCT first.
    warnings
        Outputs asked for but not written, and why.
    rtstruct
        The RT Structure Set dataset (``None`` when not asked for).
    """

    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rtstruct: Dataset | None = None


def write_results(
    result: SegmentationResult,
    algorithm: AlgorithmInfo,
    out_dir: Path,
    *,
    label: str,
    outputs: Sequence[str] = ("rtstruct",),
    uid_root: str | None = None,
    amend_rtstruct: Callable[[Dataset], None] | None = None,
) -> WrittenOutputs:
    """Write the RTSTRUCT and/or SEG of one result into ``out_dir`` (created).

    Parameters
    ----------
    result
        The segmentation (source headers and source-grid masks).
    algorithm
        From :func:`identify_algorithm`.
    out_dir
        The output folder; existing files stay.
    label
        Structure Set Label (at most 16 characters are kept).
    outputs
        ``"rtstruct"`` and/or ``"seg"``; empty means ``("rtstruct",)``.
    uid_root
        Site UID root for the new Series and SOP Instance UIDs.
    amend_rtstruct
        Called with the RTSTRUCT before it is saved (the worker records the
        structure set it supersedes).

    Returns
    -------
    WrittenOutputs
        Files written, RTSTRUCT first. A SEG for a result with no ROI is
        not written (a SEG needs a segment); a warning says so.
    """
    from inference.rtstruct_writer import write_rtstruct
    from inference.seg_writer import write_seg

    kinds = set(outputs) or {"rtstruct"}
    out_dir.mkdir(parents=True, exist_ok=True)
    written = WrittenOutputs()
    if "rtstruct" in kinds:
        ds = write_rtstruct(
            result.volume.headers,
            result.rois,
            algorithm,
            structure_set_label=label,
            uid_root=uid_root,
        )
        if amend_rtstruct is not None:
            amend_rtstruct(ds)
        written.rtstruct = ds
        written.files.append(save_dataset(ds, out_dir, rtstruct_name(ds.SOPInstanceUID)))
    if "seg" in kinds:
        if not result.rois:
            written.warnings.append(SEG_SKIPPED_WARNING)
        else:
            seg = write_seg(result.volume.headers, result.rois, algorithm, uid_root=uid_root)
            written.files.append(save_dataset(seg, out_dir, seg_name(seg.SOPInstanceUID)))
    return written


def write_preview(
    out_dir: Path, volume_hu: np.ndarray, rois: Sequence[RoiMask], *, max_panels: int = 6
) -> Path:
    """Save ``out_dir/preview.png``: slices (``[slice, row, column]``, HU) with ROI outlines.

    Slices are spread evenly over the extent that holds any ROI (the whole
    volume when there is none); each ROI is drawn as its mask's outline in its
    display colour (:func:`inference.preview.draw_slice`). Written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    union = np.zeros(volume_hu.shape[0], dtype=bool)
    for roi in rois:
        union |= roi.mask.reshape(roi.mask.shape[0], -1).any(axis=1)
    candidates = np.flatnonzero(union) if union.any() else np.arange(volume_hu.shape[0])
    count = min(max_panels, len(candidates))
    picks = np.unique(candidates[np.linspace(0, len(candidates) - 1, count).astype(int)])
    cols = min(3, len(picks))
    rows = int(np.ceil(len(picks) / cols))
    fig = Figure(figsize=(3.2 * cols, 3.2 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, k in zip(axes.ravel(), picks, strict=False):
        draw_slice(ax, volume_hu, rois, k)
        ax.set_title(f"slice {k + 1}/{volume_hu.shape[0]}", fontsize=8)
    names = ", ".join(r.name for r in rois) or "no ROI"
    fig.suptitle(f"AUTOMATIC, UNAPPROVED: {names}", fontsize=9)
    fig.tight_layout()
    return save_atomically(
        out_dir / PREVIEW_FILENAME, lambda tmp: fig.savefig(tmp, dpi=80, format="png")
    )
