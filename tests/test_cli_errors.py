"""Every command ends a failure with one line on stderr, never a traceback.

The line names the value, what was expected and the fix; the exit code is 1
(70 for a bug in contourd itself, see :func:`contourd.errors.cli_error_exit`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from contourd.errors import ModelNotFoundError, cli_error_exit
from daemon.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _fails_with_one_line(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"contourd {argv[0]}: error: "), err
    return lines[0]


@pytest.fixture
def dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # commands without -c use ./var here
    folder = tmp_path / "dataset"
    folder.mkdir()
    return folder


def test_train_with_a_misspelt_setting(capsys: pytest.CaptureFixture[str], dataset: Path) -> None:
    settings = dataset.parent / "run.yaml"
    settings.write_text("roi_names: [Brainstem]\nbase_chanels: 8\nlevels: four\n")
    line = _fails_with_one_line(
        capsys, "train", "--dataset", str(dataset), "--out", "pkg", "--train-config", str(settings)
    )
    assert f"training settings in {settings} are invalid" in line
    assert "base_chanels: Extra inputs are not permitted (got 8)" in line
    assert "levels: Input should be a valid integer" in line and "(got 'four')" in line


def test_train_with_a_missing_settings_file(
    capsys: pytest.CaptureFixture[str], dataset: Path
) -> None:
    missing = dataset.parent / "nope.yaml"
    line = _fails_with_one_line(
        capsys, "train", "--dataset", str(dataset), "--out", "pkg", "--train-config", str(missing)
    )
    assert f"training settings {missing} cannot be read (No such file or directory)" in line


def test_train_with_settings_that_are_not_yaml(
    capsys: pytest.CaptureFixture[str], dataset: Path
) -> None:
    settings = dataset.parent / "run.yaml"
    settings.write_text("roi_names: [Brainstem\nlevels: 3\n")
    line = _fails_with_one_line(
        capsys, "train", "--dataset", str(dataset), "--out", "pkg", "--train-config", str(settings)
    )
    assert "are not valid YAML" in line and "fix the file" in line


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--rois", "Brainstem", "--set", "base_channels"], "must be KEY=VALUE"),
        (["--rois", "Brainstem", "--set", "patch_size=[32,"], "the value is not YAML"),
        (["--rois", "Brainstem", "--set", "levels=0.5"], "levels: Input should be a valid integer"),
        ([], "name the ROIs to train with --rois"),
        (["--rois", "Brainstem", "--mapping", "nope.yaml"], "ROI mapping file nope.yaml"),
    ],
)
def test_train_with_bad_options(
    capsys: pytest.CaptureFixture[str], dataset: Path, options: list[str], expected: str
) -> None:
    case = dataset / "pt_1"  # a NIfTI dataset's names only: the settings fail first
    case.mkdir()
    for name in ("ct", "Brainstem"):
        (case / f"{name}.nii.gz").write_bytes(b"")
    line = _fails_with_one_line(capsys, "train", "--dataset", str(dataset), "--out", "p", *options)
    assert expected in line


def test_train_on_a_folder_that_is_no_dataset(
    capsys: pytest.CaptureFixture[str], dataset: Path
) -> None:
    line = _fails_with_one_line(
        capsys, "train", "--dataset", str(dataset), "--out", "pkg", "--rois", "Brainstem"
    )
    assert "is neither a NIfTI dataset" in line and "docs/training.md" in line


def test_missing_files_name_the_file(capsys: pytest.CaptureFixture[str], dataset: Path) -> None:
    missing = dataset.parent / "missing"
    line = _fails_with_one_line(capsys, "models", "import", str(missing), "--by", "physicist")
    assert f"model package {missing} does not exist" in line
    line = _fails_with_one_line(capsys, "jobs", "-c", str(missing / "contourd.yaml"))
    assert str(missing / "contourd.yaml") in line


def test_an_os_error_and_a_bug_end_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def missing_file() -> int:
        return len(Path("/nonexistent/contourd.yaml").read_text())

    def bug() -> int:
        return {}["key"]  # type: ignore[no-any-return]

    def refused() -> int:
        raise ModelNotFoundError("no model named 'x'; see `contourd models list`")

    assert cli_error_exit("contourd x", missing_file) == 1
    assert capsys.readouterr().err == (
        "contourd x: error: No such file or directory (/nonexistent/contourd.yaml)\n"
    )
    assert cli_error_exit("contourd x", refused) == 1
    assert capsys.readouterr().err == (
        "contourd x: error: no model named 'x'; see `contourd models list`\n"
    )
    assert cli_error_exit("contourd x", bug) == 70
    err = capsys.readouterr().err
    assert err.startswith("contourd x: internal error: KeyError: 'key' (a bug in contourd;")
    assert err.count("\n") == 1 and "-v" in err


def test_the_console_script_prints_no_traceback(tmp_path: Path) -> None:
    """The real process: ``python -m daemon train`` and ``python -m training.trainer``."""
    settings = tmp_path / "run.yaml"
    settings.write_text("roi_names: [Brainstem]\nlearning_rate: fast\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    commands = [
        [sys.executable, "-m", "daemon", "train", "--dataset", str(tmp_path), "--out", "p",
         "--train-config", str(settings)],
        [sys.executable, "-m", "training.trainer", "--config", str(settings),
         "--run-dir", str(tmp_path / "run")],
    ]  # fmt: skip
    for command in commands:
        done = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "learning_rate: Input should be a valid number" in lines[0]
