"""Config errors name the file, line, key path, bad value and a suggestion."""

from __future__ import annotations

from pathlib import Path

import pytest
from routing_helpers import config_from

from contourd.errors import ConfigError
from daemon.config import load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"

GOOD = """\
destinations:
  tps: {ae_title: TPS, host: 127.0.0.1, port: 104}
rules:
  - name: hn
    match:
      modality: CT
      body_part: H&N
    model: hn-oar
    send_to: tps
"""


def error_text(tmp_path: Path, text: str) -> str:
    path = tmp_path / "clinic.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


def test_valid_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "clinic.yaml"
    path.write_text(GOOD, encoding="utf-8")
    config = load_config(path)
    assert [r.name for r in config.rules] == ["hn"]
    assert config.rules[0].destinations == ["tps"]


def test_misspelt_key_gives_file_line_path_and_suggestion(tmp_path: Path) -> None:
    text = error_text(tmp_path, GOOD.replace("      body_part: H&N", "      body_prt: H&N"))
    assert (
        f"{tmp_path / 'clinic.yaml'}:7:7: rules[0].match.body_prt: unknown key 'body_prt'" in text
    )
    assert "did you mean 'body_part'?" in text


def test_misspelt_rule_key_suggests_the_rule_key(tmp_path: Path) -> None:
    text = error_text(tmp_path, GOOD + "    priorty: 3\n")
    assert ":10:5: rules[0].priorty: unknown key 'priorty'; did you mean 'priority'?" in text


def test_misspelt_key_in_nested_group_is_found(tmp_path: Path) -> None:
    bad = GOOD.replace(
        "      body_part: H&N",
        "      any:\n        - series_description: {regx: '^HN'}",
    )
    text = error_text(tmp_path, bad)
    assert ":8:32: rules[0].match.any[0].series_description.regx: unknown key 'regx'" in text
    assert "did you mean 'regex'?" in text


@pytest.mark.parametrize(
    ("old", "new", "where", "fragments"),
    [
        ("modality: CT", "modality: CTT", ":6:17: rules[0].match.modality",
         ["'CTT'", "did you mean 'CT'?"]),
        ("modality: CT", "orientation: axail", ":6:20: rules[0].match.orientation",
         ["'axail'", "did you mean 'axial'?"]),
        ("modality: CT", "patient_position: HSF", ":6:25: rules[0].match.patient_position",
         ["'HSF'", "did you mean 'HFS'?"]),
        ("modality: CT", "series_description: 'regex:(HN'",
         ":6:27: rules[0].match.series_description",
         ["'(HN'", "not a valid regular expression"]),
        ("modality: CT", "num_images: 5", ":6:19: rules[0].match.num_images",
         ["got int 5", "IntRange"]),
        ("modality: CT", "slice_thickness_mm: {min: 3, max: 1}",
         ":6:27: rules[0].match.slice_thickness_mm",
         ["min 3.0 is above max 1.0"]),
        ("model: hn-oar", "model: hn-oar@latest", ":8:12: rules[0].model",
         ["'hn-oar@latest'", "name@version"]),
        ("send_to: tps", "outputs: [rtstruct, sge]", ":9:25: rules[0].outputs[1]",
         ["'sge' is not allowed", "did you mean 'seg'?"]),
        ("send_to: tps", "schedule: {start: '8:00', end: '06:00'}",
         ":9:23: rules[0].schedule.start",
         ["'8:00'", "HH:MM"]),
        ("send_to: tps", "structure_set_label: '{model} {date}'",
         ":9:26: rules[0].structure_set_label",
         ["{model}", "did you mean 'model_name'?"]),
        ("send_to: tps", "complete_on: release", ":9:18: rules[0].complete_on",
         ["'release' is not allowed", "'association_release'"]),
    ],
)  # fmt: skip
def test_bad_value_is_reported_with_line_and_value(
    tmp_path: Path, old: str, new: str, where: str, fragments: list[str]
) -> None:
    text = error_text(tmp_path, GOOD.replace(old, new))
    assert where in text
    for fragment in fragments:
        assert fragment in text


def test_unknown_destination_is_reported_at_its_line(tmp_path: Path) -> None:
    text = error_text(tmp_path, GOOD.replace("send_to: tps", "send_to: [tps, tsp2]"))
    assert ":9:20: rules[0].send_to[1]: unknown destination 'tsp2'" in text
    assert "(destinations: tps)" in text


def test_duplicate_rule_names_are_rejected(tmp_path: Path) -> None:
    text = error_text(tmp_path, GOOD + "  - name: hn\n    model: body\n")
    assert ":10:11: rules[1].name: rule name 'hn' is used by an earlier rule" in text


def test_duplicate_yaml_key_is_reported_not_silently_overwritten(tmp_path: Path) -> None:
    text = error_text(tmp_path, GOOD.replace("      body_part: H&N", "      modality: MR"))
    assert ":7:7: rules[0].match.modality: key 'modality' appears twice" in text


def test_yaml_syntax_error_gives_line(tmp_path: Path) -> None:
    text = error_text(tmp_path, GOOD.replace("      modality: CT", "      modality: [CT"))
    assert "YAML syntax error" in text
    assert f"{tmp_path / 'clinic.yaml'}:" in text


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    bad = GOOD.replace("modality: CT", "modality: CTT").replace("model: hn-oar", "modl: hn-oar")
    text = error_text(tmp_path, bad)
    assert "3 problems" in text  # bad modality, unknown key modl, missing model
    assert "required key 'model' is missing" in text
    assert "did you mean 'model'?" in text


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")


def test_no_code_is_evaluated_from_yaml() -> None:
    with pytest.raises(ConfigError, match="YAML syntax error|could not determine a constructor"):
        config_from("rules: !!python/object/apply:os.system ['true']\n")


@pytest.mark.parametrize(
    "example",
    [*sorted(EXAMPLES.glob("*.yaml")), EXAMPLES.parent / "docker" / "contourd-compose.yaml"],
    ids=lambda p: p.name,
)
def test_example_configs_are_valid(example: Path) -> None:
    config = load_config(example)
    assert config.rules, f"{example} has no rules"
