"""Is a received series whole? The signals its headers and its sender offer.

The assembler asks :func:`assess` before it completes a series version. The
signals, in the order they decide:

1. ``association``: an association that sent images of this version ended by
   abort or a dropped connection (or the node stopped while it was sending)
   and no association that started later was released normally;
2. ``images_in_acquisition``: (0020,1002) Images in Acquisition, where the
   vendor sends it, says more images than arrived for that acquisition;
3. ``instance_number``: Instance Numbers have holes (for example 1-57 and
   59-120: 58 is missing) inside the range of one stack (image type and
   orientation), so that a vendor's extra stack numbered from 100 is not a
   hole, and stacks whose numbers interleave are not either;
4. ``slice_position``: in the largest stack (image type and orientation), a step
   between neighbouring slices is a whole multiple (2x, 3x, ...) of the usual
   step, i.e. slices are missing there.

The first signal that says "incomplete" decides; when none does, the verdict
says what was checked. Only headers are used (no pixel data).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

# A step counts as "k slices missing" when it is k+1 usual steps within this
# fraction of one usual step; other uneven steps are left to the volume loader.
_GAP_TOLERANCE = 0.25
_MAX_LISTED = 8


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _floats(value: object, count: int) -> tuple[float, ...] | None:
    try:
        items = tuple(float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    return items if len(items) == count else None


@dataclass(frozen=True)
class SliceFacts:
    """What completeness needs from one instance's header.

    Attributes
    ----------
    sop_instance_uid : str
    instance_number : int or None
        (0020,0013).
    acquisition_number : int or None
        (0020,0012).
    images_in_acquisition : int or None
        (0020,1002), where the vendor sends it.
    position_mm : tuple of 3 floats or None
        Image Position (Patient), LPS mm.
    orientation : tuple of 6 floats or None
        Image Orientation (Patient), direction cosines.
    """

    sop_instance_uid: str
    instance_number: int | None
    acquisition_number: int | None
    images_in_acquisition: int | None
    position_mm: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    image_type: tuple[str, ...] = ()

    @property
    def stack(self) -> tuple[object, ...]:
        """Image type and (rounded) orientation: which stack the image belongs to."""
        orientation = tuple(round(c, 3) for c in self.orientation or ())
        return (self.image_type, orientation)

    @classmethod
    def from_header(cls, ds: Dataset) -> SliceFacts:
        """Read the facts from a header (missing or malformed values give None)."""
        return cls(
            sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
            instance_number=_int_or_none(ds.get("InstanceNumber")),
            acquisition_number=_int_or_none(ds.get("AcquisitionNumber")),
            images_in_acquisition=_int_or_none(ds.get("ImagesInAcquisition")),
            position_mm=_floats(ds.get("ImagePositionPatient"), 3),
            orientation=_floats(ds.get("ImageOrientationPatient"), 6),
            image_type=tuple(str(v).strip().upper() for v in (ds.get("ImageType") or [])),
        )


@dataclass(frozen=True)
class CompletenessVerdict:
    """The outcome of :func:`assess`.

    Attributes
    ----------
    complete : bool
        False when a signal says images are missing.
    signal : str
        The signal that decided (``association``, ``images_in_acquisition``,
        ``instance_number``, ``slice_position``), or ``none`` when no signal
        said "incomplete".
    detail : str
        For an incomplete series, what is missing ("the sender's association
        was aborted after 100 images"); otherwise what was checked.
    """

    complete: bool
    signal: str
    detail: str

    def describe(self) -> str:
        """One line for logs, job records and the ``series`` row."""
        if self.complete:
            return f"complete ({self.detail})"
        return f"incomplete: {self.detail} (signal: {self.signal})"


def _ranges(numbers: Sequence[int]) -> str:
    """``[1, 2, 3, 7, 9, 10]`` -> ``"1-3, 7, 9-10"`` (at most 8 runs shown)."""
    runs: list[tuple[int, int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:_MAX_LISTED])
    if len(runs) > _MAX_LISTED:
        text += f" (+{len(runs) - _MAX_LISTED} more runs)"
    return text


def _count_signal(facts: Sequence[SliceFacts]) -> str | None:
    per_acquisition: dict[int | None, set[str]] = defaultdict(set)
    announced: dict[int | None, int] = {}
    for f in facts:
        per_acquisition[f.acquisition_number].add(f.sop_instance_uid)
        if f.images_in_acquisition:
            announced[f.acquisition_number] = max(
                announced.get(f.acquisition_number, 0), f.images_in_acquisition
            )
    for acquisition, expected in sorted(announced.items(), key=lambda kv: str(kv[0])):
        arrived = len(per_acquisition[acquisition])
        if arrived < expected:
            which = f"acquisition {acquisition}" if acquisition is not None else "the acquisition"
            return (
                f"Images in Acquisition (0020,1002) says {expected} images, "
                f"{arrived} of {which} arrived ({expected - arrived} missing)"
            )
    return None


def _holes(numbers: set[int]) -> set[int]:
    return set(range(min(numbers), max(numbers) + 1)) - numbers if numbers else set()


def _instance_number_signal(facts: Sequence[SliceFacts]) -> str | None:
    present = {f.instance_number for f in facts if f.instance_number is not None}
    if len(present) < 2 or not _holes(present):
        return None
    per_stack: dict[tuple[object, ...], set[int]] = defaultdict(set)
    for f in facts:
        if f.instance_number is not None:
            per_stack[f.stack].add(f.instance_number)
    # A hole counts only inside one stack's own range and where no stack has the number.
    missing = sorted(set().union(*(_holes(n) for n in per_stack.values())) - present)
    if not missing:
        return None
    numbers = sorted(present)
    return (
        f"instance numbers {_ranges(numbers)} arrived; {_ranges(missing)} "
        f"({len(missing)} instance{'s' if len(missing) != 1 else ''}) missing"
    )


def _largest_stack_positions_mm(facts: Sequence[SliceFacts]) -> np.ndarray:
    """Sorted distinct positions (mm along the normal) of the largest stack."""
    groups: dict[tuple[object, ...], list[SliceFacts]] = defaultdict(list)
    for f in facts:
        if f.orientation is not None and f.position_mm is not None:
            groups[f.stack].append(f)
    if not groups:
        return np.zeros(0)
    stack = max(groups.values(), key=len)
    orientation = stack[0].orientation or ()
    positions = [f.position_mm for f in stack]
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, col)
    along = np.array(positions) @ normal
    return np.unique(np.round(along, 2))


def _position_signal(facts: Sequence[SliceFacts]) -> str | None:
    along = _largest_stack_positions_mm(facts)
    if len(along) < 3:
        return None
    steps = np.diff(along)
    usual = float(np.median(steps))
    if usual <= 0.01:
        return None
    gaps = []
    for i, step in enumerate(steps):
        k = round(step / usual)
        if k >= 2 and abs(step - k * usual) <= _GAP_TOLERANCE * usual:
            gaps.append((float(along[i]), float(along[i + 1]), k - 1))
    if not gaps:
        return None
    shown = "; ".join(
        f"from {a:.2f} to {b:.2f} mm ({n} slice{'s' if n != 1 else ''} missing)"
        for a, b, n in gaps[:_MAX_LISTED]
    )
    missing = sum(n for _, _, n in gaps)
    return (
        f"slice positions jump where the usual step is {usual:.2f} mm: {shown}; "
        f"{missing} slice{'s' if missing != 1 else ''} missing in all"
    )


def assess(facts: Iterable[SliceFacts], *, interruption: str | None) -> CompletenessVerdict:
    """Decide whether a series is complete from its instances' header facts.

    Parameters
    ----------
    facts
        One entry per instance of the series on disk (all versions).
    interruption
        Set when an association that sent this version ended abnormally and
        no later one was released normally, e.g. "the sender's association
        was aborted after 100 images".

    Returns
    -------
    CompletenessVerdict
        The first signal that says "incomplete" decides.
    """
    items = list(facts)
    if interruption:
        return CompletenessVerdict(False, "association", interruption)
    for signal, check in (
        ("images_in_acquisition", _count_signal),
        ("instance_number", _instance_number_signal),
        ("slice_position", _position_signal),
    ):
        detail = check(items)
        if detail is not None:
            return CompletenessVerdict(False, signal, detail)
    counts = Counter(
        name
        for f in items
        for name, value in (
            ("instance numbers", f.instance_number),
            ("positions", f.position_mm),
            ("Images in Acquisition", f.images_in_acquisition),
        )
        if value is not None
    )
    checked = ", ".join(f"{name} of {n}" for name, n in counts.items()) or "no header signal"
    return CompletenessVerdict(
        True, "none", f"{len(items)} instances; checked {checked}; no gap found"
    )
