"""Synthetic CT cases for the nnU-Net tests: a body in air with two simple organs.

Arrays are ``[z, y, x]`` (SimpleITK order), HU. The body is an elliptic
cylinder of soft tissue (40 HU, noise sigma 15) in air (-1000 HU exactly, so
nnU-Net's crop to nonzero and our crop to the patient both have work), label
1 ("Sphere") a bright ball (250 HU), label 2 ("Box") a dark block (-300 HU),
placed at random per case.
"""

from __future__ import annotations

import numpy as np

DATASET_ID = 901
DATASET_NAME = f"Dataset{DATASET_ID}_Shapes"
#: The MR variant (``make_nnunet_model.py --modality MR``): channel "MR", so
#: nnU-Net plans ``ZScoreNormalization`` (on the nonzero region: air is 0).
MR_DATASET_ID = 902
MR_DATASET_NAME = f"Dataset{MR_DATASET_ID}_ShapesMR"
LABELS = {"Sphere": 1, "Box": 2}
TRAIN_SPACING_ZYX = (2.0, 1.0, 1.0)
SHAPE_MM_ZYX = (72.0, 52.0, 52.0)


def make_case(
    seed: int, spacing_zyx: tuple[float, float, float] = TRAIN_SPACING_ZYX
) -> tuple[np.ndarray, np.ndarray]:
    """``(image HU int16, labels uint8)`` of one case at ``spacing_zyx`` (mm)."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(round(m / s)) for m, s in zip(SHAPE_MM_ZYX, spacing_zyx, strict=True))
    z, y, x = (
        (np.arange(n, dtype=np.float64) + 0.5) * s for n, s in zip(shape, spacing_zyx, strict=True)
    )
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    cy, cx = SHAPE_MM_ZYX[1] / 2, SHAPE_MM_ZYX[2] / 2
    body = ((yy - cy) / 21.0) ** 2 + ((xx - cx) / 23.0) ** 2 <= 1.0
    body &= (zz > 6.0) & (zz < SHAPE_MM_ZYX[0] - 6.0)
    image = np.full(shape, -1000.0)
    image[body] = 40.0 + rng.normal(0.0, 15.0, int(body.sum()))
    labels = np.zeros(shape, dtype=np.uint8)
    sc = (rng.uniform(22, 50), cy + rng.uniform(-6, 6), cx + rng.uniform(-10, -4))
    sphere = (zz - sc[0]) ** 2 + (yy - sc[1]) ** 2 + (xx - sc[2]) ** 2 <= rng.uniform(6, 9) ** 2
    bc = (rng.uniform(22, 50), cy + rng.uniform(-6, 6), cx + rng.uniform(6, 11))
    half = rng.uniform(4, 7, size=3)
    block = (
        (np.abs(zz - bc[0]) <= half[0] * 1.5)
        & (np.abs(yy - bc[1]) <= half[1])
        & (np.abs(xx - bc[2]) <= half[2])
    )
    image[sphere & body] = 250.0 + rng.normal(0.0, 15.0, int((sphere & body).sum()))
    image[block & body] = -300.0 + rng.normal(0.0, 15.0, int((block & body).sum()))
    labels[sphere & body] = 1
    labels[block & body] = 2
    return np.round(image).astype(np.int16), labels


def hu_to_mr(image_hu: np.ndarray) -> np.ndarray:
    """MR-like signal of a :func:`make_case` image (int16): air exactly 0, the body ~520,
    the sphere ~625, the box ~350 (arbitrary units, as MR has no absolute scale)."""
    return np.round(np.clip(image_hu.astype(np.float64) + 1000.0, 0, None) * 0.5).astype(np.int16)
