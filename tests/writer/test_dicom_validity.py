"""dciodvfy (dicom3tools) finds no errors, and no undocumented warnings, in our output."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from writer_helpers import require_tool

from inference.phantom import PhantomSeries
from inference.roi_mask import AlgorithmInfo
from inference.rtstruct_writer import write_rtstruct
from inference.seg_writer import write_seg

pytestmark = pytest.mark.interop

#: Warnings we accept, each explained in docs/rtstruct.md ("dciodvfy"). None so far.
ACCEPTED_WARNINGS: tuple[str, ...] = ()


def dciodvfy_findings(path: Path) -> tuple[list[str], list[str]]:
    exe = require_tool("dciodvfy", "dicom3tools")
    result = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [
        line
        for line in lines
        if line.startswith("Warning") and not any(a in line for a in ACCEPTED_WARNINGS)
    ]
    return errors, warnings


def test_dciodvfy_self_check_flags_a_broken_rtstruct(
    phantom_factory: Callable[..., PhantomSeries], algorithm: AlgorithmInfo, tmp_path: Path
) -> None:
    """The validator run must be able to fail: drop a Type 1 attribute and look."""
    phantom = phantom_factory("HFS")
    ds = write_rtstruct(phantom.headers, phantom.rois[:1], algorithm, structure_set_label="x")
    del ds.StructureSetLabel
    ds.save_as(tmp_path / "broken.dcm", enforce_file_format=True)
    errors, _ = dciodvfy_findings(tmp_path / "broken.dcm")
    assert any("StructureSetLabel" in e for e in errors), errors


@pytest.mark.parametrize("position", ["HFS", "FFP"])
def test_rtstruct_passes_dciodvfy(
    position: str,
    phantom_factory: Callable[..., PhantomSeries],
    algorithm: AlgorithmInfo,
    tmp_path: Path,
) -> None:
    phantom = phantom_factory(position)
    rois = [
        *phantom.rois,
        replace(phantom.rois[0], name="Empty", label=99, mask=np.zeros_like(phantom.rois[0].mask)),
    ]
    ds = write_rtstruct(
        phantom.headers, rois, algorithm, structure_set_label="x", smoothing_fraction=0.2
    )
    ds.save_as(tmp_path / "RS.dcm", enforce_file_format=True)
    errors, warnings = dciodvfy_findings(tmp_path / "RS.dcm")
    assert errors == []
    assert warnings == []


def test_seg_passes_dciodvfy(
    phantom_factory: Callable[..., PhantomSeries], algorithm: AlgorithmInfo, tmp_path: Path
) -> None:
    phantom = phantom_factory("HFP")
    seg = write_seg(phantom.headers, phantom.rois, algorithm)
    seg.save_as(tmp_path / "SEG.dcm")
    errors, warnings = dciodvfy_findings(tmp_path / "SEG.dcm")
    assert errors == []
    assert warnings == []


def test_phantom_ct_images_pass_dciodvfy(phantom_factory: Callable[..., PhantomSeries]) -> None:
    phantom = phantom_factory("FFP", shape_zyx=(2, 16, 16))
    errors, warnings = dciodvfy_findings(phantom.paths[0])
    assert errors == []
    assert warnings == []
