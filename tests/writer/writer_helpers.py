"""Helpers for the RTSTRUCT / SEG writer tests (tools, shared data, comparison)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813
from peer_tools import SHARED_DATA as SHARED_DATA
from peer_tools import require_shared as require_shared
from peer_tools import require_tool as require_tool

REPO_ROOT = Path(__file__).resolve().parents[2]

SMALL_SHAPE_ZYX = (12, 64, 64)
SMALL_SPACING_MM = (3.0, 3.0, 2.5)


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
