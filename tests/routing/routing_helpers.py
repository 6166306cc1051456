"""Helpers for the routing tests (imported as ``routing_helpers``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peer_tools import wait_for as wait_for

from daemon.config import ContourdConfig, load_config_text
from routing.rules import Rule
from routing.series_attributes import SeriesAttributes

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not SHARED_DATA.is_dir():  # the repo root's sibling ../shared
    SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SHARED_DICOM = SHARED_DATA / "dicom"


def make_attrs(**values: Any) -> SeriesAttributes:
    """A planning-CT-like series; keyword arguments override single values."""
    base: dict[str, Any] = {
        "series_instance_uid": "1.2.3.4",
        "modality": "CT",
        "body_part": "HEADNECK",
        "series_description": "H&N Planning 2mm",
        "study_description": "RT Planning",
        "protocol_name": "RT_HN_Contrast",
        "calling_ae": "CTSIM1",
        "called_ae": "CONTOURD",
        "manufacturer": "SIEMENS",
        "station_name": "CTAWP91",
        "image_type": ("ORIGINAL", "PRIMARY", "AXIAL"),
        "slice_thickness_mm": 2.0,
        "num_images": 120,
        "image_orientation_patient": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        "orientation": "axial",
        "patient_position": "HFS",
    }
    base.update(values)
    return SeriesAttributes(**base)


def make_rule(name: str = "r", **values: Any) -> Rule:
    """A rule running ``body`` unless told otherwise."""
    values.setdefault("model", "body")
    return Rule.model_validate({"name": name, **values})


def config_from(text: str) -> ContourdConfig:
    """Validate config YAML text (no file)."""
    return load_config_text(text, source="test.yaml")
