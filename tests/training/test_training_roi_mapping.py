"""Exported ROI names map to TG-263 names; planning helpers do not."""

from __future__ import annotations

from pathlib import Path

import pytest

from contourd.errors import TrainingError
from training.roi_mapping import RoiNameMapper, load_mapping_file

TARGETS = [
    "Brainstem",
    "SpinalCord",
    "Parotid_L",
    "Parotid_R",
    "Esophagus",
    "Larynx",
    "Bone_Mandible",
]


@pytest.mark.parametrize(
    ("exported", "target"),
    [
        ("Parotid L", "Parotid_L"),
        ("L_Parotid", "Parotid_L"),
        ("Parotid_L", "Parotid_L"),
        ("LeftParotid", "Parotid_L"),
        ("PAROTID_LT", "Parotid_L"),
        ("Lt Parotid", "Parotid_L"),
        ("RightParotid", "Parotid_R"),
        ("parotid_r", "Parotid_R"),
        ("Brain Stem", "Brainstem"),
        ("BrainStem", "Brainstem"),
        ("Spinal Cord", "SpinalCord"),
        ("Cord", "SpinalCord"),
        ("Mandible", "Bone_Mandible"),
        ("Oesophagus", "Esophagus"),
        ("LARYNX", "Larynx"),
    ],
)
def test_clinic_names_map_to_tg263_names(exported: str, target: str) -> None:
    assert RoiNameMapper(TARGETS).target_for(exported) == target


@pytest.mark.parametrize(
    "exported", ["Parotid_L_PRV", "SpinalCord+5mm", "z_Parotid_opt", "PTV70", "Parotids", "BODY"]
)
def test_planning_helpers_and_other_structures_map_to_nothing(exported: str) -> None:
    assert RoiNameMapper(TARGETS).target_for(exported) is None


def test_mapping_file_overrides_names(tmp_path: Path) -> None:
    path = tmp_path / "names.yaml"
    path.write_text('Parotid_L: ["Parotide G", "PAROTIDE_GAUCHE"]\n')
    mapper = RoiNameMapper(TARGETS, load_mapping_file(path))
    assert mapper.target_for("parotide g ") == "Parotid_L"
    assert mapper.target_for("Parotid R") == "Parotid_R"


def test_mapping_to_an_roi_not_trained_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="Eye_L"):
        RoiNameMapper(TARGETS, {"Eye_L": ["Oeil G"]})
    path = tmp_path / "bad.yaml"
    path.write_text("Parotid_L: Parotide G\n")
    with pytest.raises(TrainingError, match="must map each model ROI"):
        load_mapping_file(path)
