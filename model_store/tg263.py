"""AAPM TG-263 standard structure names, and warnings for ROI names outside it.

The names live in ``model_store/data/tg263_names.csv`` (a subset of the
standard; see the file's header for its source). A name that is not in the
list is not an error: the model store warns and suggests the closest names
(:func:`difflib.get_close_matches`, case-insensitive).
"""

from __future__ import annotations

import csv
import difflib
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources
from typing import Protocol


class _NamedRoi(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def tg263_name(self) -> str | None: ...


@lru_cache(maxsize=1)
def tg263_names() -> tuple[str, ...]:
    """Every TG-263 primary name in the shipped list, in file order."""
    text = resources.files("model_store").joinpath("data/tg263_names.csv").read_text("utf-8")
    rows = csv.reader(line for line in text.splitlines() if line and not line.startswith("#"))
    header = next(rows)
    col = header.index("name")
    return tuple(row[col].strip() for row in rows if row and row[col].strip())


@lru_cache(maxsize=1)
def _by_lower() -> dict[str, str]:
    return {name.lower(): name for name in tg263_names()}


def is_tg263_name(name: str) -> bool:
    """True when ``name`` is a TG-263 name exactly (TG-263 names are case-sensitive)."""
    return _by_lower().get(name.lower()) == name


def suggest(name: str, n: int = 3) -> list[str]:
    """Up to ``n`` TG-263 names closest to ``name``, best first (case-insensitive)."""
    lower = _by_lower()
    if name.lower() in lower:
        return [lower[name.lower()]]
    return [lower[m] for m in difflib.get_close_matches(name.lower(), lower.keys(), n, 0.6)]


def name_warning(name: str, what: str = "ROI name") -> str | None:
    """A warning when ``name`` is not a TG-263 name, with suggestions; else ``None``."""
    if is_tg263_name(name):
        return None
    close = suggest(name)
    hint = f"; closest: {', '.join(close)}" if close else "; no close TG-263 name found"
    return f"{what} {name!r} is not a TG-263 name{hint}"


def check_roi_names(rois: Iterable[_NamedRoi]) -> list[str]:
    """Warnings for ROIs whose name, or ``tg263_name`` when set, is not a TG-263 name."""
    warnings: list[str] = []
    for roi in rois:
        if roi.tg263_name is not None and roi.tg263_name != roi.name:
            warning = name_warning(roi.tg263_name, f"ROI {roi.name!r} tg263_name")
            if warning:
                warnings.append(warning)
            elif not is_tg263_name(roi.name):
                warnings.append(
                    f"ROI name {roi.name!r} is not a TG-263 name; the card maps it to TG-263 "
                    f"{roi.tg263_name!r} (rename it with `contourd models set-roi` to use the "
                    "standard name)"
                )
                continue
        warning = name_warning(roi.name, "ROI name")
        if warning:
            warnings.append(warning)
    return warnings
