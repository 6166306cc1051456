"""Every match key: a series that satisfies it, one that does not, and the explanation."""

from __future__ import annotations

from typing import Any

import pytest
from routing_helpers import make_attrs, make_rule

from routing.engine import route

# (match block, values that match, values that do not, text the explanation must show)
CASES: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any], str]] = [
    ("modality", {"modality": "CT"}, {"modality": "CT"}, {"modality": "MR"}, "'MR'"),
    ("modality_list", {"modality": ["CT", "MR"]}, {"modality": "MR"}, {"modality": "PT"}, "'PT'"),
    ("modality_case", {"modality": "ct"}, {"modality": "CT"}, {"modality": "MR"}, "'MR'"),
    (
        "body_part",
        {"body_part": "HEAD_NECK"},
        {"body_part": "H&N"},
        {"body_part": "PELVIS"},
        "'PELVIS'",
    ),
    (
        "series_description_substring",
        {"series_description": "planning"},
        {"series_description": "H&N PLANNING 2mm"},
        {"series_description": "Scout"},
        "'Scout'",
    ),
    (
        "series_description_regex",
        {"series_description": r"regex:^h&n\b"},
        {"series_description": "H&N Planning"},
        {"series_description": "Pelvis H&N"},
        "'Pelvis H&N'",
    ),
    (
        "series_description_case_sensitive",
        {"series_description": {"regex": "^HN", "case_sensitive": True}},
        {"series_description": "HN 2mm"},
        {"series_description": "hn 2mm"},
        "(case-sensitive)",
    ),
    (
        "series_description_equals",
        {"series_description": {"equals": "h&n planning"}},
        {"series_description": "H&N Planning"},
        {"series_description": "H&N Planning 2"},
        "'H&N Planning 2'",
    ),
    (
        "series_description_any_of_list",
        {"series_description": ["thorax", "regex:lung"]},
        {"series_description": "LUNG 4D avg"},
        {"series_description": "Pelvis"},
        "text containing 'thorax' or regex 'lung'",
    ),
    (
        "series_description_missing",
        {"series_description": "planning"},
        {"series_description": "planning"},
        {"series_description": None},
        "(missing)",
    ),
    (
        "study_description",
        {"study_description": "rt"},
        {"study_description": "RT Planning"},
        {"study_description": "Diagnostic"},
        "'Diagnostic'",
    ),
    (
        "protocol_name",
        {"protocol_name": "regex:_HN_"},
        {"protocol_name": "RT_HN_Contrast"},
        {"protocol_name": "RT_PELVIS"},
        "'RT_PELVIS'",
    ),
    (
        "calling_ae",
        {"calling_ae": ["CTSIM1", "CTSIM2"]},
        {"calling_ae": "CTSIM2"},
        {"calling_ae": "PACS"},
        "'PACS'",
    ),
    (
        "called_ae",
        {"called_ae": "CONTOURD_HN"},
        {"called_ae": "CONTOURD_HN"},
        {"called_ae": "CONTOURD"},
        "'CONTOURD'",
    ),
    (
        "manufacturer",
        {"manufacturer": "siemens"},
        {"manufacturer": "Siemens Healthineers"},
        {"manufacturer": "GE MEDICAL SYSTEMS"},
        "'GE MEDICAL SYSTEMS'",
    ),
    (
        "station_name",
        {"station_name": "regex:^CTAWP"},
        {"station_name": "CTAWP91"},
        {"station_name": "MRC1"},
        "'MRC1'",
    ),
    (
        "image_type_contains",
        {"image_type_contains": ["original", "AXIAL"]},
        {"image_type": ("ORIGINAL", "PRIMARY", "AXIAL")},
        {"image_type": ("ORIGINAL", "PRIMARY", "LOCALIZER")},
        "'ORIGINAL\\PRIMARY\\LOCALIZER'",
    ),
    (
        "slice_thickness_mm",
        {"slice_thickness_mm": {"min": 1.0, "max": 3.0}},
        {"slice_thickness_mm": 3.0},
        {"slice_thickness_mm": 5.0},
        "5 mm",
    ),
    (
        "slice_thickness_mm_missing",
        {"slice_thickness_mm": {"max": 3.0}},
        {"slice_thickness_mm": 0.5},
        {"slice_thickness_mm": None},
        "(missing)",
    ),
    ("num_images", {"num_images": {"min": 40}}, {"num_images": 40}, {"num_images": 3}, "3 images"),
    (
        "num_images_max",
        {"num_images": {"max": 2}},
        {"num_images": 1},
        {"num_images": 3},
        "at most 2 images",
    ),
    (
        "orientation",
        {"orientation": "axial"},
        {"orientation": "axial"},
        {"orientation": "sagittal", "image_orientation_patient": (0, 1, 0, 0, 0, -1)},
        "'sagittal' (ImageOrientationPatient [0, 1, 0, 0, 0, -1])",
    ),
    (
        "patient_position",
        {"patient_position": ["HFS", "FFS"]},
        {"patient_position": "FFS"},
        {"patient_position": "HFP"},
        "'HFP'",
    ),
]


