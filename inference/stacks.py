"""Stacks inside one series: which images belong together, which one to contour.

Scanners put more than one stack under one Series Instance UID: a GE head
series with ``ORIGINAL\\PRIMARY\\AXIAL`` images and ``...\\ADD`` images, an MR
series with two orientations, two reconstructions (kernel or slice thickness)
of one acquisition. :func:`stack_key` says which stack an image belongs to
(image type, orientation, reconstruction: kernel, slice thickness, matrix and
pixel spacing); :func:`primary_index` picks the stack to contour: axial first,
then ORIGINAL/PRIMARY and not DERIVED, then the most images.

Acquisition Number is deliberately *not* part of the key: step-and-shoot
axial CT numbers every rotation as its own acquisition (the dicom2nifti GE
excerpt numbers four slices 4, 4, 5, 5), so splitting by it would cut a
normal series apart. A repeated acquisition over the same positions shows up
as duplicated positions instead, which the volume loader refuses by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
from pydicom.dataset import Dataset

# |normal . z| at or above cos(45 deg): the plane is closer to axial than to
# sagittal or coronal.
_AXIAL_MIN_COS = float(np.cos(np.radians(45.0)))


@dataclass(frozen=True)
class StackKey:
    """What the images of one stack share.

    Attributes
    ----------
    image_type : tuple of str
        (0008,0008) values, upper case.
    orientation : tuple of 6 floats
        Image Orientation (Patient) of the stack (direction cosines, 3 decimals).
    kernel : str
        (0018,1210) Convolution Kernel ("" when absent).
    thickness_mm : float or None
        (0018,0050) Slice Thickness, mm.
    matrix : tuple of 2 ints
        (rows, columns).
    pixel_spacing_mm : tuple of 2 floats
        (between rows, between columns), mm.
    """

    image_type: tuple[str, ...]
    orientation: tuple[float, ...]
    kernel: str
    thickness_mm: float | None
    matrix: tuple[int, int]
    pixel_spacing_mm: tuple[float, float]

    @property
    def axial(self) -> bool:
        """True when the slice normal lies within 45 degrees of the patient's z axis."""
        row, col = np.array(self.orientation[:3]), np.array(self.orientation[3:])
        normal = np.cross(row, col)
        norm = float(np.linalg.norm(normal))
        return norm > 0 and abs(float(normal[2])) / norm >= _AXIAL_MIN_COS

    def _shown(self, name: str) -> str:
        value = getattr(self, name)
        if name == "image_type":
            return "ImageType " + ("\\".join(value) or "(none)")
        if name == "orientation":
            plane = "axial" if self.axial else "non-axial"
            return f"{plane} orientation {[round(v, 3) for v in value]}"
        if name == "kernel":
            return f"kernel {value or '(none)'}"
        if name == "thickness_mm":
            return "slice thickness (none)" if value is None else f"{value:.2f} mm slices"
        if name == "matrix":
            return f"{value[0]}x{value[1]} matrix"
        return f"pixel spacing {value[0]:.3f}x{value[1]:.3f} mm"

    def describe(self, other: StackKey | None = None) -> str:
        """The stack in words; with ``other``, only what differs from it."""
        names = [f.name for f in fields(self)]
        if other is not None:
            names = [n for n in names if getattr(self, n) != getattr(other, n)]
        else:  # absent optional values say nothing about the stack
            names = [n for n in names if getattr(self, n) not in ("", None)]
        return ", ".join(self._shown(n) for n in names)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    return "\\".join(str(v).strip() for v in value)


def stack_key(
    ds: Dataset,
    orientation: Sequence[float],
    rows: int,
    columns: int,
    pixel_spacing_mm: tuple[float, float],
) -> StackKey:
    """The stack an image belongs to (``orientation`` is its orientation group's)."""
    thickness = ds.get("SliceThickness")
    try:
        thickness_mm = round(float(thickness), 3) if thickness not in (None, "") else None
    except (TypeError, ValueError):
        thickness_mm = None
    return StackKey(
        image_type=tuple(str(v).strip().upper() for v in (ds.get("ImageType") or [])),
        orientation=tuple(round(float(v), 3) for v in orientation),
        kernel=_text(ds, "ConvolutionKernel").upper(),
        thickness_mm=thickness_mm,
        matrix=(rows, columns),
        pixel_spacing_mm=(round(pixel_spacing_mm[0], 4), round(pixel_spacing_mm[1], 4)),
    )


def primary_index(stacks: Sequence[tuple[StackKey, int]]) -> int:
    """Index of the stack to contour among ``(key, image count)`` pairs.

    Axial before other planes, then ORIGINAL and PRIMARY and not DERIVED,
    then the stack with the most images; ties keep the first.
    """

    def score(item: tuple[StackKey, int]) -> tuple[bool, bool, int]:
        key, count = item
        original = (
            "ORIGINAL" in key.image_type
            and "PRIMARY" in key.image_type
            and "DERIVED" not in key.image_type
        )
        return key.axial, original, count

    best = 0
    for i, item in enumerate(stacks):
        if score(item) > score(stacks[best]):
            best = i
    return best
