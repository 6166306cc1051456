"""One DICOM image series to one volume with its affine.

``load_series(paths)`` reads every file with pydicom (compressed transfer
syntaxes are decoded by pylibjpeg-openjpeg / -libjpeg / -rle and pyjpegls),
drops objects that are not part of the volume (localizers/scouts, secondary
captures, files without pixel data) with a note, sorts the slices along the
slice normal and checks the geometry. Every problem is either handled, with a
note in :attr:`ImageVolume.notes`, or refused with a
:class:`~contourd.errors.SeriesGeometryError` naming the series, the problem
and the numbers:

================================  =============================================
problem                           what happens
================================  =============================================
scout / localizer images          dropped (ImageType contains LOCALIZER), noted
secondary capture objects         dropped (SC SOP classes), noted
files without pixel data          dropped (RTSTRUCT, presentation state), noted
an image header without pixels    refused, naming the file and its position
several series in ``paths``       refused
several stacks in one series      split by image type, orientation and
                                  reconstruction (inference/stacks.py); the
                                  primary axial stack is kept, the others are
                                  named in a note; errors name the stack
non-monochrome pixels (RGB)       refused
byte-identical duplicates         extra copies dropped, noted
different images, same position   refused ("not a volume" when all share one)
fewer than ``min_slices``         refused
uneven spacing / missing slices   refused, listing the steps that differ
                                  (missing count stated)
slices shifted in-plane           refused
gantry tilt                       handled: the volume keeps the acquired,
                                  sheared grid (the affine's slice axis follows
                                  the slice positions); preprocessing resamples
                                  it onto the model's orthogonal grid and masks
                                  come back onto the acquired slices. Refused
                                  when ``allow_tilt=False``.
multi-frame Enhanced CT/MR        frames read from the functional groups
rescale slope / intercept         applied per slice (CT: Hounsfield units)
================================  =============================================

Conventions: the array is float32 indexed ``[slice, row, column]``; the 4x4
affine maps ``(column, row, slice, 1)`` to DICOM LPS millimetres. Column index
runs along ImageOrientationPatient[0:3], row index along [3:6], slice index in
order of increasing position along the slice normal (row x column direction).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from contourd.errors import SeriesGeometryError
from inference.stacks import StackKey, primary_index, stack_key

log = logging.getLogger(__name__)

SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


@dataclass
class ImageVolume:
    """A series as a 3D array with its geometry.

    Parameters
    ----------
    array
        float32 ``[slice, row, column]``; rescaled values (HU for CT).
    affine
        4x4 float64 mapping ``(column, row, slice, 1)`` voxel indices to LPS mm.
        Its slice axis may be non-orthogonal to the image plane (gantry tilt).
    headers
        One pydicom dataset per slice, in slice order, without pixel data. For
        multi-frame objects the same dataset appears once per frame.
    series_uid
        SeriesInstanceUID.
    modality
        DICOM Modality ("CT", "MR", ...).
    notes
        What was handled on the way (dropped scouts, duplicates, tilt).
    frame_numbers
        1-based frame number per slice for multi-frame sources, else ``None``.
    """

    array: np.ndarray
    affine: np.ndarray
    headers: list[Dataset]
    series_uid: str
    modality: str
    notes: list[str] = field(default_factory=list)
    frame_numbers: list[int] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(slices, rows, columns)``."""
        z, y, x = self.array.shape
        return int(z), int(y), int(x)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel step lengths in mm, ordered ``(column, row, slice)``."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(norms[0]), float(norms[1]), float(norms[2])

    @property
    def tilt_deg(self) -> float:
        """Angle between the slice axis and the image-plane normal (degrees)."""
        normal = np.cross(self.affine[:3, 0], self.affine[:3, 1])
        step = self.affine[:3, 2]
        cosang = abs(float(normal @ step)) / float(np.linalg.norm(normal) * np.linalg.norm(step))
        return float(np.degrees(np.arccos(min(1.0, cosang))))

    def index_to_lps(self, index_crs: np.ndarray) -> np.ndarray:
        """Map ``(N, 3)`` voxel indices ordered (column, row, slice) to LPS mm."""
        idx = np.asarray(index_crs, dtype=np.float64)
        return idx @ self.affine[:3, :3].T + self.affine[:3, 3]