@pytest.mark.parametrize(
    ("match", "good", "bad", "shown"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_match_key_accepts_matching_series_and_explains_the_other(
    match: dict[str, Any], good: dict[str, Any], bad: dict[str, Any], shown: str
) -> None:
    rule = make_rule("only", match=match)
    assert route(make_attrs(**good), [rule]).routed
    decision = route(make_attrs(**bad), [rule])
    assert not decision.routed
    failure = decision.explanations[0].failure
    assert failure is not None
    key = next(iter(match))
    assert failure.path == f"match.{key}"
    assert shown in str(failure)


def test_all_group_needs_every_block_and_reports_the_failing_one() -> None:
    rule = make_rule(match={"all": [{"modality": "CT"}, {"orientation": "axial"}]})
    assert route(make_attrs(), [rule]).routed
    decision = route(make_attrs(orientation="coronal"), [rule])
    failure = decision.explanations[0].failure
    assert failure is not None and failure.path == "match.all[1].orientation"
    assert "'coronal'" in failure.actual


def test_any_group_needs_one_block_and_lists_why_each_failed() -> None:
    rule = make_rule(match={"any": [{"body_part": "HEADNECK"}, {"series_description": "hn"}]})
    assert route(make_attrs(body_part="PELVIS", series_description="HN 2mm"), [rule]).routed
    decision = route(make_attrs(body_part="PELVIS", series_description="Pelvis"), [rule])
    failure = decision.explanations[0].failure
    assert failure is not None and failure.path == "match.any"
    assert "[0].body_part" in failure.actual and "'PELVIS'" in failure.actual
    assert "[1].series_description" in failure.actual and "'Pelvis'" in failure.actual


def test_not_group_rejects_series_for_which_its_block_holds() -> None:
    rule = make_rule(match={"modality": "CT", "not": {"image_type_contains": "LOCALIZER"}})
    assert route(make_attrs(), [rule]).routed
    scout = make_attrs(image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    decision = route(scout, [rule])
    failure = decision.explanations[0].failure
    assert failure is not None and failure.path == "match.not"
    assert "image_type 'ORIGINAL\\PRIMARY\\LOCALIZER'" in failure.actual


def test_empty_match_takes_every_series() -> None:
    assert route(make_attrs(modality="MR", body_part=None), [make_rule()]).routed


def test_first_failing_condition_is_reported_in_documented_order() -> None:
    rule = make_rule(match={"patient_position": "FFS", "modality": "MR"})
    decision = route(make_attrs(modality="CT", patient_position="HFS"), [rule])
    failure = decision.explanations[0].failure
    assert failure is not None and failure.path == "match.modality"
