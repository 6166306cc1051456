"""``contourd models``: the table, --json, and every action through the real CLI entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from model_store_helpers import unet_card, write_package

from daemon.cli import main


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "contourd.yaml"
    path.write_text(yaml.safe_dump({"node": {"data_dir": str(tmp_path / "var")}}))
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_a_readable_table_with_status_rois_and_approval(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    card = unet_card(name="hn-test")
    card["rois"][0]["name"] = "Parotid Left"  # not TG-263: warned, still imported
    pkg = write_package(tmp_path / "pkg", card)

    code, out, err = run_cli(
        capsys, "models", "import", str(pkg), "--by", "importer", "-c", str(config)
    )
    assert code == 0 and "imported hn-test 1.0.0" in out
    assert "warning: ROI name 'Parotid Left' is not a TG-263 name" in err and "Parotid_L" in err

    code, out, _ = run_cli(
        capsys, "models", "approve", "hn-test", "1.0.0", "--by", "Dr Who", "-c", str(config)
    )
    assert code == 0 and "approved hn-test 1.0.0 by Dr Who" in out

    code, out, _ = run_cli(capsys, "models", "list", "-c", str(config))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "STATUS", "TYPE", "MODALITY", "BODY", "SITE",
                                "ROIS", "APPROVED", "BY", "APPROVED", "AT"]  # fmt: skip
    body = next(line for line in lines if line.startswith("body "))
    hn = next(line for line in lines if line.startswith("hn-test "))
    assert body.split()[:7] == ["body", "1.0.0", "imported", "classical", "CT", "ANY", "BODY"]
    assert hn.split()[:6] == ["hn-test", "1.0.0", "approved", "unet", "CT", "HEADNECK"]
    assert "Parotid Left, Parotid_R" in hn and "Dr Who" in hn
    # columns line up: every row starts its STATUS column at the same offset
    status_col = lines[0].index("STATUS")
    assert body[status_col:].startswith("imported") and hn[status_col:].startswith("approved")


def test_list_and_show_json_give_the_same_fields(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    run_cli(capsys, "models", "approve", "body", "1.0.0", "--by", "Dr A", "--note", "ok",
            "-c", str(config))  # fmt: skip
    code, out, _ = run_cli(capsys, "models", "list", "--json", "-c", str(config))
    assert code == 0
    listed = {m["name"]: m for m in json.loads(out)}
    body = listed["body"]
    for key in ("name", "version", "status", "modality", "body_site", "rois", "approved_by",
                "approved_at"):  # fmt: skip
        assert key in body
    assert (body["status"], body["approved_by"], body["modality"]) == ("approved", "Dr A", "CT")
    assert body["rois"][0]["name"] == "BODY" and body["rois"][0]["color"] == [0, 128, 0]

    code, out, _ = run_cli(capsys, "models", "show", "body@1.0.0", "--json", "-c", str(config))
    shown = json.loads(out)
    assert code == 0 and {k: shown[k] for k in body} == body
    assert shown["card"]["parameters"]["threshold_hu"] == -350

    code, out, _ = run_cli(capsys, "models", "show", "body", "-c", str(config))
    assert code == 0 and "body 1.0.0  [approved]" in out and "no weights" in out


def test_set_roi_retire_export_and_audit_through_the_cli(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    code, out, err = run_cli(capsys, "models", "set-roi", "body", "1.0.0", "1", "--name",
                             "External", "--color", "255,128,0", "--by", "physicist",
                             "-c", str(config))  # fmt: skip
    assert code == 0, err
    assert "name 'External', color [255, 128, 0]" in out and err == ""

    code, out, _ = run_cli(capsys, "models", "list", "--json", "-c", str(config))
    roi = json.loads(out)[0]["rois"][0]
    assert (roi["name"], roi["color"], roi["overridden"]) == ("External", [255, 128, 0], True)

    dest = tmp_path / "body.zip"
    code, _, _ = run_cli(capsys, "models", "export", "body", "1.0.0", str(dest), "--by", "x",
                         "-c", str(config))  # fmt: skip
    assert code == 0 and dest.exists()

    code, _, _ = run_cli(capsys, "models", "retire", "body", "1.0.0", "--by", "Dr B",
                         "-c", str(config))  # fmt: skip
    assert code == 0

    code, out, _ = run_cli(capsys, "models", "audit", "body", "--json", "-c", str(config))
    actions = [(e["action"], e["by"]) for e in json.loads(out)]
    assert actions == [("import", "contourd (built-in)"), ("set-roi", "physicist"),
                       ("export", "x"), ("retire", "Dr B")]  # fmt: skip


def test_changes_without_by_are_rejected_and_errors_exit_1(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    for action in (["approve", "body", "1.0.0"], ["retire", "body", "1.0.0"],
                   ["set-roi", "body", "1.0.0", "1", "--name", "X"]):  # fmt: skip
        with pytest.raises(SystemExit) as info:
            main(["models", *action, "-c", str(config)])
        assert info.value.code == 2
        assert "--by" in capsys.readouterr().err

    code, _, err = run_cli(capsys, "models", "approve", "nope", "1.0.0", "--by", "a",
                           "-c", str(config))  # fmt: skip
    assert code == 1 and "no model named 'nope'" in err

    code, _, err = run_cli(capsys, "models", "set-roi", "body", "1.0.0", "1", "--color", "red",
                           "--by", "a", "-c", str(config))  # fmt: skip
    assert code == 1 and "R,G,B" in err


def test_import_refusal_is_reported_with_the_reason(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    pkg = write_package(tmp_path / "pkg", extra_files={"best.ckpt": b"x"})
    code, _, err = run_cli(capsys, "models", "import", str(pkg), "--by", "a", "-c", str(config))
    assert code == 1 and "best.ckpt holds pickle weights" in err


@pytest.mark.slow
def test_console_script_lists_models(tmp_path: Path, config: Path) -> None:
    exe = Path(sys.executable).parent / "contourd"
    if not exe.exists():
        exe = Path(shutil.which("contourd") or "contourd")
    result = subprocess.run(
        [str(exe), "models", "list", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].startswith("body ")
