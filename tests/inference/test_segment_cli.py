"""``contourd segment`` against the real registry, writing real RTSTRUCT files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
from inference_helpers import write_ct_series

from model_store.registry import ModelRegistry


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "contourd.yaml"
    config.write_text(f"node:\n  data_dir: {tmp_path / 'var'}\n", encoding="utf-8")
    return config


def _segment(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "segment", "--no-progress", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_segment_writes_one_rtstruct_per_series_with_an_approved_model(tmp_path: Path) -> None:
    config = _config(tmp_path)
    registry = ModelRegistry(tmp_path / "var")
    registry.approve("body", "1.0.0", by="physicist", note="test")
    a = write_ct_series(tmp_path / "in" / "a", patient_position="HFS", shape_zyx=(6, 32, 32))
    b = write_ct_series(tmp_path / "in" / "b", patient_position="FFP", shape_zyx=(5, 32, 32))
    out = tmp_path / "out"
    proc = _segment("-c", str(config), "-m", "body", str(tmp_path / "in"), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "2 series segmented, 0 failed" in proc.stdout
    for written in (a, b):
        (rs_path,) = (out / written.series_uid).glob("RS.*.dcm")
        rs = pydicom.dcmread(rs_path)
        assert rs.Modality == "RTSTRUCT"
        assert [r.ROIName for r in rs.StructureSetROISequence] == ["BODY"]
        refs = rs.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
        assert refs.RTReferencedSeriesSequence[0].SeriesInstanceUID == written.series_uid


def test_segment_refuses_an_unapproved_model(tmp_path: Path) -> None:
    config = _config(tmp_path)
    write_ct_series(tmp_path / "in", shape_zyx=(4, 16, 16))
    proc = _segment(
        "-c", str(config), "-m", "body", str(tmp_path / "in"), "-o", str(tmp_path / "o")
    )
    assert proc.returncode == 1
    assert "approve" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_segment_reports_a_bad_series_and_goes_on(tmp_path: Path) -> None:
    config = _config(tmp_path)
    ModelRegistry(tmp_path / "var").approve("body", "1.0.0", by="physicist", note="test")
    good = write_ct_series(tmp_path / "in" / "good", shape_zyx=(5, 32, 32))
    write_ct_series(tmp_path / "in" / "short", shape_zyx=(2, 32, 32))
    proc = _segment(
        "-c", str(config), "-m", "body@1.0.0", str(tmp_path / "in"), "-o", str(tmp_path / "o")
    )
    assert proc.returncode == 1
    assert "1 series segmented, 1 failed" in proc.stdout
    assert "has 2 slice(s) at distinct positions" in proc.stderr
    assert list((tmp_path / "o" / good.series_uid).glob("RS.*.dcm"))