@dataclass
class _Frame:
    """One 2D image: a single-frame file or one frame of a multi-frame file."""

    path: Path
    dataset: Dataset
    frame_index: int | None
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    slope: float
    intercept: float
    rows: int
    columns: int


def _series_label(uid: str, modality: str, n_files: int) -> str:
    return f"series {uid} ({modality}, {n_files} files)"


def _first(seq_parent: Dataset | None, seq_name: str) -> Dataset | None:
    if seq_parent is None or seq_name not in seq_parent:
        return None
    seq = seq_parent[seq_name].value
    return seq[0] if len(seq) else None


def _functional(ds: Dataset, index: int, seq_name: str) -> Dataset | None:
    """The functional group ``seq_name`` of frame ``index`` (per-frame, else shared)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and index < len(per_frame):
        item = _first(per_frame[index], seq_name)
        if item is not None:
            return item
    return _first(_first(ds, "SharedFunctionalGroupsSequence"), seq_name)


def _frames_of(path: Path, ds: Dataset, label: str) -> list[_Frame]:
    rows, columns = int(ds.Rows), int(ds.Columns)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    is_enhanced = "PerFrameFunctionalGroupsSequence" in ds or (
        "SharedFunctionalGroupsSequence" in ds
    )
    frames = []
    for index in range(n_frames if is_enhanced else 1):
        if is_enhanced:
            pos_item = _functional(ds, index, "PlanePositionSequence")
            ori_item = _functional(ds, index, "PlaneOrientationSequence")
            meas_item = _functional(ds, index, "PixelMeasuresSequence")
            pvt_item = _functional(ds, index, "PixelValueTransformationSequence")
        else:
            pos_item = ori_item = meas_item = pvt_item = ds
        if n_frames > 1 and not is_enhanced:
            raise SeriesGeometryError(
                f"{label}: {path.name} holds {n_frames} frames without functional groups "
                "(no per-frame position); expected single-frame images or an Enhanced "
                "CT/MR object; export the series as single-frame images"
            )
        missing = [
            name
            for name, item, tag in (
                ("ImagePositionPatient", pos_item, "ImagePositionPatient"),
                ("ImageOrientationPatient", ori_item, "ImageOrientationPatient"),
                ("PixelSpacing", meas_item, "PixelSpacing"),
            )
            if item is None or tag not in item
        ]
        if missing:
            raise SeriesGeometryError(
                f"{label}: {path.name} (frame {index + 1}) has no {', '.join(missing)}; "
                "a volume needs the position, orientation and pixel spacing of every "
                "slice; send the original axial images, not a derived view"
            )
        assert pos_item is not None and ori_item is not None and meas_item is not None
        spacing = [float(v) for v in meas_item.PixelSpacing]
        source = pvt_item if pvt_item is not None and "RescaleSlope" in pvt_item else ds
        frames.append(
            _Frame(
                path=path,
                dataset=ds,
                frame_index=index if is_enhanced else None,
                position=np.array([float(v) for v in pos_item.ImagePositionPatient]),
                orientation=np.array([float(v) for v in ori_item.ImageOrientationPatient]),
                pixel_spacing=(spacing[0], spacing[1]),
                slope=float(source.get("RescaleSlope", 1.0) or 1.0),
                intercept=float(source.get("RescaleIntercept", 0.0) or 0.0),
                rows=rows,
                columns=columns,
            )
        )
    return frames


def _read_all(
    paths: Sequence[Path],
) -> tuple[list[tuple[Path, Dataset]], list[str], list[tuple[Path, Dataset]]]:
    """Read every file; return image datasets, notes on what was skipped, and
    image headers (a slice position, rows, columns) that came without pixel data."""
    images: list[tuple[Path, Dataset]] = []
    no_pixels: list[tuple[Path, Dataset]] = []
    skipped: dict[str, int] = {}
    for path in paths:
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file is reported, not fatal
            key = f"unreadable ({type(err).__name__})"
            skipped[key] = skipped.get(key, 0) + 1
            continue
        if len(ds) == 0:
            skipped["unreadable (empty or truncated)"] = (
                skipped.get("unreadable (empty or truncated)", 0) + 1
            )
            continue
        if "PixelData" not in ds and "Rows" in ds and "ImagePositionPatient" in ds:
            no_pixels.append((Path(path), ds))
            continue
        if "PixelData" not in ds or "Rows" not in ds:
            key = f"without pixel data ({ds.get('Modality', 'unknown modality')})"
            skipped[key] = skipped.get(key, 0) + 1
            continue
        images.append((Path(path), ds))
    notes = [f"skipped {n} file(s) {why}" for why, n in skipped.items()]
    return images, notes, no_pixels


def _refuse_slices_without_pixels(label: str, no_pixels: list[tuple[Path, Dataset]]) -> None:
    """An image header without Pixel Data is a hole in the volume: say so by name."""
    shown = "; ".join(
        f"{path.name} (instance {ds.get('InstanceNumber', '?')}, position "
        f"{[round(float(v), 2) for v in ds.ImagePositionPatient]} mm)"
        for path, ds in no_pixels[:5]
    )
    more = f" and {len(no_pixels) - 5} more" if len(no_pixels) > 5 else ""
    raise SeriesGeometryError(
        f"{label}: {len(no_pixels)} slice(s) have a header but no Pixel Data (7FE0,0010): "
        f"{shown}{more}; the image itself never arrived; resend those images (or the "
        "series) from the scanner"
    )


def _split_stacks(
    frames: list[_Frame], label: str, tolerance: float
) -> tuple[list[_Frame], str, list[str]]:
    """Keep the primary stack; return its frames, the label naming it, and notes."""
    groups: list[np.ndarray] = []
    keys: list[StackKey] = []
    for fr in frames:
        for ori in groups:
            if np.max(np.abs(ori - fr.orientation)) <= tolerance:
                break
        else:
            ori = fr.orientation
            groups.append(ori)
        keys.append(stack_key(fr.dataset, ori.tolist(), fr.rows, fr.columns, fr.pixel_spacing))
    distinct = list(dict.fromkeys(keys))
    if len(distinct) == 1:
        return frames, label, []
    counts = [(k, keys.count(k)) for k in distinct]
    best = primary_index(counts)
    primary = distinct[best]
    aside = [(k, n) for i, (k, n) in enumerate(counts) if i != best]
    aside_text = "; ".join(f"{n} image(s) with {k.describe(primary)}" for k, n in aside)
    kind = "axial " if primary.axial else ""
    note = (
        f"the series holds {len(distinct)} stacks; contoured the primary {kind}stack of "
        f"{counts[best][1]} image(s) ({primary.describe()}); set aside {aside_text}"
    )
    label = (
        f"{label}, primary stack of {counts[best][1]} of {len(frames)} images "
        f"({primary.describe()}; set aside: {aside_text})"
    )
    return [f for f, k in zip(frames, keys, strict=True) if k == primary], label, [note]


def load_series(
    paths: Sequence[Path],
    *,
    min_slices: int = 3,
    spacing_tolerance: float = 0.05,
    spacing_tolerance_mm: float = 0.05,
    position_tolerance_mm: float = 0.5,
    duplicate_tolerance_mm: float = 0.01,
    orientation_tolerance: float = 1e-3,
    tilt_tolerance_deg: float = 0.5,
    allow_tilt: bool = True,
    modalities: Sequence[str] = ("CT", "MR"),
) -> ImageVolume:
    """Read one image series into an :class:`ImageVolume`.

    Parameters
    ----------
    paths
        Files of one series (other objects in the list are skipped with a note).
    min_slices
        Fewer slices than this are refused.
    spacing_tolerance, spacing_tolerance_mm
        A slice step may differ from the median step by
        ``max(spacing_tolerance * median, spacing_tolerance_mm)``.
    position_tolerance_mm
        How far a slice origin may lie off the straight line through the stack.
    duplicate_tolerance_mm
        Slices closer than this along the normal share one position.
    orientation_tolerance
        Largest difference of an ImageOrientationPatient component within one
        orientation.
    tilt_tolerance_deg
        Angles between the stack direction and the plane normal below this are
        treated as no tilt.
    allow_tilt
        Refuse gantry-tilted series when ``False``.
    modalities
        Accepted DICOM Modality values; others (SEG, US, OT...) are refused.

    Raises
    ------
    SeriesGeometryError
        The series cannot be a volume; the message names the series, the
        problem, the numbers and what to do.
    """
    paths = [Path(p) for p in paths]
    modalities_allowed = tuple(modalities)
    images, notes, no_pixels = _read_all(paths)
    if not images and not no_pixels:
        raise SeriesGeometryError(
            f"none of the {len(paths)} file(s) given is a DICOM image "
            f"({'; '.join(notes) or 'no files'}); pass the folder of an image series"
        )
    if not images:
        images = no_pixels  # every header lacks pixels: refused below with their names
    series_uids = sorted({str(ds.get("SeriesInstanceUID", "")) for _, ds in images})
    if len(series_uids) > 1:
        counts = {
            u: sum(1 for _, ds in images if ds.get("SeriesInstanceUID", "") == u)
            for u in series_uids
        }
        listing = ", ".join(f"{u} ({n} files)" for u, n in counts.items())
        raise SeriesGeometryError(
            f"the {len(images)} image files belong to {len(series_uids)} series: {listing}; "
            "load one series at a time (contourd segment groups files by series)"
        )
    uid = series_uids[0]
    modalities = sorted({str(ds.get("Modality", "")) for _, ds in images})
    label = _series_label(uid, "/".join(modalities), len(images))
    if no_pixels:
        _refuse_slices_without_pixels(label, no_pixels)

    kept: list[tuple[Path, Dataset]] = []
    n_localizer = n_sc = 0
    for path, ds in images:
        image_type = [str(v).strip().upper() for v in (ds.get("ImageType") or [])]
        if "LOCALIZER" in image_type or "SCOUT" in image_type:
            n_localizer += 1
        elif str(ds.get("SOPClassUID", "")).startswith(SECONDARY_CAPTURE_PREFIX):
            n_sc += 1
        else:
            kept.append((path, ds))
    if n_localizer:
        notes.append(f"dropped {n_localizer} localizer/scout image(s)")
    if n_sc:
        notes.append(f"dropped {n_sc} secondary capture image(s)")
    if not kept:
        raise SeriesGeometryError(
            f"{label}: no slice is left after dropping {n_localizer} localizer(s) and "
            f"{n_sc} secondary capture(s); expected original CT/MR images; send the "
            "image series itself"
        )
    modalities = sorted({str(ds.get("Modality", "")) for _, ds in kept})
    if len(modalities) > 1:
        raise SeriesGeometryError(
            f"{label}: mixes modalities {modalities}; expected one; resend one series"
        )
    if modalities and modalities[0] not in modalities_allowed:
        raise SeriesGeometryError(
            f"{label}: modality {modalities[0]!r} is not an image series this node "
            f"segments; expected one of {', '.join(modalities_allowed)}; route only "
            "CT/MR image series here"
        )
    for path, ds in kept:
        photometric = str(ds.get("PhotometricInterpretation", "")).strip()
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        if photometric not in MONOCHROME or samples != 1:
            raise SeriesGeometryError(
                f"{label}: {path.name} has PhotometricInterpretation {photometric!r} with "
                f"{samples} sample(s) per pixel; expected MONOCHROME1/2 with 1 sample "
                "(greyscale CT/MR); colour images cannot be segmented"
            )

    frames: list[_Frame] = []
    for path, ds in kept:
        frames.extend(_frames_of(path, ds, label))

    frames, label, stack_notes = _split_stacks(frames, label, orientation_tolerance)
    notes.extend(stack_notes)
    row_dir = frames[0].orientation[:3]
    col_dir = frames[0].orientation[3:]
    if (
        abs(np.linalg.norm(row_dir) - 1) > 1e-2
        or abs(np.linalg.norm(col_dir) - 1) > 1e-2
        or abs(float(row_dir @ col_dir)) > 1e-2
    ):
        raise SeriesGeometryError(
            f"{label}: ImageOrientationPatient {frames[0].orientation.tolist()} is not two "
            "orthonormal unit vectors; the header is corrupt; resend from the scanner"
        )
    row_dir = row_dir / np.linalg.norm(row_dir)
    col_dir = col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)

    # sort along the normal (stable: instance number breaks ties)
    frames.sort(
        key=lambda f: (
            float(f.position @ normal),
            int(f.dataset.get("InstanceNumber", 0) or 0),
            f.frame_index or 0,
        )
    )
    frames, dup_notes = _drop_duplicates(frames, normal, duplicate_tolerance_mm, label)
    notes.extend(dup_notes)

    if len(frames) < min_slices:
        raise SeriesGeometryError(
            f"{label}: has {len(frames)} slice(s) at distinct positions; at least "
            f"{min_slices} are needed for a volume; send the whole series"
        )

    along = np.array([f.position @ normal for f in frames])
    steps = np.diff(along)
    median = float(np.median(steps))
    tol = max(spacing_tolerance * median, spacing_tolerance_mm)
    bad = np.flatnonzero(np.abs(steps - median) > tol)
    if bad.size:
        i = int(bad[0])
        ratio = steps[i] / median
        if abs(ratio - round(ratio)) * median <= tol and round(ratio) >= 2:
            missing = int(sum(max(0, round(s / median) - 1) for s in steps))
            problem = (
                f"missing slices: the step between slice positions {along[i]:.2f} and "
                f"{along[i + 1]:.2f} mm is {steps[i]:.2f} mm where the others are "
                f"{median:.2f} mm ({missing} slice(s) missing in all)"
            )
        else:
            shown = ", ".join(
                f"{steps[j]:.2f} mm between {along[j]:.2f} and {along[j + 1]:.2f} mm"
                for j in bad[:8]
            )
            more = f" and {bad.size - 8} more" if bad.size > 8 else ""
            problem = (
                f"uneven slice spacing: {bad.size} of {steps.size} steps differ from the "
                f"median {median:.2f} mm by more than {tol:.2f} mm: {shown}{more}"
            )
        raise SeriesGeometryError(
            f"{label}: {problem}; expected evenly spaced slices; resend the complete "
            "series (or reconstruct it with constant spacing)"
        )

    first, last = frames[0].position, frames[-1].position
    step_vec = (last - first) / (len(frames) - 1)
    expected = first + np.outer(np.arange(len(frames)), step_vec)
    positions = np.array([f.position for f in frames])
    deviation = float(np.max(np.linalg.norm(positions - expected, axis=1)))
    if deviation > position_tolerance_mm:
        raise SeriesGeometryError(
            f"{label}: slice origins leave the straight line through the stack by up to "
            f"{deviation:.2f} mm (tolerance {position_tolerance_mm} mm); expected one "
            "regular stack; the series mixes table positions or reconstructions"
        )
    cos_tilt = abs(float(step_vec @ normal)) / float(np.linalg.norm(step_vec))
    tilt_deg = float(np.degrees(np.arccos(min(1.0, cos_tilt))))
    if tilt_deg > tilt_tolerance_deg:
        if not allow_tilt:
            raise SeriesGeometryError(
                f"{label}: gantry tilt of {tilt_deg:.2f} degrees (slice origins step "
                f"{np.round(step_vec, 3).tolist()} mm, plane normal "
                f"{np.round(normal, 3).tolist()}); tilted series are refused by this "
                "configuration; rescan without tilt or allow tilt"
            )
        slice_axis = step_vec
        notes.append(
            f"gantry tilt of {tilt_deg:.2f} degrees: kept on the acquired sheared grid; "
            "the network input is resampled onto an orthogonal grid"
        )
    else:
        slice_axis = normal * float(step_vec @ normal)

    affine = np.eye(4)
    affine[:3, 0] = row_dir * frames[0].pixel_spacing[1]
    affine[:3, 1] = col_dir * frames[0].pixel_spacing[0]
    affine[:3, 2] = slice_axis
    affine[:3, 3] = first

    array = _decode(frames, label)
    headers = []
    for fr in frames:
        if "PixelData" in fr.dataset:
            del fr.dataset.PixelData
        headers.append(fr.dataset)
    frame_numbers = (
        [(f.frame_index or 0) + 1 for f in frames]
        if any(f.frame_index is not None for f in frames)
        else None
    )
    for note in notes:
        log.info("series %s: %s", uid, note)
    return ImageVolume(
        array=array,
        affine=affine,
        headers=headers,
        series_uid=uid,
        modality=modalities[0],
        notes=notes,
        frame_numbers=frame_numbers,
    )


def _drop_duplicates(
    frames: list[_Frame], normal: np.ndarray, tol_mm: float, label: str
) -> tuple[list[_Frame], list[str]]:
    """Collapse byte-identical copies at one position; refuse different images there."""
    along = [float(f.position @ normal) for f in frames]
    kept: list[_Frame] = [frames[0]]
    dropped = 0
    clashes: list[tuple[float, int]] = []
    for i in range(1, len(frames)):
        if abs(along[i] - float(kept[-1].position @ normal)) > tol_mm:
            kept.append(frames[i])
            continue
        if _same_pixels(kept[-1], frames[i]):
            dropped += 1
        else:
            if clashes and abs(clashes[-1][0] - along[i]) <= tol_mm:
                clashes[-1] = (clashes[-1][0], clashes[-1][1] + 1)
            else:
                clashes.append((along[i], 2))
    if clashes:
        if len(kept) == 1:
            acq = sorted({str(f.dataset.get("AcquisitionNumber", "?")) for f in frames})
            raise SeriesGeometryError(
                f"{label}: not a volume: all {len(frames)} images lie at one position "
                f"({along[0]:.2f} mm along the normal; acquisition numbers "
                f"{', '.join(acq)}), e.g. a bolus-tracking or dynamic series; expected "
                "one image per slice position; send a volumetric series"
            )
        listing = ", ".join(f"{n} images at {pos:.2f} mm" for pos, n in clashes[:5])
        raise SeriesGeometryError(
            f"{label}: duplicated slice positions with different pixel data ({listing}); "
            "expected one image per position (several echoes, phases or "
            "acquisitions are mixed); split the series and send one"
        )
    notes = [f"dropped {dropped} duplicate image(s) at an existing position"] if dropped else []
    return kept, notes


def _same_pixels(a: _Frame, b: _Frame) -> bool:
    if a.frame_index is not None or b.frame_index is not None:
        return False
    return bool(a.dataset.PixelData == b.dataset.PixelData)


def _decode(frames: list[_Frame], label: str) -> np.ndarray:
    """Decode and rescale every slice into a float32 ``[slice, row, column]`` array."""
    out = np.empty((len(frames), frames[0].rows, frames[0].columns), dtype=np.float32)
    cache: dict[int, np.ndarray] = {}
    for k, fr in enumerate(frames):
        try:
            if fr.frame_index is None:
                raw = fr.dataset.pixel_array
            else:
                key = id(fr.dataset)
                if key not in cache:
                    cache[key] = fr.dataset.pixel_array
                raw = cache[key][fr.frame_index] if cache[key].ndim == 3 else cache[key]
        except Exception as err:  # noqa: BLE001 - decoder errors vary by plugin
            syntax = fr.dataset.file_meta.get("TransferSyntaxUID", "unknown")
            name = getattr(syntax, "name", str(syntax))
            raise SeriesGeometryError(
                f"{label}: cannot decode the pixel data of {fr.path.name} (transfer syntax "
                f"{name}): {type(err).__name__}: {err}; expected a complete, decodable "
                "image; resend the file (uncompressed if possible)"
            ) from err
        if raw.shape != (fr.rows, fr.columns):
            raise SeriesGeometryError(
                f"{label}: {fr.path.name} decodes to shape {raw.shape}, expected "
                f"({fr.rows}, {fr.columns}); the file is corrupt; resend it"
            )
        np.multiply(raw, fr.slope, out=out[k], casting="unsafe")
        out[k] += fr.intercept
    return out
