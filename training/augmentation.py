"""Patch sampling with spatial and intensity augmentation, in one resampling step.

A patch ``[z, y, x]`` of the model's patch size is drawn from a case volume by
``torch.nn.functional.grid_sample``: its centre is a random voxel (or a voxel of
a random organ, to oversample foreground), and the sampling grid is rotated
(small angles, mostly about the patient's z axis), scaled and translated in
millimetres, so anisotropic spacing is respected. There are no left/right
flips: they would swap lateral organs (Parotid_L/R).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentationConfig:
    """Ranges of the random transforms (degrees, scale factor, normalised intensity)."""

    rotate_z_deg: float = 12.0
    rotate_xy_deg: float = 5.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    intensity_scale: tuple[float, float] = (0.92, 1.08)
    intensity_shift: float = 0.04
    noise_std_max: float = 0.03
    foreground_fraction: float = 0.67
    enabled: bool = True


def _rotation_matrix(rz: float, ry: float, rx: float) -> np.ndarray:
    """Rotation acting on (x, y, z) vectors; angles in radians."""
    cz, sz = math.cos(rz), math.sin(rz)
    cy, sy = math.cos(ry), math.sin(ry)
    cx, sx = math.cos(rx), math.sin(rx)
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return Rz @ Ry @ Rx


def sample_patch(
    image: torch.Tensor,
    labels: torch.Tensor,
    patch_zyx: tuple[int, int, int],
    spacing_xyz_mm: tuple[float, float, float],
    rng: np.random.Generator,
    config: AugmentationConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one augmented patch.

    Parameters
    ----------
    image
        float32 normalised intensities ``[z, y, x]``, on any device (the patch
        is drawn there: on a GPU the whole sampling runs on the GPU).
    labels
        uint8 label map ``[z, y, x]``.
    patch_zyx
        Output patch size in voxels.
    spacing_xyz_mm
        Voxel spacing of the case (x, y, z) in mm.

    Returns
    -------
    (image_patch ``[1, z, y, x]`` float32, label_patch ``[z, y, x]`` int64)
    """
    Z, Y, X = image.shape
    spacing = np.array(spacing_xyz_mm, dtype=float)
    fg = labels.nonzero() if rng.random() < config.foreground_fraction else None
    if fg is not None and len(fg) > 0:
        classes = torch.unique(labels[labels > 0])
        cls = classes[int(rng.integers(len(classes)))]
        idx = (labels == cls).nonzero()
        z, y, x = idx[int(rng.integers(len(idx)))].tolist()
        jitter = rng.uniform(-0.25, 0.25, 3) * np.array(patch_zyx[::-1])
        centre_xyz = np.array([x, y, z], dtype=float) + jitter
    else:
        centre_xyz = rng.uniform([0, 0, 0], [X - 1, Y - 1, Z - 1])
    if config.enabled:
        rz = math.radians(rng.uniform(-config.rotate_z_deg, config.rotate_z_deg))
        ry = math.radians(rng.uniform(-config.rotate_xy_deg, config.rotate_xy_deg))
        rx = math.radians(rng.uniform(-config.rotate_xy_deg, config.rotate_xy_deg))
        rot = _rotation_matrix(rz, ry, rx) * rng.uniform(*config.scale_range)
    else:
        rot = np.eye(3)
    pz, py, px = patch_zyx
    # Offsets of output voxels from the patch centre, in mm, ordered (x, y, z).
    dev = image.device
    oz, oy, ox = torch.meshgrid(
        (torch.arange(pz, device=dev) - (pz - 1) / 2) * spacing[2],
        (torch.arange(py, device=dev) - (py - 1) / 2) * spacing[1],
        (torch.arange(px, device=dev) - (px - 1) / 2) * spacing[0],
        indexing="ij",
    )
    offsets = torch.stack([ox, oy, oz], dim=-1).float()  # [pz, py, px, 3] mm
    mapped = offsets @ torch.as_tensor(rot.T, dtype=torch.float32, device=dev)
    vox = mapped / torch.as_tensor(spacing, dtype=torch.float32, device=dev) + torch.as_tensor(
        centre_xyz, dtype=torch.float32, device=dev
    )
    size = torch.tensor([X - 1, Y - 1, Z - 1], dtype=torch.float32, device=dev).clamp(min=1)
    grid = (2 * vox / size - 1).unsqueeze(0)  # [1, pz, py, px, 3] in (x, y, z)
    img = F.grid_sample(
        image[None, None], grid, mode="bilinear", padding_mode="border", align_corners=True
    )[0]
    lab = F.grid_sample(
        labels[None, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=True
    )[0, 0].long()
    if config.enabled:
        img = img * rng.uniform(*config.intensity_scale) + rng.uniform(
            -config.intensity_shift, config.intensity_shift
        )
        sigma = rng.uniform(0, config.noise_std_max)
        if sigma > 0:
            img = img + torch.randn_like(img) * sigma
    return img, lab
