"""Helpers for the RTSTRUCT / SEG writer tests (tools, shared data, comparison)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

REPO_ROOT = Path(__file__).resolve().parents[2]
#: ../shared/data relative to the repository root (absent in a user's checkout).
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

SMALL_SHAPE_ZYX = (12, 64, 64)
SMALL_SPACING_MM = (3.0, 3.0, 2.5)


def require_tool(executable: str, apt_package: str) -> str:
    """Path of a Debian tool; skip without it, except in CI where it must exist."""
    path = shutil.which(executable)
    if path is None:
        message = f"needs {executable}: apt-get install {apt_package}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_shared(relative: str) -> Path:
    """A path under ../shared/data; skip with the reason when absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"needs ../shared/data/{relative} (shared test data not checked out)")
    return path


def run_plastimatch(
    rtstruct_path: Path, ct_dir: Path, out_dir: Path, *, xor_contours: bool
) -> dict[str, Path]:
    """Rasterise an RTSTRUCT with plastimatch; returns ROI name -> mask file."""
    exe = require_tool("plastimatch", "plastimatch")
    command = [
        exe,
        "convert",
        "--input",
        str(rtstruct_path),
        "--referenced-ct",
        str(ct_dir),
        "--output-prefix",
        str(out_dir),
    ]
    if xor_contours:
        command.append("--xor-contours")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return {p.stem: p for p in out_dir.glob("*.mha")}


def mask_on_grid(mask_path: Path, affine: np.ndarray, shape_zyx: tuple[int, ...]) -> np.ndarray:
    """Resample a mask image (any geometry) onto our grid, nearest neighbour.

    ``affine`` maps (column, row, slice, 1) to LPS mm, as ``PhantomSeries.affine``.
    Comparison happens in patient space, so a reader that reorients the image
    is compared fairly.
    """
    image = sitk.ReadImage(str(mask_path))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    reference = sitk.Image(int(shape_zyx[2]), int(shape_zyx[1]), int(shape_zyx[0]), sitk.sitkUInt8)
    reference.SetSpacing(spacing.tolist())
    reference.SetOrigin(affine[:3, 3].tolist())
    reference.SetDirection((affine[:3, :3] / spacing).ravel().tolist())
    resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(resampled) > 0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total
