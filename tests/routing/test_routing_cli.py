"""``contourd routes test``, ``check`` and ``schema`` on real DICOM files and a real registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from daemon.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "clinic.yaml"

GE_CT = "rtutils-mim-phantom/sample"  # GE Discovery CT, 5 mm, + MIM RTSTRUCT
SIEMENS_TILTED_CT = "dicom2nifti-testdata/tests/data/failing/gantrytilting/001"
GE_MR_SAGITTAL = "dicom2nifti-testdata/tests/data/ge/anatomical/001"
PHILIPS_ENHANCED_MR = "dicom2nifti-testdata/tests/data/philips_enhanced/anatomical/001"
HITACHI_OBLIQUE_MR = "dicom2nifti-testdata/tests/data/hitachi/anatomical/001"

CT_AND_MR_CONFIG = """\
rules:
  - name: mr-brain
    match: {modality: MR}
    model: body
  - name: ct
    match: {modality: CT, not: {image_type_contains: LOCALIZER}}
    model: body
"""


def make_scout(shared_dicom: Path, folder: Path) -> Path:
    """A localizer made from a real GE CT slice (the shared data has no scout)."""
    source = sorted((shared_dicom / GE_CT).glob("2.16.*.dcm"))[0]
    ds = pydicom.dcmread(source)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesDescription = "Topogram 0.6 T20f"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "scout.dcm"
    ds.save_as(target)
    return folder


def series_block(output: str, series_uid_prefix: str) -> str:
    blocks = [b for b in output.split("\n\n") if b.startswith(f"series {series_uid_prefix}")]
    assert len(blocks) == 1, f"no single block for {series_uid_prefix} in:\n{output}"
    return blocks[0]


def uid_of(folder: Path) -> str:
    first = sorted(p for p in folder.iterdir() if p.suffix == ".dcm")[0]
    return str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID)


def test_routes_test_explains_every_rule_for_ct_and_mr_from_several_vendors(
    shared_dicom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scouts = make_scout(shared_dicom, tmp_path / "scout")
    paths = [shared_dicom / p for p in (GE_CT, SIEMENS_TILTED_CT, GE_MR_SAGITTAL,
                                        PHILIPS_ENHANCED_MR)]  # fmt: skip
    status = main(["routes", "test", "-c", str(EXAMPLE), *map(str, paths), str(scouts)])
    out = capsys.readouterr().out
    assert status == 1  # the MRs, the RTSTRUCT and the scout match no rule

    ge_ct = series_block(out, uid_of(shared_dicom / GE_CT))
    assert "CT, GE MEDICAL SYSTEMS, 'PHANTOM_EXAMPLE', 5 images, axial" in ge_ct
    assert (
        "hn-oar-next-shadow     no match: match.any: expected one of its 2 blocks to hold" in ge_ct
    )
    assert "[0].body_part: expected 'HEADNECK', series has (missing)" in ge_ct
    assert (
        "hn-planning-ct         no match: match.slice_thickness_mm: expected between 1 and 3 mm,"
        " series has 5 mm" in ge_ct
    )
    assert "body-outline-every-ct  MATCHED -> models body; send to tps" in ge_ct
    assert "=> routed: matched 'body-outline-every-ct'" in ge_ct

    tilted = series_block(out, uid_of(shared_dicom / SIEMENS_TILTED_CT))
    assert "CT, SIEMENS" in tilted and "axial" in tilted  # 14 degree tilt is still axial
    assert "=> routed: matched 'body-outline-every-ct'" in tilted

    mr = series_block(out, uid_of(shared_dicom / GE_MR_SAGITTAL))
    assert "MR, GE MEDICAL SYSTEMS" in mr and "sagittal" in mr
    assert "match.modality: expected 'CT', series has 'MR'" in mr
    assert "=> NOT ROUTED: no rule matched" in mr

    enhanced = series_block(out, uid_of(shared_dicom / PHILIPS_ENHANCED_MR))
    assert "MR, Philips Medical Systems" in enhanced
    assert "8 images" in enhanced  # frames of the one enhanced multi-frame file

    scout = series_block(out, uid_of(scouts))
    assert (
        "body-outline-every-ct  no match: match.not: expected its block not to hold, "
        "series has image_type 'ORIGINAL\\PRIMARY\\LOCALIZER'" in scout
    )
    assert "=> NOT ROUTED" in scout
    assert "series: 2 routed, 4 not routed" in out  # + the MIM RTSTRUCT


def test_routes_test_exits_0_when_every_series_matches(
    shared_dicom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(CT_AND_MR_CONFIG, encoding="utf-8")
    paths = [shared_dicom / p for p in (SIEMENS_TILTED_CT, GE_MR_SAGITTAL, HITACHI_OBLIQUE_MR)]
    status = main(["routes", "test", "-c", str(config), *map(str, paths)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "3 series: 3 routed, 0 not routed" in out
    hitachi = series_block(out, uid_of(shared_dicom / HITACHI_OBLIQUE_MR))
    assert "MR, Hitachi Medical Corporation" in hitachi and "oblique" in hitachi


def test_routes_test_json_output(
    shared_dicom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(CT_AND_MR_CONFIG, encoding="utf-8")
    status = main(["routes", "test", "-c", str(config), "--json", str(shared_dicom / GE_CT)])
    document = json.loads(capsys.readouterr().out)
    assert status == 1  # the RTSTRUCT
    by_routed = {s["routed"]: s for s in document["series"]}
    assert by_routed[True]["matched"][0]["rule"] == "ct"
    assert by_routed[False]["reason"] == "no rule matched"
    assert by_routed[False]["explanations"][1]["detail"] == (
        "no match: match.modality: expected 'CT', series has 'RTSTRUCT'"
    )


def test_routes_test_exits_2_on_config_error_or_missing_path(
    shared_dicom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: x\n    model: body\n    sendto: tps\n", encoding="utf-8")
    assert main(["routes", "test", "-c", str(bad), str(shared_dicom / GE_CT)]) == 2
    assert "bad.yaml:4:5: rules[0].sendto: unknown key" in capsys.readouterr().err
    good = tmp_path / "good.yaml"
    good.write_text(CT_AND_MR_CONFIG, encoding="utf-8")
    assert main(["routes", "test", "-c", str(good), str(tmp_path / "nothing-here")]) == 2
    assert main(["routes"]) == 2


@pytest.mark.slow  # two interpreter starts that import the whole CLI
def test_routes_test_console_script_exit_status(shared_dicom: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(CT_AND_MR_CONFIG, encoding="utf-8")
    script = Path(sys.executable).with_name("contourd")
    command = [str(script), "routes", "test", "-c", str(config)]
    ok = subprocess.run([*command, str(shared_dicom / GE_MR_SAGITTAL)], capture_output=True,
                        text=True, timeout=120)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    not_all = subprocess.run([*command, str(shared_dicom / GE_CT)], capture_output=True,
                             text=True, timeout=120)  # fmt: skip
    assert not_all.returncode == 1, not_all.stderr


def test_schema_describes_rule_keys_for_editors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    rule = schema["$defs"]["Rule"]
    assert {"model", "send_to", "continue", "shadow", "schedule"} <= set(rule["properties"])
    assert rule["additionalProperties"] is False
    match = schema["$defs"]["Match"]
    assert {"body_part", "any", "all", "not", "num_images"} <= set(match["properties"])
    assert "body_part_synonyms" in schema["properties"]


def test_check_reports_valid_config_without_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(EXAMPLE), "--no-models"]) == 0
    assert "OK:" in capsys.readouterr().out


def test_check_fails_on_bad_key_with_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: x\n    model: body\n    match: {bodypart: HN}\n")
    assert main(["check", "-c", str(bad), "--no-models"]) == 1
    err = capsys.readouterr().err
    assert "bad.yaml:4:13: rules[0].match.bodypart: unknown key 'bodypart'" in err
    assert "did you mean 'body_part'?" in err
