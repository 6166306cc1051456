"""What routing knows about a series: header values plus association info.

:class:`SeriesAttributes` is built from one representative header of the
series (pixel data not needed) and what the association said (calling and
called AE titles). It deliberately holds no patient name, ID or birth date, so
it can be logged and stored with the routing decision: the job record keeps
it (:meth:`SeriesAttributes.to_record`) from the moment the series completes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from contourd.errors import SeriesFilesError

#: An orientation is oblique when the slice normal is more than this many
#: degrees from the nearest patient axis.
OBLIQUE_LIMIT_DEG = 30.0


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip() or None


def _functional_group_value(ds: Dataset, sequence: str, keyword: str) -> Any:
    """A value from the shared, else the first per-frame, functional group (enhanced IODs)."""
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        items = ds.get(groups)
        if not items:
            continue
        inner = items[0].get(sequence)
        if inner and keyword in inner[0]:
            return inner[0].get(keyword)
    return None


def orientation_from_iop(iop: Sequence[float] | None) -> str | None:
    """Classify slices as axial, sagittal, coronal or oblique.

    Parameters
    ----------
    iop
        Image Orientation (Patient): row direction cosines then column
        direction cosines, in DICOM LPS patient coordinates.

    Returns
    -------
    str or None
        The patient axis nearest to the slice normal (row x column): L/R ->
        ``"sagittal"``, A/P -> ``"coronal"``, S/I -> ``"axial"``;
        ``"oblique"`` when the normal is more than :data:`OBLIQUE_LIMIT_DEG`
        from every axis; ``None`` when ``iop`` is missing or degenerate.
    """
    if iop is None or len(iop) != 6:
        return None
    r = [float(v) for v in iop[:3]]
    c = [float(v) for v in iop[3:]]
    normal = [
        r[1] * c[2] - r[2] * c[1],
        r[2] * c[0] - r[0] * c[2],
        r[0] * c[1] - r[1] * c[0],
    ]
    length = math.sqrt(sum(v * v for v in normal))
    if length < 1e-6:
        return None
    components = [abs(v) / length for v in normal]
    axis = max(range(3), key=lambda i: components[i])
    if components[axis] < math.cos(math.radians(OBLIQUE_LIMIT_DEG)):
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


@dataclass(frozen=True)
class SeriesAttributes:
    """Header values and association info that rules can match on.

    Attributes
    ----------
    num_images
        Images in the series: instances, with a multi-frame instance counting
        its frames.
    slice_thickness_mm
        Slice Thickness (0018,0050) in mm, from the pixel measures functional
        group for enhanced multi-frame images.
    image_orientation_patient
        Row then column direction cosines (LPS).
    orientation
        Derived by :func:`orientation_from_iop`.
    """

    series_instance_uid: str | None = None
    modality: str | None = None
    body_part: str | None = None
    series_description: str | None = None
    study_description: str | None = None
    protocol_name: str | None = None
    calling_ae: str | None = None
    called_ae: str | None = None
    manufacturer: str | None = None
    station_name: str | None = None
    image_type: tuple[str, ...] = field(default_factory=tuple)
    slice_thickness_mm: float | None = None
    num_images: int = 0
    image_orientation_patient: tuple[float, ...] | None = None
    orientation: str | None = None
    patient_position: str | None = None

    @classmethod
    def from_dataset(
        cls,
        ds: Dataset,
        calling_ae: str | None = None,
        called_ae: str | None = None,
        num_images: int = 1,
    ) -> SeriesAttributes:
        """Attributes of the series ``ds`` belongs to.

        Parameters
        ----------
        ds
            Any instance's header (``stop_before_pixels=True`` is enough).
        calling_ae, called_ae
            AE titles of the association that brought the series.
        num_images
            Number of images (frames) received for the series.
        """
        iop_value = ds.get("ImageOrientationPatient")
        if iop_value is None:
            iop_value = _functional_group_value(
                ds, "PlaneOrientationSequence", "ImageOrientationPatient"
            )
        iop: tuple[float, ...] | None = None
        if iop_value is not None:
            try:
                iop = tuple(float(v) for v in iop_value)
            except (TypeError, ValueError):
                iop = None
        thickness_value = ds.get("SliceThickness")
        if thickness_value in (None, ""):
            thickness_value = _functional_group_value(ds, "PixelMeasuresSequence", "SliceThickness")
        try:
            thickness = float(thickness_value) if thickness_value not in (None, "") else None
        except (TypeError, ValueError):
            thickness = None
        image_type_value = ds.get("ImageType") or ()
        if isinstance(image_type_value, str):
            image_type_value = image_type_value.split("\\")
        return cls(
            series_instance_uid=_text(ds, "SeriesInstanceUID"),
            modality=_text(ds, "Modality"),
            body_part=_text(ds, "BodyPartExamined"),
            series_description=_text(ds, "SeriesDescription"),
            study_description=_text(ds, "StudyDescription"),
            protocol_name=_text(ds, "ProtocolName"),
            calling_ae=calling_ae.strip() if calling_ae else None,
            called_ae=called_ae.strip() if called_ae else None,
            manufacturer=_text(ds, "Manufacturer"),
            station_name=_text(ds, "StationName"),
            image_type=tuple(str(v).strip().upper() for v in image_type_value),
            slice_thickness_mm=thickness,
            num_images=num_images,
            image_orientation_patient=iop,
            orientation=orientation_from_iop(iop),
            patient_position=_text(ds, "PatientPosition"),
        )

    @classmethod
    def from_files(
        cls,
        paths: Iterable[Path],
        calling_ae: str | None = None,
        called_ae: str | None = None,
    ) -> SeriesAttributes:
        """Attributes of one series from its files (headers only).

        The first readable file (in sorted path order) is the representative
        header; ``num_images`` counts frames over all files.

        Raises
        ------
        SeriesFilesError
            When no file is a readable DICOM file (the message says how many
            were tried and where).
        """
        first: Dataset | None = None
        frames = 0
        paths = sorted(paths)
        for path in paths:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError):
                continue
            first = ds if first is None else first
            frames += frames_in(ds)
        if first is None:
            where = f" in {paths[0].parent}" if paths else ""
            raise SeriesFilesError(
                f"none of the {len(paths)} file(s){where} is readable DICOM (each needs the "
                "DICM preamble or an explicit file meta header); give the series' own files"
            )
        return cls.from_dataset(first, calling_ae, called_ae, num_images=frames)

    def to_record(self) -> dict[str, Any]:
        """JSON-ready values (tuples as lists), for the job record."""
        return asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> SeriesAttributes:
        """The attributes :meth:`to_record` gave; keys this version lacks are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in record.items() if k in known}
        values["image_type"] = tuple(values.get("image_type") or ())
        iop = values.get("image_orientation_patient")
        values["image_orientation_patient"] = tuple(iop) if iop is not None else None
        return cls(**values)

    def summary(self) -> str:
        """One line for logs and the CLI: no patient identifiers."""
        parts = [
            self.modality or "?",
            self.manufacturer or "unknown manufacturer",
            repr(self.series_description or ""),
            f"{self.num_images} image{'s' if self.num_images != 1 else ''}",
            self.orientation or "no orientation",
        ]
        return ", ".join(parts)


def frames_in(ds: Dataset) -> int:
    """Frames an instance holds (1 unless Number of Frames says more)."""
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1
